"""Every CLI's parser (`vlmkd.arguments`): one-line errors with a did-you-mean, one clean default per option."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlmkd import cli
from vlmkd.arguments import closest, did_you_mean

DATA_COMMANDS = ("make-demo", "longtail", "info", "load")
EVERY_HELP = [[name] for name in cli.COMMANDS if name != "data"] + [["data", sub] for sub in DATA_COMMANDS]
EVERY_HELP += [["caption", "import"], ["caption", "export"]]
OPTION_LINE = re.compile(r"^  (-{1,2}[^\s,]+)")


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def help_entries(text: str) -> dict[str, str]:
    """Option -> its whole help entry (flag line and continuation lines joined), parsed from `--help` output."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        start = OPTION_LINE.match(line)
        if start:
            current = start[1]
            entries[current] = line.strip()
        elif current and line.startswith("    ") and line.strip():
            entries[current] += " " + line.strip()
        else:
            current = None
    return {option: re.sub(r"-\s+(?=[a-z])", "-", entry) for option, entry in entries.items()}


def run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    executable = shutil.which(script) or str(Path(sys.executable).parent / script)
    return subprocess.run([executable, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("argv", EVERY_HELP, ids=" ".join)
def test_every_option_states_at_most_one_clean_default(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    entries = help_entries(help_text(argv, capsys))
    assert "-h" in entries
    for option, entry in entries.items():
        assert entry.count("(default") <= 1 and entry.count("default:") <= 1, entry
        for bad in ("(default: )", "default: None", "(default; ", "default: default"):
            assert bad not in entry, entry
        if option != "-h":
            assert len(entry.split(None, 1)) == 2, f"{option} has no help text"


def test_defaults_in_help_are_the_parsers_real_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    entries = help_entries(help_text(["eval"], capsys))
    assert entries["--tsne-max"].endswith("(default: 2000)")
    assert entries["--device"].endswith("(default: cpu)")
    assert "default" not in entries["--no-plots"]  # a flag that is off says nothing
    entries = help_entries(help_text(["caption"], capsys))
    assert entries["--engine"].endswith("(default: hf)")
    assert entries["--max-new-tokens"].endswith("(default: 32)")


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["eval", "run", "test.txt", "--tsne-mx", "3"], "did you mean --tsne-max?"),
        (["caption", "data.txt", "--model", "m", "--out", "o", "--engine", "hff"], "did you mean hf?"),
        (["data", "inf", "train.txt"], "did you mean info?"),
        (["data", "info", "train.txt", "--many-treshold", "3"], "did you mean --many-threshold?"),
        (["trian"], "did you mean train?"),
    ],
)
def test_a_typo_is_one_line_with_a_suggestion_and_a_help_pointer(
    argv: list[str], suggestion: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = cli.main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert ": error: " in captured.err and suggestion in captured.err and "--help" in captured.err
    assert "usage:" not in captured.err


def test_console_script_typo_is_one_line(tmp_path: Path) -> None:
    result = run_script("vlmkd-eval", "run", "test.txt", "--tnse-max", "3", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "vlmkd-eval: error: unrecognized arguments: --tnse-max 3; did you mean --tsne-max? (see vlmkd-eval --help)"
    ]


def test_no_suggestion_when_nothing_is_close() -> None:
    assert closest("--zzz", ["--epochs", "--lr"]) is None
    assert closest("bal", ["ce", "balanced_softmax", "logit_adjust"]) == "balanced_softmax"  # unique prefix
    message = "argument --prompts: invalid choice: 9 (choose from 1, 2, 3, 4, 5)"
    assert did_you_mean(message, []) is None


def test_train_help_shows_each_settings_default_from_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import fields

    from vlmkd.arguments import format_default
    from vlmkd.train.config import TrainConfig, field_default

    entries = help_entries(help_text(["train"], capsys))
    for spec in fields(TrainConfig):
        entry = entries["--" + spec.name.replace("_", "-")]
        value = field_default(spec)
        if value is None:
            assert "(default: " in entry or entry.endswith("(required)"), entry
        else:
            assert f"(default: {format_default(value)})" in entry, entry
    assert entries["--vlmkd-weight"].endswith("(default: 1.0 with --features, else 0)")
    assert entries["--task-loss"].endswith("(default: balanced_softmax)")
