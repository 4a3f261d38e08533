"""The Triton contrastive-loss ops match contrastive_ref (float64) in value and all four gradients.

Without a GPU these run on the Triton CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so the
shapes stay small; the block sizes still leave partial tiles in every dimension. The `check_*` functions
come from tests/_fused_checks.py, which tests/test_contrastive_cuda.py runs on the CUDA ops too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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
)
from torch.profiler import ProfilerActivity, profile

from vlmkd.ops import contrastive_triton  # registers the ops
from vlmkd.ops.contrastive_reference import contrastive_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("grad_loss", [1.0, -2.5])
@pytest.mark.parametrize("case", CASES_FP64, ids=str)
def test_float64_matches_reference(case: tuple, grad_loss: float) -> None:
    check_float64("triton", DEVICE, case, grad_loss)


@pytest.mark.parametrize("case", CASES_FP32, ids=str)
def test_float32_is_as_accurate_as_pytorch(case: tuple) -> None:
    check_float32("triton", DEVICE, case)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # on the interpreter, numpy reports any inf from exp
@pytest.mark.parametrize("positives", ["instance", "class"])
def test_clamped_scale_has_no_gradient_and_extreme_logits_do_not_overflow(positives: str) -> None:
    check_clamped_scale("triton", DEVICE, positives)


def test_scale_at_the_bound_gets_no_gradient() -> None:
    check_scale_at_the_bound("triton", DEVICE)


def test_ops_have_the_backend_contract_schema_and_fake_shapes() -> None:
    check_schema_and_fake_shapes("triton")


@pytest.mark.skipif(DEVICE != "cpu", reason="counts CPU allocations of the interpreter run")
def test_no_allocation_is_quadratic_in_batch() -> None:
    """The largest buffer the ops allocate is B x max(Dt, Dv); the reference, for contrast, allocates B x B."""
    batch, dt, dv = 257, 37, 65
    inputs, labels = make_inputs(batch, dt, dv, "class", torch.float64, DEVICE)

    def largest_allocation(run) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run()
        return max(event.self_cpu_memory_usage for event in prof.events())

    def fused() -> None:
        loss, *saved = torch.ops.vlmkd.contrastive_forward_triton(*inputs.values(), labels, True)
        torch.ops.vlmkd.contrastive_backward_triton(loss, *inputs.values(), labels, True, saved)

    assert largest_allocation(fused) <= batch * max(dt, dv) * 8
    assert largest_allocation(lambda: contrastive_ref(**inputs, labels=labels, positives="class")) >= batch**2 * 8


@pytest.mark.requires_cuda
@pytest.mark.usefixtures("tf32_matmul")
@pytest.mark.parametrize("case", CASES_FP32, ids=str)
def test_tensor_cores_have_tf32_accuracy_on_gpu(case: tuple) -> None:
    check_tf32("triton", "cuda", case)


@pytest.mark.requires_cuda
def test_compiles_fullgraph_on_gpu() -> None:
    check_compiles("triton")


def _sm90_resource_usage(kernel, pointer_type: str, constexprs: dict, num_warps: int) -> str:
    """Compile `kernel` for sm_90 (no GPU needed) and return cuobjdump's resource line (REG, STACK...)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def arg_type(name: str) -> str:
        return "*i64" if name == "labels_ptr" else pointer_type if name.endswith("_ptr") else "i32"

    signature = {p.name: "constexpr" if p.is_constexpr else arg_type(p.name) for p in kernel.params}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        dump = subprocess.run([cuobjdump, "--dump-resource-usage", cubin.name], capture_output=True, text=True)
    return next(line for line in dump.stdout.splitlines() if "REG:" in line)


def sm90_resource_report(dtype: str, precision: str) -> str:
    """Resource lines of the LSE and gradient kernels as the ops launch them at Dv=512 (the widest tiles).

    Needs real (not interpreted) Triton kernels: the test runs it in a subprocess without TRITON_INTERPRET.
    """
    from vlmkd.ops import contrastive_triton_kernels

    torch.set_float32_matmul_precision("highest" if precision == "ieee" else "high")
    tiling = contrastive_triton._tiling(torch.float64 if dtype == "fp64" else torch.float32, 512)
    assert tiling.precision == precision
    blocks = {"BLOCK_M": tiling.block_m, "BLOCK_N": tiling.block_n, "PRECISION": precision, "CLASS_POSITIVES": True}
    lse = {**blocks, "BLOCK_K": tiling.lse_block_k}
    grad = {**blocks, "BLOCK_K": tiling.grad_block_k, "BLOCK_D": tiling.block_d, "WITH_DS_S": True}
    lines = [
        _sm90_resource_usage(contrastive_triton_kernels.lse_pass_kernel, f"*{dtype}", lse, tiling.lse_warps),
        _sm90_resource_usage(contrastive_triton_kernels.grad_pass_kernel, f"*{dtype}", grad, tiling.grad_warps),
    ]
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "precision"), [("fp32", "tf32"), ("fp32", "ieee"), ("fp64", "ieee")])
def test_kernels_compile_for_sm90_without_register_spills(dtype: str, precision: str) -> None:
    """The launch configurations the ops use compile for Hopper and keep everything in registers."""
    pytest.importorskip("triton.backends.nvidia")
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).parent)  # this module, imported by the compiling process
    script = f"import test_contrastive_triton as t; print(t.sm90_resource_report({dtype!r}, {precision!r}))"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    usage = result.stdout.strip().splitlines()
    assert len(usage) == 2 and all("STACK:0 " in line for line in usage), usage
