"""The README's usage block, run line by line as written (plus size flags) on the embedded MNIST-LT.

Each command gets only flags that make it small (fewer images, one epoch, 8 px, short captions); a
command the table below does not know fails the test, so the README and this test move together. The run
must train the method: a block that silently trained a baseline (VLM-KD off) fails here.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

README = Path(__file__).parents[1] / "README.md"
MARKER = "<!-- readme-usage"
SMALL = {  # command prefix -> flags that keep it small
    ("vlmkd", "data", "make-demo"): ["--max-train-per-class", "20", "--test-per-class", "5"],
    ("vlmkd", "models", "make-tiny"): [],
    ("vlmkd-caption",): ["--max-new-tokens", "4", "--batch-size", "32", "--no-progress"],
    ("vlmkd-encode",): ["--quiet"],
    ("vlmkd-train",): ["--epochs", "1", "--warmup-epochs", "0", "--image-size", "8", "--width", "0.25",
                       "--batch-size", "16", "--threads", "1", "--num-workers", "0", "--log-every", "1",
                       "--no-progress"],
    ("vlmkd-eval",): ["--num-workers", "0", "--tsne-max", "60", "--threads", "1", "--no-progress"],
}  # fmt: skip


def usage_block() -> list[list[str]]:
    """The commands of the README's bash block after the usage marker, comments dropped."""
    text = README.read_text()
    assert MARKER in text, "README.md lost the usage block's marker"
    block = text[text.index(MARKER) :].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if shlex.split(line, comments=True)]


def small(command: list[str]) -> list[str]:
    for prefix, flags in SMALL.items():
        if tuple(command[: len(prefix)]) == prefix:
            return command + flags
    raise AssertionError(f"the README runs a command this test does not know: {shlex.join(command)}")


@pytest.mark.slow
def test_the_readme_usage_block_runs_and_trains_vlmkd(tmp_path: Path) -> None:
    commands = usage_block()
    assert [c[0] for c in commands] == ["vlmkd", "vlmkd", "vlmkd-caption", "vlmkd-encode", "vlmkd-train", "vlmkd-eval"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    outputs = {}
    for command in commands:
        result = subprocess.run(small(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stdout}\n{result.stderr}"
        outputs[command[0] if command[0] != "vlmkd" else " ".join(command[:2])] = result
    assert "weights are random" in outputs["vlmkd models"].stdout.lower()
    train = outputs["vlmkd-train"].stdout.splitlines()
    assert train[1] == "  task loss: balanced_softmax" and train[2].startswith("  VLM-KD:    on, weight 1.0")
    run = tmp_path / "runs" / "vlmkd"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["vlmkd_weight"], config["task_loss"]) == (1.0, "balanced_softmax")
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["kind"] == "step"]
    assert steps and all(r["vlmkd_loss"] > 0 for r in steps), "the README's training line trained a baseline"
    results = json.loads((run / "eval" / "metrics.json").read_text())
    assert results["top1"]["all"]["images"] == 50  # 5 test digits per class
    assert (run / "eval" / "per_class_accuracy.png").is_file()
