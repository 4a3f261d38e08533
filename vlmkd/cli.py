"""The `vlmkd` command and its `vlmkd-*` twins: a thin dispatcher over each stage's own `main(argv)`.

Every stage module exposes `main(argv: list[str] | None) -> int` with its own argparse parser; this file
only routes to it and turns user errors (`VlmkdError`) into one-line messages instead of tracebacks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch

from vlmkd.arguments import ArgumentParser, closest
from vlmkd.errors import VlmkdError, describe_os_error
from vlmkd.registry import Registry
from vlmkd.version import __version__

OUT_OF_MEMORY_ADVICE = (
    "the GPU ran out of memory. Lower --batch-size, turn on --amp, or pick a smaller model; finished shards, "
    "features and checkpoints are kept, so rerunning the same command resumes from them"
)


COMMANDS: Registry[Callable[[list[str]], int]] = Registry("command")  # name -> its `main(argv)`, one-line summary
COMMANDS.register(
    "info", "vlmkd.cli:info_main", "show which backends are usable here, and the engines, backbones and losses"
)
COMMANDS.register("data", "vlmkd.data.cli:main", "build datasets: the embedded MNIST-LT demo, long-tail cuts, inspect")
COMMANDS.register(
    "caption", "vlmkd.caption.cli:main", "caption every training image with a VLM; or import/export captions"
)
COMMANDS.register("caption-info", "vlmkd.caption.cli:info_main", "summarise a caption store")
COMMANDS.register(
    "models", "vlmkd.testing.models_cli:main", "make a tiny VLM with random weights to try the CLI offline"
)
COMMANDS.register("encode", "vlmkd.encode.cli:main", "encode captions into a fp16 feature store")
COMMANDS.register("train", "vlmkd.train.cli:main", "train a long-tail classifier with VLM-KD")
COMMANDS.register(
    "plot",
    "vlmkd.reporting.training_curves:main",
    "draw a run's curves (loss terms, VLM-KD vs chance, temperature, lr)",
)
COMMANDS.register("eval", "vlmkd.evaluate.cli:main", "Many/Medium/Few/All top-1, per-class accuracy and t-SNE plots")
COMMANDS.register("demo", "vlmkd.demo:main", "run the whole pipeline on the embedded MNIST-LT with a tiny VLM")
COMMANDS.register(
    "experiment",
    "vlmkd.experiment.cli:main",
    "does VLM-KD help your data? baseline vs VLM-KD arms over seeds, paired report",
)


def _resolve(name: str) -> Callable[[list[str]], int]:
    """The `main(argv)` of subcommand `name`, imported now."""
    return COMMANDS.get(name)


def run_command(name: str, argv: Sequence[str], prog: str | None = None) -> int:
    """Run subcommand `name` with `argv`; user errors become a one-line message and exit code 2.

    `prog` names the command in messages (default `vlmkd NAME`; the `vlmkd-*` scripts pass their own name).
    """
    prog = prog or f"vlmkd {name}"
    _pil_size_warning_off()
    try:
        return _resolve(name)(list(argv))
    except VlmkdError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # disk full, read-only output folder, permissions: the environment, not a bug
        print(f"{prog}: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError:
        print(f"{prog}: error: {OUT_OF_MEMORY_ADVICE}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        rerun = "rerunning it with --resume continues" if name == "train" else "a rerun resumes"
        print(f"{prog}: interrupted; finished work is kept and {rerun} from it", file=sys.stderr)
        return 130


def _pil_size_warning_off() -> None:
    """In vlmkd's own commands, PIL's DecompressionBombWarning (images over 89 Mpx) is not shown: the commands
    check every image against their own pixel and decode-memory limits (`vlmkd.data.images`) and refuse one in
    a single line, which PIL's two-line warning would only precede."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: vlmkd COMMAND [ARGS...]",
        "",
        "VLM-KD: distil vision-language-model captions into long-tail image classifiers.",
        "",
        "commands:",
    ]
    lines += [f"  {command.name:<{width}}  {command.description}" for command in COMMANDS.entries()]
    lines += ["", "Run `vlmkd COMMAND --help` for a command's options."]
    return "\n".join(lines)


def info_main(argv: list[str] | None = None) -> int:
    """`vlmkd info`: print the version and each backend's status."""
    from vlmkd.backends import backends

    parser = ArgumentParser(prog="vlmkd info", description="Show which compute backends are usable here.")
    parser.parse_args(argv)
    print(f"vlmkd {__version__}")
    for status in backends().values():
        state = "usable" if status.usable else ("built, not usable here" if status.built else "not available")
        print(f"  {status.name:<10} {state:<24} {status.detail}")
    from vlmkd.data.dali_loader import dali_summary
    from vlmkd.models.timm_backbones import PREFIX, timm_summary

    print(dali_summary())

    for title, registry in _registries().items():
        print(f"{title}: {registry.choices_text()}")
        if any(family.prefix == PREFIX for family in registry.families()):
            print(f"  {timm_summary()}")
    return 0


def _registries() -> dict[str, Registry]:
    """What `vlmkd info` lists besides the backends: every other name-registered choice."""
    from vlmkd.caption.engines import ENGINES
    from vlmkd.losses.task import TASK_LOSSES
    from vlmkd.models.zoo import BACKBONES

    return {"engines (--engine)": ENGINES, "backbones (--arch)": BACKBONES, "task losses (--task-loss)": TASK_LOSSES}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `vlmkd`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"vlmkd {__version__}")
        return 0
    if args[0] not in COMMANDS:
        match = closest(args[0], COMMANDS)
        hint = f"; did you mean {match}?" if match else ""
        message = f"unknown command {args[0]!r} (choose from {', '.join(COMMANDS)}){hint}"
        print(f"vlmkd: error: {message} (see vlmkd --help)", file=sys.stderr)
        return 2
    return run_command(args[0], args[1:])


def caption_main() -> int:
    """Entry point of `vlmkd-caption`."""
    return run_command("caption", sys.argv[1:], prog="vlmkd-caption")


def encode_main() -> int:
    """Entry point of `vlmkd-encode`."""
    return run_command("encode", sys.argv[1:], prog="vlmkd-encode")


def train_main() -> int:
    """Entry point of `vlmkd-train`."""
    return run_command("train", sys.argv[1:], prog="vlmkd-train")


def eval_main() -> int:
    """Entry point of `vlmkd-eval`."""
    return run_command("eval", sys.argv[1:], prog="vlmkd-eval")


if __name__ == "__main__":
    sys.exit(main())
