"""The Triton contrastive-loss ops match contrastive_ref (float64) in value and all four gradients.

Without a GPU these run on the Triton CPU interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so the
shapes stay small; the block sizes still leave partial tiles in every dimension.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from vlmkd.ops import contrastive_triton  # noqa: F401  (registers the ops)
from vlmkd.ops.reference import contrastive_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (B, Dt, Dv, positives): B=1 and 3 are single partial tiles, 41 and 257 span several tiles; B=257 with
# Dv=65 spans multiple K chunks of the similarity tiles with a ragged last one.
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


def _labels(batch: int, positives: str, generator: torch.Generator) -> torch.Tensor:
    """Instance mode: arange. Class mode: a few shared classes plus singletons (labels >= 1000)."""
    if positives == "instance":
        return torch.arange(batch)
    labels = torch.randint(0, max(1, batch // 4), (batch,), generator=generator)
    labels[::5] = 1000 + torch.arange(len(labels[::5]))
    return labels


def _inputs(batch: int, dt: int, dv: int, positives: str, dtype: torch.dtype, logit_scale: float = math.log(1 / 0.07)):
    generator = torch.Generator().manual_seed(batch * 1000 + dt + dv)
    tensors = dict(
        v=torch.randn(batch, dv, generator=generator, dtype=torch.float64),
        t=torch.randn(batch, dt, generator=generator, dtype=torch.float64),
        weight=torch.randn(dv, dt, generator=generator, dtype=torch.float64) / math.sqrt(dt),
        bias=0.1 * torch.randn(dv, generator=generator, dtype=torch.float64),
        logit_scale=torch.tensor(logit_scale, dtype=torch.float64),
    )
    tensors = {name: x.to(device=DEVICE, dtype=dtype) for name, x in tensors.items()}
    return tensors, _labels(batch, positives, generator).to(DEVICE)


def _triton(inputs: dict, labels: torch.Tensor, positives: str, grad_loss: float) -> list[torch.Tensor]:
    """[loss, grad_v, grad_weight, grad_bias, grad_logit_scale] through the two Triton ops."""
    args = (inputs["v"], inputs["t"], inputs["weight"], inputs["bias"], inputs["logit_scale"], labels)
    class_positives = positives == "class"
    loss, *saved = torch.ops.vlmkd.contrastive_forward_triton(*args, class_positives)
    grad = torch.tensor(grad_loss, dtype=loss.dtype, device=loss.device)
    grads = torch.ops.vlmkd.contrastive_backward_triton(grad, *args, class_positives, saved)
    return [loss, *grads]


def _reference(inputs: dict, labels: torch.Tensor, positives: str, grad_loss: float, dtype: torch.dtype):
    """The same five tensors from contrastive_ref + autograd, computed in `dtype`."""
    leaves = {name: x.detach().to(dtype).requires_grad_(name != "t") for name, x in inputs.items()}
    loss = contrastive_ref(**leaves, labels=labels, positives=positives)
    loss.backward(torch.tensor(grad_loss, dtype=dtype, device=loss.device))
    return [loss.detach()] + [leaves[name].grad for name in ("v", "weight", "bias", "logit_scale")]


NAMES = ("loss", "grad_v", "grad_weight", "grad_bias", "grad_logit_scale")


@pytest.mark.parametrize("grad_loss", [1.0, -2.5])
@pytest.mark.parametrize(("batch", "dt", "dv", "positives"), CASES_FP64)
def test_float64_matches_reference(batch: int, dt: int, dv: int, positives: str, grad_loss: float) -> None:
    inputs, labels = _inputs(batch, dt, dv, positives, torch.float64)
    actual = _triton(inputs, labels, positives, grad_loss)
    expected = _reference(inputs, labels, positives, grad_loss, torch.float64)
    for name, a, e in zip(NAMES, actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == torch.float64, name
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


def _assert_as_accurate_as_torch(actual, expected64, torch32, factor: float = 4.0) -> None:
    """float32 error against the float64 reference at most `factor` x plain PyTorch's own float32 error."""
    for name, a, e, p in zip(NAMES, actual, expected64, torch32, strict=True):
        assert torch.isfinite(a).all(), name
        error = (a.double() - e).abs().max().item()
        torch_error = (p.double() - e).abs().max().item()
        floor = 1e-6 * max(1.0, e.abs().max().item())
        assert error <= factor * torch_error + floor, f"{name}: error {error:.3g} vs torch's {torch_error:.3g}"


@pytest.mark.parametrize(("batch", "dt", "dv", "positives"), CASES_FP32)
def test_float32_is_as_accurate_as_pytorch(batch: int, dt: int, dv: int, positives: str) -> None:
    inputs, labels = _inputs(batch, dt, dv, positives, torch.float32)
    actual = _triton(inputs, labels, positives, 0.7)
    expected = _reference(inputs, labels, positives, 0.7, torch.float64)
    plain = _reference(inputs, labels, positives, 0.7, torch.float32)
    _assert_as_accurate_as_torch(actual, expected, plain)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # on the interpreter, numpy reports any inf from exp
@pytest.mark.parametrize("positives", ["instance", "class"])
def test_clamped_scale_has_no_gradient_and_extreme_logits_do_not_overflow(positives: str) -> None:
    """logit_scale above log(100): scale is 100, its gradient 0. Row 0 is anti-aligned with its own text and
    row 1 aligned with it, so S spans [-100, 100] and exp(S - LSE over positives) would reach e^200."""
    batch, dt, dv = 41, 37, 65
    inputs, labels = _inputs(batch, dt, dv, positives, torch.float32, logit_scale=6.0)
    if positives == "class":
        labels = torch.arange(batch, device=DEVICE) % 7
        labels[0], labels[1] = 100, 101  # rows 0 and 1 are singletons
    u = (inputs["t"].double() @ inputs["weight"].double().T + inputs["bias"].double()).float()
    inputs["v"][0] = -3.0 * u[0]
    inputs["v"][1] = 0.5 * u[0]
    actual = _triton(inputs, labels, positives, 1.3)
    expected = _reference(inputs, labels, positives, 1.3, torch.float64)
    plain = _reference(inputs, labels, positives, 1.3, torch.float32)
    assert actual[0].item() > 300 / (2 * batch)  # row 0 costs >= 100 and column 0 >= 200: S reaches +-100
    assert actual[4].item() == 0.0
    _assert_as_accurate_as_torch(actual, expected, plain)


def test_saved_state_and_every_allocation_are_linear_in_batch() -> None:
    """No B x B tensor is saved or allocated: the largest buffer is B x Dv (the reference allocates B x B)."""
    batch, dt, dv = 257, 37, 65
    inputs, labels = _inputs(batch, dt, dv, "class", torch.float64)
    largest_linear = batch * max(dt, dv) * 8
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss, *saved = torch.ops.vlmkd.contrastive_forward_triton(*inputs.values(), labels, True)
        torch.ops.vlmkd.contrastive_backward_triton(loss, *inputs.values(), labels, True, saved)
    assert all(x.numel() <= batch * dv for x in saved)
    if DEVICE == "cpu":
        assert max(event.self_cpu_memory_usage for event in prof.events()) <= largest_linear
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            contrastive_ref(**inputs, labels=labels, positives="class")
        assert max(event.self_cpu_memory_usage for event in prof.events()) >= batch * batch * 8  # the check bites


def test_ops_have_the_backend_contract_schema_and_fake_shapes() -> None:
    forward = torch.ops.vlmkd.contrastive_forward_triton.default._schema
    backward = torch.ops.vlmkd.contrastive_backward_triton.default._schema
    common = "Tensor v, Tensor t, Tensor weight, Tensor bias, Tensor logit_scale, Tensor labels, bool class_positives"
    assert str(forward) == f"vlmkd::contrastive_forward_triton({common}) -> Tensor[]"
    assert (
        str(backward) == f"vlmkd::contrastive_backward_triton(Tensor grad_loss, {common}, Tensor[] saved) -> Tensor[]"
    )

    from torch._subclasses.fake_tensor import FakeTensorMode

    inputs, labels = _inputs(5, 7, 16, "instance", torch.float32)
    with FakeTensorMode() as mode:
        args = [mode.from_tensor(x) for x in (*inputs.values(), labels)]
        loss, *saved = torch.ops.vlmkd.contrastive_forward_triton(*args, False)
        grads = torch.ops.vlmkd.contrastive_backward_triton(loss, *args, False, saved)
    assert loss.shape == () and [g.shape for g in grads] == [(5, 16), (16, 7), (16,), ()]
