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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 37), (257, 384)])
def test_cpp_op_round_trips_numpy_buffers(shape: tuple[int, int], dtype: type) -> None:
    """A real op of the module (the row normalisation of the contrastive loss) writes its outputs in place."""
    from vlmkd import _C

    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    before = x.copy()
    out, norms = np.empty_like(x), np.empty(shape[0], dtype)
    _C.normalize_rows(x, out, norms, 2.0)
    exact = np.linalg.norm(x.astype(np.float64), axis=1)
    tolerance = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(norms, exact, rtol=tolerance)
    np.testing.assert_allclose(out, 2.0 * x / exact[:, None], rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(x, before)  # the input buffer is untouched


def test_cpp_op_writes_into_torch_buffers_shared_with_numpy() -> None:
    from vlmkd import _C

    x = torch.randn(41, 65)
    out, norms = torch.empty_like(x), torch.empty(41)
    _C.normalize_rows(x.numpy(), out.numpy(), norms.numpy())  # .numpy() shares memory: no copy either way
    torch.testing.assert_close(out, torch.nn.functional.normalize(x, dim=1))
    torch.testing.assert_close(norms, x.norm(dim=1))


def test_cpp_op_rejects_bad_buffers_with_a_message_naming_the_argument() -> None:
    from vlmkd import _C

    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="x must have 2 dimension"):
        _C.normalize_rows(np.zeros(4, np.float32), x, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="out must be a C-contiguous float32"):
        _C.normalize_rows(x, np.zeros((4, 3), np.float64), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="norms must be a C-contiguous float32"):
        _C.normalize_rows(x, np.zeros_like(x), np.zeros(3, np.float32))


def test_cli_info_lists_backends(tmp_path) -> None:
    command = [sys.executable, "-m", "vlmkd", "info"]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=tmp_path)
    cpp_line = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["cpp"])
    assert cpp_line.split()[1] == "usable", cpp_line
    assert any(
        line.startswith("backbones (--arch): resnet32, resnet50, resnext50") for line in result.stdout.splitlines()
    )
    assert any(line.startswith("engines (--engine): hf, trt") for line in result.stdout.splitlines())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_cli_info_says_no_cuda_device_on_a_machine_without_one(tmp_path) -> None:
    pytest.importorskip("vlmkd._cuda", reason="the CUDA module was not built (no nvcc)")
    result = subprocess.run([sys.executable, "-m", "vlmkd", "info"], capture_output=True, text=True, cwd=tmp_path)
    cuda_line = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["cuda"])
    assert "built, not usable here" in cuda_line and "no CUDA device" in cuda_line, cuda_line
    assert "insufficient" not in cuda_line, cuda_line


@pytest.mark.parametrize(("command", "hint"), [("frobnicate", ""), ("captoin", "did you mean caption?")])
def test_cli_unknown_command_is_one_line_with_a_did_you_mean(tmp_path, command: str, hint: str) -> None:
    result = subprocess.run([sys.executable, "-m", "vlmkd", command], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"vlmkd: error: unknown command {command!r}")
    assert hint in result.stderr and "caption" in result.stderr and "see vlmkd --help" in result.stderr


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
