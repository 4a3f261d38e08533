"""Every fenced block of README.md and docs/*.md runs as written, or says in the Markdown why it cannot run here.

Each document's bash and python blocks run in order in a fresh folder of its own, on the CPU: bash blocks through
`bash -e -o pipefail`, python blocks through a fresh `python`, so a block has exactly the setup the document shows
before it (slow steps use the small settings the document states). A block that cannot run here has
`<!-- not-run: REASON -->` on the line above it, REASON one of `REASONS` (words of explanation may follow), and is
checked instead: every vlmkd command it names exists and takes every flag it passes (as its `--help` says), every
script, test file and install extra it names exists, and a python block compiles and imports only names vlmkd has.
Blocks that another test runs as written are left to it (`RECIPE_TESTS`: docs/extending.md's recipes, code that
goes in files of the tree; `RUN_ELSEWHERE`: blocks after a marker that test looks for), which this test checks
names them. Blocks that are not commands say so with their language (`text` for layouts, formulas and output;
`yaml`, which must parse).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml
from _markdown import ROOT, CodeBlock, blocks

DOCS = ["README.md", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md"))]
REASONS = {  # why a block cannot run in the test: the fixed set a `<!-- not-run: REASON -->` marker chooses from
    "gpu": "needs an NVIDIA GPU",
    "real-weights": "needs a real model's weights",
    "cluster": "needs several GPUs or machines",
    "placeholder": "names the reader's own data or paths (CAPTIONS, ~/datasets/...)",
    "servers": "needs inference servers on the network",
    "installs": "installs packages into the environment (.ci/run runs the README's test command)",
    "test-suite": "runs the project's tests or benchmarks, which CI runs itself",
    "interactive": "starts a program that runs until it is stopped (a viewer, a server in the foreground)",
}
MARKERS_THAT_MEAN_NOT_RUN = {"test-command": "installs"}  # .ci/run reads the README's test command after its marker
RUNNERS = {"bash": ["bash", "-e", "-o", "pipefail"], "python": [sys.executable]}
TEXT_LANGUAGES = {"text", "yaml"}
RECIPE_TESTS = {"docs/extending.md": "tests/test_extending.py"}  # documents whose blocks are files of the tree
RUN_ELSEWHERE = {"notebook-example": "tests/test_api.py"}  # a marker -> the test that runs the block after it
BLOCK_TIMEOUT_S = 900
VLMKD_SCRIPTS = {  # vlmkd-caption -> caption ...: the console scripts that are `vlmkd COMMAND`
    script.name: script.name.removeprefix("vlmkd-")
    for script in importlib.metadata.entry_points(group="console_scripts")
    if script.name.startswith("vlmkd-") and script.module == "vlmkd.cli"
}


@dataclass(frozen=True)
class Kind:
    """What this test does with a block: "run" it, check a "not-run" one (`detail`: the reason), leave it to the
    test that runs it as written ("elsewhere", `detail`: that test's file), or nothing ("text")."""

    name: str
    detail: str = ""


def kind(block: CodeBlock) -> Kind:
    marker = re.fullmatch(r"not-run: (?P<reason>[\w-]+)\b.*", block.comment or "", re.DOTALL)
    if block.language in RUNNERS and block.file is not None and block.markdown in RECIPE_TESTS:
        return Kind("elsewhere", RECIPE_TESTS[block.markdown])
    if block.comment in RUN_ELSEWHERE:
        return Kind("elsewhere", RUN_ELSEWHERE[block.comment])
    if marker:
        return Kind("not-run", marker["reason"])
    if block.comment in MARKERS_THAT_MEAN_NOT_RUN:
        return Kind("not-run", MARKERS_THAT_MEAN_NOT_RUN[block.comment])
    if block.language in RUNNERS:
        return Kind("run")
    return Kind("text")


# ---- blocks that do not run: still consistent with the commands they show -------------------------------------


def simple_commands(script: str) -> list[list[str]]:
    """The simple commands of a bash block: continuation lines joined, comments and redirections dropped, split at
    `;`, `&&`, `||`, `|` and `&`."""
    found: list[list[str]] = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split, lexer.commenters = True, "#"
        command: list[str] = []
        redirect = False
        for word in lexer:
            if set(word) <= set(";&|"):
                found.append(command)
                command = []
            elif set(word) <= set("<>"):
                redirect = True
            elif redirect:
                redirect = False  # the redirection's target
            else:
                command.append(word)
        found.append(command)
    return [[w for w in c if not re.fullmatch(r"[A-Z_]+=.*", w)] or c for c in found if c]


@cache
def vlmkd_help(chain: tuple[str, ...]) -> str:
    """`vlmkd CHAIN... --help`, run in this process."""
    from vlmkd.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
        main([*chain, "--help"])
    return out.getvalue()


def usage_words(help_text: str) -> list[str]:
    """The command words of a help's usage line (`usage: vlmkd caption import [-h] ...` -> vlmkd, caption, import)."""
    words = help_text.partition("\n")[0].removeprefix("usage:").split()
    return list(itertools.takewhile(lambda word: not word.startswith(("[", "-", "{")) and not word.isupper(), words))


def vlmkd_command_problems(arguments: list[str]) -> list[str]:
    """What is wrong with `vlmkd ARGUMENTS...` as a command line: an unknown command or flag."""
    chain: list[str] = []
    for word in arguments:
        if word.startswith("-") or word == "...":
            break
        words = usage_words(vlmkd_help((*chain, word)))
        if chain and not (words and words[-1].endswith(word) and len(words) <= len(chain) + 2):
            if " COMMAND" in vlmkd_help(tuple(chain)).partition("\n")[0]:
                return [f"`vlmkd {' '.join(chain)}` has no command {word!r}"]
            break
        chain.append(word)
    if not chain:
        return [f"`vlmkd {shlex.join(arguments)}` names no command"]
    known = vlmkd_help(tuple(chain))
    if not known.startswith("usage:") or (len(chain) == 1 and "unknown command" in known):
        return [f"`vlmkd {' '.join(chain)}` is not a vlmkd command"]
    flags = {word.partition("=")[0] for word in arguments if word.startswith("--")}
    missing = sorted(flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", known))
    return [f"`vlmkd {' '.join(chain)}` has no {flag} (see its --help)" for flag in missing]


def command_problems(command: list[str]) -> list[str]:
    """What is wrong with one command of a block that is not run: vlmkd commands and flags that do not exist, paths
    of scripts and tests that are not in the tree, install extras that pyproject.toml does not declare."""
    program, arguments = command[0], command[1:]
    if program == "vlmkd":
        return vlmkd_command_problems(arguments)
    if program in VLMKD_SCRIPTS:
        return vlmkd_command_problems([VLMKD_SCRIPTS[program], *arguments])
    if program == "torchrun" and "-m" in arguments:
        arguments = ["python", *arguments[arguments.index("-m") :]]
        program, arguments = arguments[0], arguments[1:]
    if program in ("python", "python3") and arguments[:1] == ["-m"] and len(arguments) > 1:
        module = arguments[1]
        if module == "vlmkd":
            return vlmkd_command_problems(arguments[2:])
        if module.startswith("vlmkd.") and importlib.util.find_spec(module) is None:
            return [f"there is no module {module}"]
        return []
    if program in ("python", "python3") and arguments and arguments[0].endswith(".py"):
        return [] if (ROOT / arguments[0]).is_file() else [f"there is no script {arguments[0]}"]
    if program == "pytest":
        paths = [a.partition("::")[0] for a in arguments if not a.startswith("-") and a.startswith("tests")]
        return [f"there is no {path}" for path in paths if not (ROOT / path).exists()]
    if program == "pip":
        return [f"pyproject.toml declares no extra {e!r}" for e in install_extras(arguments) if e not in extras()]
    return []


def install_extras(arguments: list[str]) -> list[str]:
    """The extras of this project that a pip command line installs (`".[vision,dali]"`, `'vlmkd[dali-cuda12]'`)."""
    found = [re.fullmatch(r"(?:\.|vlmkd)\[([\w,-]+)\]", argument) for argument in arguments]
    return [extra for match in found if match for extra in match[1].split(",")]


@cache
def extras() -> set[str]:
    """The extras pyproject.toml declares (as the installed metadata lists them)."""
    return set(importlib.metadata.metadata("vlmkd").get_all("Provides-Extra") or [])


def python_problems(block: CodeBlock) -> list[str]:
    """What is wrong with a python block that is not run: a syntax error, or an import of a vlmkd name that does
    not exist."""
    try:
        tree = ast.parse(block.text)
    except SyntaxError as error:
        return [f"does not compile: {error}"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vlmkd":
            module = importlib.import_module(node.module)
            problems += [f"{node.module} has no {a.name}" for a in node.names if not hasattr(module, a.name)]
        elif isinstance(node, ast.Import):
            missing = [
                a.name for a in node.names if a.name.startswith("vlmkd") and not importlib.util.find_spec(a.name)
            ]
            problems += [f"there is no module {name}" for name in missing]
    return problems


@pytest.mark.parametrize("markdown", DOCS)
def test_every_block_runs_or_says_why_not(markdown: str) -> None:
    problems = []
    for block in blocks(markdown):
        found = kind(block)
        if block.language not in RUNNERS and block.language not in TEXT_LANGUAGES:
            problems.append(f"{block.source}: give the fence a language: one of {sorted({*RUNNERS, *TEXT_LANGUAGES})}")
        elif found.name == "not-run" and found.detail not in REASONS:
            problems.append(f"{block.source}: not-run reason {found.detail!r} is not one of {sorted(REASONS)}")
        elif found.name == "not-run" and block.language == "bash":
            problems += [f"{block.source}: {p}" for c in simple_commands(block.text) for p in command_problems(c)]
        elif found.name == "not-run" and block.language == "python":
            problems += [f"{block.source}: {problem}" for problem in python_problems(block)]
        elif found.name == "elsewhere":
            named = f'"{block.file}"' if block.file else f"<!-- {block.comment} -->"
            if named not in (ROOT / found.detail).read_text():
                problems.append(f"{block.source}: {found.detail} does not run this block (it never names {named})")
        elif block.language == "yaml":
            try:
                yaml.safe_load(block.text)
            except yaml.YAMLError as error:
                problems.append(f"{block.source}: not YAML: {error}")
    assert problems == []


def test_the_not_run_checks_catch_what_they_are_for() -> None:
    """The control: the checks of blocks that do not run find an unknown command, flag, script, test or extra."""
    bash = """\
vlmkd-caption data/train.txt --model M --out runs/c --batch-size 4   # fine
vlmkd caption import x.jsonl --dataset d --out s --no-such-flag && vlmkd data nonsense-cmd OUT
torchrun --nproc-per-node 8 -m vlmkd train --config c --epochz 3 | tee log
python benchmarks/no_such_bench.py; pytest tests/no_such_test.py; pip install ".[vision,no-such-extra]"
"""
    assert [problem for command in simple_commands(bash) for problem in command_problems(command)] == [
        "`vlmkd caption import` has no --no-such-flag (see its --help)",
        "`vlmkd data` has no command 'nonsense-cmd'",
        "`vlmkd train` has no --epochz (see its --help)",
        "there is no script benchmarks/no_such_bench.py",
        "there is no tests/no_such_test.py",
        "pyproject.toml declares no extra 'no-such-extra'",
    ]
    block = CodeBlock("from vlmkd.caption import CaptionStore, NoSuchThing\nimport vlmkd.nope\n", "x.md", 1)
    assert python_problems(block) == ["vlmkd.caption has no NoSuchThing", "there is no module vlmkd.nope"]


# ---- blocks that run -------------------------------------------------------------------------------------------


@dataclass
class Ran:
    block: CodeBlock
    stdout: str
    stderr: str


def run_block(block: CodeBlock, folder: Path, logs: Path) -> Ran:
    """Run one block in `folder`; stop whatever it left running in the background (a server it started)."""
    script = logs / f"{block.markdown.replace('/', '_')}_{block.line}.{'py' if block.language == 'python' else 'sh'}"
    script.write_text(block.text)
    out, err = script.with_suffix(".out"), script.with_suffix(".err")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "MPLBACKEND": "Agg"}
    with out.open("w") as stdout, err.open("w") as stderr:  # files, not pipes: a background server keeps pipes open
        process = subprocess.Popen(
            [*RUNNERS[block.language], str(script)], cwd=folder, env=env, stdout=stdout, stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
        try:
            code = process.wait(timeout=BLOCK_TIMEOUT_S)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    ran = Ran(block, out.read_text(), err.read_text())
    tail = f"{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
    assert code == 0, f"{block.source} ({block.language}) failed with exit code {code}:\n{tail}"
    return ran


@pytest.mark.slow
@pytest.mark.parametrize("markdown", DOCS)
def test_the_doc_runs_as_written(markdown: str, tmp_path: Path) -> None:
    folder, logs = tmp_path / "reader", tmp_path / "scripts"
    folder.mkdir()
    logs.mkdir()
    runs = [run_block(block, folder, logs) for block in blocks(markdown) if kind(block).name == "run"]
    if markdown in DOC_CHECKS:
        DOC_CHECKS[markdown](folder, runs)


# ---- what a document promises beyond exit code 0 ----------------------------------------------------------------


def check_readme(folder: Path, runs: list[Ran]) -> None:
    """The usage block trains the method (a block that silently trained a baseline fails) and evaluates it."""
    (usage,) = [ran for ran in runs if "vlmkd-train" in ran.block.text]
    assert "weights are random" in usage.stdout.lower()
    header = usage.stdout[usage.stdout.index("vlmkd-train:") :].splitlines()
    assert header[1] == "  task loss: balanced_softmax" and header[2].startswith("  VLM-KD:    on, weight 1.0")
    run = folder / "runs" / "vlmkd"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["vlmkd_weight"], config["task_loss"]) == (1.0, "balanced_softmax")
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in steps if record["kind"] == "step"]
    assert steps and all(record["vlmkd_loss"] > 0 for record in steps), "the README's training line trained a baseline"
    results = json.loads((run / "eval" / "metrics.json").read_text())
    assert results["top1"]["all"]["images"] == len((folder / "data" / "test.txt").read_text().splitlines())
    assert (run / "eval" / "per_class_accuracy.png").stat().st_size > 0


DOC_CHECKS = {"README.md": check_readme}
