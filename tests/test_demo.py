"""`vlmkd demo` end to end at a reduced size: every stage runs and the table and plots come out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmkd.demo import DemoSize, main, run_demo


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_table_and_plots(tmp_path, capsys) -> None:
    size = DemoSize(
        max_train_per_class=20, test_per_class=5, prompts=2, max_new_tokens=4, epochs=1, image_size=8, width=0.25,
        batch_size=16, num_workers=0, tsne_max=60, threads=1,
    )  # fmt: skip
    results = run_demo(tmp_path / "demo", size, progress=False)
    assert results["top1"]["all"]["images"] == 50
    for plot in ("per_class", "tsne_images", "tsne_captions"):
        assert (tmp_path / "demo" / "eval" / results["plots"][plot].split("/")[-1]).is_file()
    saved = json.loads((tmp_path / "demo" / "eval" / "metrics.json").read_text())
    assert saved["top1"] == results["top1"]
    assert "randomly initialised" in capsys.readouterr().out


def _stage_files(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file the stages before evaluation wrote: an atomic rewrite changes both."""
    return {
        str(p.relative_to(out)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in out.rglob("*")
        if p.is_file() and p.relative_to(out).parts[0] != "eval"
    }


@pytest.mark.slow
def test_demo_cli_rerun_reuses_the_finished_stages_and_prints_the_table(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    args = ["--out", str(out), "--max-train-per-class", "12", "--epochs", "1", "--prompts", "1"]
    args += ["--image-size", "8", "--batch-size", "8", "--threads", "1", "--no-progress"]
    assert main(args) == 0
    first = capsys.readouterr().out
    written = _stage_files(out)
    assert any(name.startswith("captions/") for name in written) and "train/model.safetensors" in written
    assert main(args) == 0
    second = capsys.readouterr().out
    assert _stage_files(out) == written  # data, VLM, captions, features and training: nothing rewritten
    assert "reusing its model" in second
    assert "x chance (log batch = 2.079)" in first and "constant captions cannot teach anything" in first
    for text in (first, second):
        assert "Many" in text and "Medium" in text and "Few" in text and "All" in text
    table = [line for line in first.splitlines() if line.startswith("accuracy")]
    assert table == [line for line in second.splitlines() if line.startswith("accuracy")]


def test_demo_summary_states_the_text_term_against_chance_and_why_constant_captions_cannot_teach() -> None:
    from vlmkd.demo import text_term_summary

    constant = {"loss": 2.0794, "chance": 2.0794, "fraction": 1.0, "distinct_captions": {"G": 1, "T1": 1}}
    line = text_term_summary(constant)
    assert "2.079 = 1.00 x chance (log batch = 2.079)" in line and "G 1, T1 1" in line
    assert "constant captions cannot teach anything" in line
    varied = text_term_summary(constant | {"loss": 1.2, "fraction": 0.58, "distinct_captions": {"G": 40}})
    assert "0.58 x chance" in varied and "cannot teach" not in varied
