"""Every stage on a read-only output folder and on a full disk: one line naming the path, finished work kept.

The full disk is a small tmpfs mounted for the test (skipped where mounting is not allowed) and, everywhere, a
file-size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as on a full disk). The read-only folder is a
read-only tmpfs for root (who may write into any chmod-ed folder) and a chmod 555 folder for other users.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkd.cli import main as vlmkd_main

from ._kill import environment, tree_bytes

pytestmark = pytest.mark.faults
STAGES = ("caption", "encode", "train", "eval")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8 PNGs in 2 classes, a tiny BLIP, their caption store and feature store, and a trained run."""
    from vlmkd.testing import build_tiny_blip

    root = tmp_path_factory.mktemp("disk-faults")
    rng = np.random.default_rng(0)
    (root / "data").mkdir()
    for k in range(8):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "data" / f"{k}.png")
    (root / "data" / "train.txt").write_text("".join(f"{k}.png {k % 2}\n" for k in range(8)))
    (root / "prompts.yaml").write_text("prompts:\n- {id: G, template: Describe this image.}\n")
    paths = {"root": root, "list": root / "data" / "train.txt", "model": build_tiny_blip(root / "blip")}
    assert vlmkd_main(args("caption", paths, root / "captions")) == 0
    paths["captions"] = root / "captions"
    assert vlmkd_main(args("encode", paths, root / "features")) == 0
    paths["features"] = root / "features"
    assert vlmkd_main(args("train", paths, root / "run")) == 0
    paths["run"] = root / "run"
    return paths


def args(stage: str, paths: dict[str, Path], out: Path) -> list[str]:
    """The command line of `stage` writing to `out`."""
    common = {
        "caption": ["caption", paths["list"], "--model", paths["model"], "--out", out, "--prompts",
                    paths["root"] / "prompts.yaml", "--max-new-tokens", "2", "--num-shards", "4", "--no-progress"],
        "encode": ["encode", paths.get("captions"), "--out", out, "--chunk-size", "2", "--quiet"],
        "train": ["train", "--train", paths["list"], "--output", out, "--features", paths.get("features"),
                  "--vlmkd-weight", "1", "--arch", "resnet32", "--width", "0.25", "--image-size", "8",
                  "--batch-size", "4", "--epochs", "2", "--num-workers", "0", "--threads", "1", "--no-progress",
                  "--device", "cpu"],
        "eval": ["eval", paths.get("run"), paths["list"], "--out", out, "--num-workers", "0", "--no-progress"],
        "data": ["data", "longtail", paths["list"], out, "--max-count", "2"],
        "models": ["models", "make-tiny", "blip", out],
    }[stage]  # fmt: skip
    return [str(a) for a in common]


def run_vlmkd(argv: list[str], cwd: Path, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, "-m", "vlmkd", *argv], cwd=cwd, env=environment(), capture_output=True,
                          text=True, timeout=300, preexec_fn=limit)  # fmt: skip


def one_line(done: subprocess.CompletedProcess, stage: str) -> str:
    """The run's stderr, checked to be one `vlmkd STAGE: error: ...` line (not a signal, not a traceback)."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])  # SIGBUS would be -7
    lines = [line.split("\r")[-1] for line in done.stderr.splitlines()]
    lines = [line for line in lines if line.strip() and not re.search(r"\d+%\|.*\|.*\]$", line)]
    assert len(lines) == 1 and lines[0].startswith(f"vlmkd {stage}: error: "), done.stderr
    return lines[0]


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0  # fmt: skip


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "read-only"
    if os.geteuid() == 0:
        if not _mount_tmpfs(folder, "size=1m,ro"):
            pytest.skip("root cannot mount a read-only tmpfs here (and ignores chmod)")
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs filled up to its last 8 KiB (two pages): room for a manifest and a shard, not much more."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "size=1m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the RLIMIT_FSIZE tests cover full disks")
    try:
        with open(disk / "filler", "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(bytes(4096))
            except OSError:
                pass
        os.truncate(disk / "filler", os.path.getsize(disk / "filler") - 8192)
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("stage", ["data", "models", *STAGES])
def test_read_only_output_folder_is_one_line_naming_it(inputs, read_only_folder, stage) -> None:
    out = read_only_folder / "out"
    line = one_line(run_vlmkd(args(stage, inputs, out), inputs["root"]), stage)
    assert str(read_only_folder) in line and "cannot write there" in line, line


@pytest.mark.parametrize("stage", STAGES)
def test_full_disk_is_one_line_and_a_rerun_with_space_finishes(inputs, full_disk, stage) -> None:
    out = full_disk / "out"
    if stage == "eval":  # an earlier evaluation in place: it must survive the failed one whole
        out.mkdir()
        (out / "metrics.json").write_text('{"earlier": true}\n')
    before = tree_bytes(out) if out.exists() else {}
    line = one_line(run_vlmkd(args(stage, inputs, out), inputs["root"]), stage)
    assert "No space left on device" in line and "the disk (or quota) is full" in line, line
    kept = tree_bytes(out) if out.exists() else {}
    if stage == "eval":
        assert kept == before
    if stage == "caption":  # finished shards are kept and never rewritten
        assert all(name == "manifest.json" or name.startswith("shard-") for name in kept), sorted(kept)
    (full_disk / "filler").unlink()
    done = run_vlmkd(args(stage, inputs, out) + (["--resume"] if stage == "train" else []), inputs["root"])
    assert done.returncode == 0, done.stderr[-2000:]
    for name, content in kept.items():
        if name.startswith("shard-"):
            assert (out / name).read_bytes() == content


@pytest.mark.parametrize("stage", ["caption", "encode", "train", "models"])
def test_file_size_limit_is_one_line_not_a_crash(inputs, tmp_path, stage) -> None:
    """Writes past RLIMIT_FSIZE fail with EFBIG (Python ignores SIGXFSZ), as a full disk fails them with ENOSPC;
    the encoder's memory-mapped array is allocated up front, so it cannot die of SIGBUS later. (`models
    make-tiny` once ended in safetensors' Rust "I/O error" traceback.)"""
    out = tmp_path / "out"
    limit = {"caption": 256, "encode": 2048, "train": 2048, "models": 2048}[stage]  # under each first big write
    done = run_vlmkd(args(stage, inputs, out), inputs["root"], file_size_limit=limit)
    assert done.returncode != -signal.SIGBUS
    line = one_line(done, stage)
    assert "File too large" in line and "the disk (or quota) is full" in line, line


def test_models_make_tiny_on_a_full_disk_is_one_line_and_leaves_nothing(inputs, full_disk) -> None:
    """A tiny model (~5 MB) on the full tmpfs: one line naming the folder, no half model and no staging left."""
    out = full_disk / "model"
    line = one_line(run_vlmkd(args("models", inputs, out), inputs["root"]), "models")
    assert line.startswith(f"vlmkd models: error: {out}: No space left on device"), line
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
