"""The CUDA contrastive-loss ops: the same checks as the Triton ops, plus the module boundary.

On a GPU the checks run through the real ops. Everywhere, they also run the same kernel source on the CPU:
tests/cuda_emulation builds csrc/cuda/contrastive_kernels.cuh with the host compiler against a fiber-based
stand-in for the CUDA runtime, and the Python half of the backend (`contrastive_cuda`) calls it instead of
`vlmkd._cuda`. The module boundary is checked without a GPU: `vlmkd._cuda` exposes the kernels, refuses bad
arguments by name and says there is no device instead of launching.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from _fused_checks import (
    CASES_FP32,
    CASES_FP64,
    check_clamped_scale,
    check_compiles,
    check_float32,
    check_float64,
    check_scale_at_the_bound,
    check_schema_and_fake_shapes,
    check_tf32,
    make_inputs,
    run_fused,
)

_cuda = pytest.importorskip("vlmkd._cuda", reason="the CUDA module was not built (no nvcc)")
from vlmkd.ops import contrastive_cuda, contrastive_flash  # noqa: E402  (registers the ops)

KERNELS = ("normalize_rows", "normalize_rows_backward", "lse_pass_splits", "lse_pass", "grad_pass")
EMULATION = Path(__file__).parent / "cuda_emulation"
CSRC = Path(__file__).parents[1] / "csrc"


class EmulatedCuda:
    """Stands in for `vlmkd._cuda` (same functions and arguments) with the kernels run by the CPU emulator."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._library = library
        library.emu_last_error.restype = ctypes.c_char_p

    def lse_pass_splits(self, n: int) -> int:
        return self._library.emu_lse_pass_splits(ctypes.c_int64(n))

    def __getattr__(self, name: str):
        function = getattr(self._library, f"emu_{name}")

        def call(*args):
            *args, dtype, _stream = args
            code = int(dtype == "float64")
            if name in ("lse_pass", "grad_pass"):
                *args, tf32 = args
                code = 2 if tf32 else code
            converted = [ctypes.c_bool(a) if isinstance(a, bool) else ctypes.c_int64(a) for a in args]
            if function(*converted, ctypes.c_int(code)) != 0:
                raise RuntimeError(self._library.emu_last_error().decode())

        return call


@pytest.fixture(scope="module")
def emulated_kernels(tmp_path_factory: pytest.TempPathFactory) -> EmulatedCuda:
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler to build the CUDA emulator")
    library = tmp_path_factory.mktemp("cuda_emulation") / "emulated_kernels.so"
    command = [compiler, "-std=c++17", "-O2", "-fPIC", "-shared", f"-I{EMULATION}", f"-I{CSRC}"]
    subprocess.run([*command, str(EMULATION / "emulated_kernels.cpp"), "-o", str(library)], check=True)
    return EmulatedCuda(ctypes.CDLL(str(library)))


@pytest.fixture
def emulated(monkeypatch: pytest.MonkeyPatch, emulated_kernels: EmulatedCuda):
    """(forward, backward) of the CUDA backend on CPU tensors, its kernels emulated."""
    monkeypatch.setattr(contrastive_cuda, "_cuda", emulated_kernels)
    monkeypatch.setattr(contrastive_cuda, "_stream", lambda: 0)
    kernels = contrastive_cuda._KERNELS
    return functools.partial(contrastive_flash.forward, kernels), functools.partial(contrastive_flash.backward, kernels)


def test_module_exposes_the_kernels() -> None:
    assert all(callable(getattr(_cuda, name)) for name in KERNELS)
    assert _cuda.lse_pass_splits(1) == 1
    assert _cuda.lse_pass_splits(4096) > 1  # small batches split their columns to fill the GPU
    assert _cuda.lse_pass_splits(131072) == 1


def test_arguments_are_checked_by_name_before_any_launch() -> None:
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64', got 'float16'"):
        _cuda.normalize_rows(1, 0, 2, 3, 4, 5, "float16", 0)
    with pytest.raises(ValueError, match="out must be a device pointer"):
        _cuda.normalize_rows(1, 0, 0, 3, 4, 5, "float32", 0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        _cuda.lse_pass(1, 2, 3, 4, 5, -1, 8, True, False, "float32", 0)
    with pytest.raises(ValueError, match="tf32 applies to float32 only"):
        _cuda.grad_pass(1, 2, 3, 4, 5, 6, 7, 8, 0, 16, 16, False, True, "float64", 0)


@pytest.mark.skipif(_cuda.device_count() > 0, reason="checks the behaviour without a GPU")
def test_calling_a_kernel_without_a_gpu_raises_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"vlmkd\._cuda\.grad_pass: no usable CUDA device"):
        _cuda.grad_pass(1, 2, 3, 4, 5, 6, 7, 8, 0, 16, 16, False, False, "float64", 0)


def test_ops_have_the_backend_contract_schema_and_fake_shapes() -> None:
    check_schema_and_fake_shapes("cuda")


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_register_spills(tmp_path: Path) -> None:
    """Every kernel instantiation (float/double, FMA/TF32) builds for Hopper with no local-memory spills."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc")
    command = [nvcc, "-std=c++17", "-O3", "--use_fast_math", "-arch=sm_90", f"-I{CSRC}", "-Xptxas", "-v", "-c"]
    result = subprocess.run(
        [*command, str(CSRC / "cuda" / "contrastive.cu"), "-o", str(tmp_path / "contrastive.o")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    spills = [line for line in result.stderr.splitlines() if "spill stores" in line]
    assert len(spills) == 10  # 2 normalisation kernels x 2 dtypes + LSE and gradient passes x 3 variants
    assert all("0 bytes spill stores, 0 bytes spill loads" in line for line in spills), spills


@pytest.mark.parametrize("grad_loss", [1.0, -2.5])
@pytest.mark.parametrize("case", CASES_FP64, ids=str)
def test_emulated_kernels_float64_match_reference(emulated, case: tuple, grad_loss: float) -> None:
    check_float64(emulated, "cpu", case, grad_loss)


@pytest.mark.parametrize("case", CASES_FP32, ids=str)
def test_emulated_kernels_float32_are_as_accurate_as_pytorch(emulated, case: tuple) -> None:
    check_float32(emulated, "cpu", case)


@pytest.mark.parametrize("positives", ["instance", "class"])
def test_emulated_kernels_clamped_scale_has_no_gradient_and_no_overflow(emulated, positives: str) -> None:
    check_clamped_scale(emulated, "cpu", positives)


def test_emulated_kernels_scale_at_the_bound_gets_no_gradient(emulated) -> None:
    check_scale_at_the_bound(emulated, "cpu")


@pytest.mark.usefixtures("tf32_matmul")
@pytest.mark.parametrize("case", CASES_FP32, ids=str)
def test_emulated_tensor_core_kernels_have_tf32_accuracy(emulated, case: tuple) -> None:
    check_tf32(emulated, "cpu", case)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("grad_loss", [1.0, -2.5])
@pytest.mark.parametrize("case", CASES_FP64, ids=str)
def test_float64_matches_reference(case: tuple, grad_loss: float) -> None:
    check_float64("cuda", "cuda", case, grad_loss)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("case", CASES_FP32, ids=str)
def test_float32_is_as_accurate_as_pytorch(case: tuple) -> None:
    check_float32("cuda", "cuda", case)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("positives", ["instance", "class"])
def test_clamped_scale_has_no_gradient_and_extreme_logits_do_not_overflow(positives: str) -> None:
    check_clamped_scale("cuda", "cuda", positives)


@pytest.mark.requires_cuda
@pytest.mark.usefixtures("tf32_matmul")
@pytest.mark.parametrize("case", CASES_FP32, ids=str)
def test_tensor_cores_have_tf32_accuracy(case: tuple) -> None:
    check_tf32("cuda", "cuda", case)


@pytest.mark.requires_cuda
def test_scale_at_the_bound_gets_no_gradient() -> None:
    check_scale_at_the_bound("cuda", "cuda")


@pytest.mark.requires_cuda
def test_compiles_fullgraph() -> None:
    check_compiles("cuda")


@pytest.mark.requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_peak_memory_is_linear_in_batch(backend: str) -> None:
    """At B=16384 one B x B float32 matrix is 1 GiB; forward + backward together stay under a quarter of it."""
    batch, dt, dv = 16384, 384, 256
    inputs, labels = make_inputs(batch, dt, dv, "class", torch.float32, "cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run_fused(backend, inputs, labels, "class", 1.0)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < 16 * batch * dv * 4, f"{extra / 2**20:.0f} MiB"  # 16 B x Dv buffers = 256 MiB


@pytest.mark.requires_cuda
def test_follows_the_current_stream() -> None:
    """Kernels follow torch's current stream (results equal the default-stream ones)."""
    inputs, labels = make_inputs(257, 37, 65, "class", torch.float32, "cuda")
    expected = run_fused("cuda", inputs, labels, "class", 1.0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        actual = run_fused("cuda", inputs, labels, "class", 1.0)
    torch.cuda.current_stream().wait_stream(stream)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e)
