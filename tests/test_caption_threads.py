"""vlmkd-caption's torch thread count: the idle-core default or --threads, for the run only, in the summary."""

from __future__ import annotations

import pytest
import torch

import vlmkd.threads
from vlmkd.caption import CaptionConfig, run_captioning
from vlmkd.cli import main
from vlmkd.testing import build_tiny_llava


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "model")


def two_images(dataset):
    path = dataset.root / "two.txt"
    path.write_text("".join(f"{s.path} {s.label}\n" for s in dataset.samples[:2]))
    return path


def test_threads_apply_during_the_run_and_are_restored(tiny_dataset, tmp_path, llava, monkeypatch):
    before = torch.get_num_threads()
    seen = []
    monkeypatch.setattr(vlmkd.threads, "default_threads", lambda: seen.append(torch.get_num_threads()) or 1)
    config = CaptionConfig.from_settings(
        dataset=two_images(tiny_dataset), model=str(llava), out=tmp_path / "a", progress=False, max_new_tokens=2
    )
    report = run_captioning(config)
    assert seen == [before] and report.threads == 1  # the default was asked for and used
    assert torch.get_num_threads() == before
    config = CaptionConfig.from_settings(
        dataset=two_images(tiny_dataset), model=str(llava), out=tmp_path / "b", progress=False, max_new_tokens=2,
        threads=2,
    )  # fmt: skip
    assert run_captioning(config).threads == 2 and len(seen) == 1
    assert torch.get_num_threads() == before


def test_the_cli_prints_the_thread_count_and_refuses_zero(tiny_dataset, tmp_path, llava, capsys):
    argv = ["caption", str(two_images(tiny_dataset)), "--model", str(llava), "--max-new-tokens", "2", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "s"), "--threads", "1"]) == 0
    assert "images/s, 1 torch thread;" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "t"), "--threads", "0"]) == 2
    assert "threads must be at least 1; got 0" in capsys.readouterr().err
