"""Checks every fused contrastive backend must pass against contrastive_ref, shared by the Triton and CUDA tests.

Each `check_*` takes a backend name (its `torch.ops.vlmkd` ops) or a (forward, backward) pair with the ops'
signatures (the CUDA tests pass the emulated kernels), and a device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from vlmkd.ops.contrastive_reference import contrastive_ref

# (B, Dt, Dv, positives): B=1 and 3 are single partial tiles, 41 and 257 span several row and column tiles
# (and column splits of the LSE passes); Dv=65 leaves a ragged K chunk, Dv=512 several gradient blocks.
CASES_FP64 = [
    (1, 37, 65, "instance"),
    (3, 37, 65, "class"),
    (41, 384, 65, "class"),
    (41, 37, 512, "instance"),
    (257, 37, 65, "class"),
]
CASES_FP32 = [
    (41, 384, 512, "class"),
    (257, 37, 65, "instance"),
]
NAMES = ("loss", "grad_v", "grad_weight", "grad_bias", "grad_logit_scale")
COMMON_SCHEMA = (
    "Tensor v, Tensor t, Tensor weight, Tensor bias, Tensor logit_scale, Tensor labels, bool class_positives"
)


def make_inputs(
    batch: int, dt: int, dv: int, positives: str, dtype: torch.dtype, device: str, logit_scale: float = 1 / 0.07
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random (v, t, weight, bias, logit_scale) and labels: arange for instance mode; for class mode a few
    shared classes plus singletons (every fifth row gets a label of its own)."""
    generator = torch.Generator().manual_seed(batch * 1000 + dt + dv)
    tensors = {
        "v": torch.randn(batch, dv, generator=generator, dtype=torch.float64),
        "t": torch.randn(batch, dt, generator=generator, dtype=torch.float64),
        "weight": torch.randn(dv, dt, generator=generator, dtype=torch.float64) / math.sqrt(dt),
        "bias": 0.1 * torch.randn(dv, generator=generator, dtype=torch.float64),
        "logit_scale": torch.tensor(math.log(logit_scale), dtype=torch.float64),
    }
    if positives == "instance":
        labels = torch.arange(batch)
    else:
        labels = torch.randint(0, max(1, batch // 4), (batch,), generator=generator)
        labels[::5] = 1000 + torch.arange(len(labels[::5]))
    return {name: x.to(device=device, dtype=dtype) for name, x in tensors.items()}, labels.to(device)


Ops = tuple[Callable[..., list[torch.Tensor]], Callable[..., list[torch.Tensor]]]


def run_fused(backend: str | Ops, inputs: dict, labels: torch.Tensor, positives: str, grad_loss: float):
    """[loss, grad_v, grad_weight, grad_bias, grad_logit_scale] through a backend's two ops (by name, or a
    (forward, backward) pair with their signatures)."""
    if isinstance(backend, str):
        backend = (
            getattr(torch.ops.vlmkd, f"contrastive_forward_{backend}"),
            getattr(torch.ops.vlmkd, f"contrastive_backward_{backend}"),
        )
    forward, backward = backend
    args = (inputs["v"], inputs["t"], inputs["weight"], inputs["bias"], inputs["logit_scale"], labels)
    class_positives = positives == "class"
    loss, *saved = forward(*args, class_positives)
    grads = backward(torch.tensor(grad_loss, dtype=loss.dtype, device=loss.device), *args, class_positives, saved)
    return [loss, *grads]


def reference(inputs: dict, labels: torch.Tensor, positives: str, grad_loss: float, dtype: torch.dtype):
    """The same five tensors from contrastive_ref + autograd, computed in `dtype`."""
    leaves = {name: x.detach().to(dtype).requires_grad_(name != "t") for name, x in inputs.items()}
    loss = contrastive_ref(**leaves, labels=labels, positives=positives)
    loss.backward(torch.tensor(grad_loss, dtype=dtype, device=loss.device))
    return [loss.detach()] + [leaves[name].grad for name in ("v", "weight", "bias", "logit_scale")]


def assert_as_accurate_as_torch(actual, expected64, torch32, factor: float = 4.0) -> None:
    """float32 error against the float64 reference at most `factor` x plain PyTorch's own float32 error."""
    for name, a, e, p in zip(NAMES, actual, expected64, torch32, strict=True):
        assert torch.isfinite(a).all(), name
        error = (a.double() - e).abs().max().item()
        torch_error = (p.double() - e).abs().max().item()
        floor = 1e-6 * max(1.0, e.abs().max().item())
        assert error <= factor * torch_error + floor, f"{name}: error {error:.3g} vs torch's {torch_error:.3g}"


def check_float64(backend: str | Ops, device: str, case: tuple, grad_loss: float) -> None:
    batch, dt, dv, positives = case
    inputs, labels = make_inputs(batch, dt, dv, positives, torch.float64, device)
    actual = run_fused(backend, inputs, labels, positives, grad_loss)
    expected = reference(inputs, labels, positives, grad_loss, torch.float64)
    for name, a, e in zip(NAMES, actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == torch.float64, name
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


def check_float32(backend: str | Ops, device: str, case: tuple) -> None:
    batch, dt, dv, positives = case
    inputs, labels = make_inputs(batch, dt, dv, positives, torch.float32, device)
    actual = run_fused(backend, inputs, labels, positives, 0.7)
    expected = reference(inputs, labels, positives, 0.7, torch.float64)
    plain = reference(inputs, labels, positives, 0.7, torch.float32)
    assert_as_accurate_as_torch(actual, expected, plain)


def check_tf32(backend: str | Ops, device: str, case: tuple) -> None:
    """With TF32 products (inputs rounded to a 10-bit mantissa) errors stay at that level: within 1% of each
    tensor's largest reference value."""
    batch, dt, dv, positives = case
    inputs, labels = make_inputs(batch, dt, dv, positives, torch.float32, device)
    actual = run_fused(backend, inputs, labels, positives, 0.7)
    expected = reference(inputs, labels, positives, 0.7, torch.float64)
    for name, a, e in zip(NAMES, actual, expected, strict=True):
        error = (a.double() - e).abs().max().item()
        assert error <= 0.01 * max(1e-3, e.abs().max().item()), f"{name}: error {error:.3g}"


def check_scale_at_the_bound(backend: str | Ops, device: str) -> None:
    """logit_scale exactly log(100): like torch.clamp, no gradient at the bound itself."""
    inputs, labels = make_inputs(41, 37, 65, "class", torch.float64, device, logit_scale=100.0)
    actual = run_fused(backend, inputs, labels, "class", 1.0)
    expected = reference(inputs, labels, "class", 1.0, torch.float64)
    assert expected[4].item() == 0.0 and actual[4].item() == 0.0
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-9, atol=1e-12)


def check_clamped_scale(backend: str | Ops, device: str, positives: str) -> None:
    """logit_scale above log(100): scale is 100, its gradient 0. Row 0 is anti-aligned with its own text and
    row 1 aligned with it, so S spans [-100, 100] and exp(S - LSE over positives) could reach e^200."""
    batch, dt, dv = 41, 37, 65
    inputs, labels = make_inputs(batch, dt, dv, positives, torch.float32, device, logit_scale=400.0)
    if positives == "class":
        labels = torch.arange(batch, device=device) % 7
        labels[0], labels[1] = 100, 101  # rows 0 and 1 are singletons
    u = inputs["t"].double() @ inputs["weight"].double().T + inputs["bias"].double()
    inputs["v"][0] = -3.0 * u[0].float()
    inputs["v"][1] = 0.5 * u[0].float()
    actual = run_fused(backend, inputs, labels, positives, 1.3)
    expected = reference(inputs, labels, positives, 1.3, torch.float64)
    plain = reference(inputs, labels, positives, 1.3, torch.float32)
    assert actual[0].item() > 300 / (2 * batch)  # row 0 costs >= 100 and column 0 >= 200: S reaches +-100
    assert actual[4].item() == 0.0
    assert_as_accurate_as_torch(actual, expected, plain)


def check_schema_and_fake_shapes(backend: str) -> None:
    forward = getattr(torch.ops.vlmkd, f"contrastive_forward_{backend}")
    backward = getattr(torch.ops.vlmkd, f"contrastive_backward_{backend}")
    assert str(forward.default._schema) == f"vlmkd::contrastive_forward_{backend}({COMMON_SCHEMA}) -> Tensor[]"
    assert str(backward.default._schema) == (
        f"vlmkd::contrastive_backward_{backend}(Tensor grad_loss, {COMMON_SCHEMA}, Tensor[] saved) -> Tensor[]"
    )
    from torch._subclasses.fake_tensor import FakeTensorMode

    inputs, labels = make_inputs(5, 7, 16, "instance", torch.float32, "cpu")
    with FakeTensorMode() as mode:
        args = [mode.from_tensor(x) for x in (*inputs.values(), labels)]
        loss, *saved = forward(*args, False)
        grads = backward(loss, *args, False, saved)
    assert loss.shape == () and [g.shape for g in grads] == [(5, 16), (16, 7), (16,), ()]
    assert all(x.numel() <= 5 * 16 for x in saved)  # saved state is O(B Dv), never B x B


def check_compiles(backend: str) -> None:
    """torch.compile(fullgraph=True) over forward + backward ops gives the eager values."""
    inputs, labels = make_inputs(41, 37, 65, "class", torch.float32, "cuda")

    def both(v, t, weight, bias, logit_scale, labels):
        return run_fused(backend, dict(v=v, t=t, weight=weight, bias=bias, logit_scale=logit_scale), labels, "class", 1)

    eager = both(*inputs.values(), labels)
    compiled = torch.compile(both, fullgraph=True)(*inputs.values(), labels)
    for name, e, c in zip(NAMES, eager, compiled, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
