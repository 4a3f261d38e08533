"""The CPU thread default of vlmkd-train, vlmkd-eval, vlmkd-caption and vlmkd-encode (`vlmkd.threads`)."""

from __future__ import annotations

import pytest
import torch
from _cases import class_captions

from vlmkd.cli import main as vlmkd_main
from vlmkd.threads import MAX_DEFAULT_THREADS, default_threads


def test_the_default_thread_count_is_the_idle_cores_up_to_a_cap() -> None:
    assert default_threads(cores=2, load=12.0, local_processes=1) == 1  # a busy shared machine
    assert default_threads(cores=2, load=0.0, local_processes=1) == 2
    assert default_threads(cores=64, load=0.0, local_processes=1) == MAX_DEFAULT_THREADS
    assert default_threads(cores=16, load=2.0, local_processes=8) == 1  # torchrun, 8 processes on 16 cores
    assert default_threads(cores=16, load=13.2, local_processes=1) == 3


@pytest.mark.parametrize("given", [None, "1"])
def test_encode_uses_the_default_or_the_given_thread_count_and_restores_it(
    tiny_dataset, tmp_path, monkeypatch, capsys, given
):
    monkeypatch.setattr("vlmkd.threads.default_threads", lambda: 3)
    calls: list[int] = []
    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    captions = class_captions(tiny_dataset, tmp_path / "captions")
    argv = ["encode", str(captions.path), "--out", str(tmp_path / "features"), "--quiet"]
    assert vlmkd_main(argv + (["--threads", given] if given else [])) == 0
    assert calls == [int(given) if given else 3, before]  # the run's count, then the caller's back


@pytest.mark.parametrize("command", ["encode", "eval", "caption"])
def test_zero_threads_is_a_one_line_error(command, tmp_path, capsys) -> None:
    argv = {
        "encode": ["encode", str(tmp_path / "captions"), "--out", str(tmp_path / "f")],
        "eval": ["eval", str(tmp_path / "run"), str(tmp_path / "test.txt")],
        "caption": ["caption", str(tmp_path / "train.txt"), "--model", "m", "--out", str(tmp_path / "c")],
    }[command]
    code = vlmkd_main([*argv, "--threads", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "threads must be at least 1" in err and "got 0" in err, err


def test_torch_threads_restores_the_count_even_when_the_block_fails() -> None:
    from vlmkd.threads import torch_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), torch_threads(before + 1) as threads:
        assert threads == torch.get_num_threads() == before + 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
