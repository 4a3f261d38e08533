"""Rule 6: one writer per output. A run folder, a feature store, a caption store being replaced or evaluation
results held by a live process refuse a second writer in one line; a crashed holder leaves nothing stuck.

Once two `vlmkd-train` runs started at once into one --output (seeds 1 and 2) both exited 0 with their epoch
checkpoints interleaved in one folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from _cases import class_captions, make_features, write_tiny_dataset

from vlmkd.cli import main as vlmkd_main
from vlmkd.errors import InputError
from vlmkd.output_lock import holding, lock_path

HOLDER = """
import sys, time
from pathlib import Path
from vlmkd.output_lock import holding
with holding(Path(sys.argv[1]), what="output", shared=sys.argv[2] == "shared"):
    print("held", flush=True)
    time.sleep(600)
"""


@contextmanager
def held_elsewhere(output: Path, shared: bool = False) -> Iterator[subprocess.Popen]:
    """Another live process holding `output`'s lock for the block (killed afterwards)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(output), "shared" if shared else "alone"],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "held"
        yield process
    finally:
        process.kill()
        process.wait()


def test_a_live_holder_refuses_a_second_writer_naming_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with held_elsewhere(out) as other:
        expected = rf"^{out}: another process \(PID {other.pid} on .*\) is writing this run"
        with pytest.raises(InputError, match=expected), holding(out, what="run"):
            pass
        # a shared taker (a captioning process) does not share with a process that holds it alone either
        with pytest.raises(InputError, match="is writing this run"), holding(out, what="run", shared=True):
            pass


def test_a_killed_holder_leaves_nothing_stuck(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with held_elsewhere(out) as other:
        os.kill(other.pid, signal.SIGKILL)
        other.wait()
        assert lock_path(out).exists()  # its file stays, but the kernel dropped its lock with the process
        with holding(out, what="run"):
            pass
    assert not lock_path(out).exists()  # the last holder removes it


def test_shared_holders_coexist_and_the_last_one_removes_the_lock_file(tmp_path: Path) -> None:
    out = tmp_path / "store"
    with held_elsewhere(out, shared=True):
        # two captioning processes share it; an import or merge takes it alone only
        alone = pytest.raises(InputError, match="writing this caption store")
        with holding(out, what="caption store", shared=True), alone, holding(out, what="caption store"):
            pass
        assert lock_path(out).exists()  # the other process still holds it
    with holding(out, what="caption store"):
        pass
    assert not lock_path(out).exists()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("locks")
    dataset = write_tiny_dataset(root / "data")
    paths = {"list": dataset.source, "features": make_features(dataset, root), "root": root}
    assert vlmkd_main(train_argv(paths, root / "run", seed=0, epochs=1)) == 0
    paths["run"] = root / "run"
    return paths


def train_argv(paths: dict[str, Path], output: Path, seed: int, epochs: int) -> list[str]:
    return ["train", "--train", str(paths["list"]), "--features", str(paths["features"]), "--vlmkd-weight", "1",
            "--output", str(output), "--seed", str(seed), "--epochs", str(epochs), "--arch", "resnet32", "--width",
            "0.25", "--image-size", "8", "--batch-size", "4", "--num-workers", "0", "--threads", "1",
            "--no-progress", "--device", "cpu"]  # fmt: skip


def one_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"vlmkd {command}: error: "), lines
    return lines[0]


def test_two_training_runs_into_one_output_do_not_mix(pipeline, tmp_path, capsys) -> None:
    """The first run holds the folder; the second, started while it trains, refuses in one line naming it, and
    the folder holds the first run only."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "vlmkd", *train_argv(pipeline, out, seed=1, epochs=30)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.yaml").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        assert vlmkd_main(train_argv(pipeline, out, seed=2, epochs=2)) == 2
        line = one_line(capsys, "train")
        assert f"{out}: another process (PID {first.pid} on" in line and "is writing this training run" in line
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert "seed: 1" in (out / "config.yaml").read_text()


def test_encode_eval_and_caption_import_refuse_an_output_another_process_writes(pipeline, tmp_path, capsys):
    store = class_captions(write_tiny_dataset(tmp_path / "data"), tmp_path / "captions")
    source = tmp_path / "captions.jsonl"
    cases = {
        "encode": (tmp_path / "features", ["encode", str(store.path), "--out", str(tmp_path / "features"),
                                           "--quiet"], False, "feature store"),
        "eval": (tmp_path / "eval", ["eval", str(pipeline["run"]), str(pipeline["list"]), "--out",
                                     str(tmp_path / "eval"), "--no-progress"], False, "folder of evaluation results"),
        "caption import": (store.path, ["caption", "import", str(source), "--dataset", str(tmp_path / "data"
                                        / "train.txt"), "--out", str(store.path), "--prompt-id", "D", "--overwrite",
                                        "--no-progress"], True, "caption store"),
    }  # fmt: skip
    for name, (output, argv, shared, what) in cases.items():
        before = sorted(p.name for p in output.rglob("*")) if output.exists() else []
        with held_elsewhere(output, shared=shared) as other:
            capsys.readouterr()
            assert vlmkd_main(argv) == 2, name
            line = one_line(capsys, argv[0])
            assert f"{output}: another process (PID {other.pid} on" in line and f"writing this {what}" in line
        assert (sorted(p.name for p in output.rglob("*")) if output.exists() else []) == before, name
