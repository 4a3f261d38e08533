"""The native modules are built, import, and move buffers between Python and C++ intact."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import vlmkd
from vlmkd import cli


def test_cpp_module_imports_and_backends_reports_it_usable() -> None:
    from vlmkd import _C

    status = vlmkd.backends()["cpp"]
    assert status.built and status.usable, status.detail
    assert _C.max_threads() >= 1


def test_backends_names_every_backend_and_reference_is_always_usable() -> None:
    statuses = vlmkd.backends()
    assert list(statuses) == ["reference", "cpp", "triton", "cuda"]
    assert statuses["reference"].usable
    for status in statuses.values():
        assert status.usable or status.detail, f"{status.name} is unusable without a reason"


def test_cuda_module_was_built_and_import_does_not_need_a_gpu() -> None:
    status = vlmkd.backends()["cuda"]
    assert status.built, status.detail  # nvcc is present wherever this suite runs the install
    from vlmkd import _cuda

    assert _cuda.runtime_version >= 12000
    if not torch.cuda.is_available():
        assert not status.usable and _cuda.device_count() == 0


@pytest.mark.parametrize("shape", [(1, 1), (3, 37), (257, 384)])
def test_cpp_round_trips_a_numpy_buffer(shape: tuple[int, int]) -> None:
    from vlmkd import _C

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    before = x.copy()
    out = _C.l2_normalize_rows(x)
    expected = x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(x, before)  # the input buffer is untouched


def test_cpp_round_trips_a_torch_buffer_without_copy_on_the_way_in() -> None:
    from vlmkd import _C

    x = torch.randn(41, 65)
    out = torch.from_numpy(_C.l2_normalize_rows(x.numpy()))
    torch.testing.assert_close(out, torch.nn.functional.normalize(x, dim=1))


def test_cpp_rejects_wrong_rank_with_a_message_naming_the_argument() -> None:
    from vlmkd import _C

    with pytest.raises(ValueError, match="x must be a 2-D"):
        _C.l2_normalize_rows(np.zeros(4, np.float32))


def test_cli_info_lists_backends(tmp_path) -> None:
    command = [sys.executable, "-m", "vlmkd", "info"]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=tmp_path)
    cpp_line = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["cpp"])
    assert cpp_line.split()[1] == "usable", cpp_line
    assert "backbones (--arch): resnet32, resnet50, resnext50" in result.stdout.splitlines()
    assert any(line.startswith("engines (--engine): hf, trt") for line in result.stdout.splitlines())


def test_cli_unknown_command_exits_non_zero_with_usage(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "vlmkd", "frobnicate"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown command" in result.stderr and "caption" in result.stderr


def test_cli_turns_user_errors_into_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def failing(argv: list[str]) -> int:
        raise vlmkd.InputError("data/train.txt:3: label 12 is out of range [0, 10)")

    monkeypatch.setattr(cli, "_resolve", lambda name: failing)
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert err == "vlmkd train: error: data/train.txt:3: label 12 is out of range [0, 10)\n"


def test_cli_turns_gpu_out_of_memory_into_advice(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def exhausted(argv: list[str]) -> int:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(cli, "_resolve", lambda name: exhausted)
    assert cli.main(["caption"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("vlmkd caption: error: the GPU ran out of memory") and "--batch-size" in err
    assert err.count("\n") == 1
