"""vlmkd_contrastive_loss on every fused backend matches contrastive_ref: loss and all four gradients, float64
and float32, autocast inputs, extreme scales, gradcheck, torch.compile; plus dispatch rules, input errors and
the loss module. Backends that cannot run here are skipped with the reason the dispatcher gives. The
reference itself is checked against loops over the textbook formula in tests/test_losses.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlmkd import backends
from vlmkd.errors import InputError
from vlmkd.losses import VlmkdContrastiveLoss
from vlmkd.ops import contrastive_ref, vlmkd_contrastive_loss
from vlmkd.ops.contrastive import BACKENDS, REFERENCE, resolve_backend
from vlmkd.ops.contrastive_reference import MAX_LOGIT_SCALE

GRAD_LOSS = -1.7  # non-unit upstream gradient everywhere
INIT_LOGIT_SCALE = math.log(1 / 0.07)

# (B, Dt, Dv): single rows, sizes off every power of two, the paper's widths.
SHAPES_FP64 = [(1, 37, 65), (3, 37, 65), (41, 384, 65), (41, 37, 512), (257, 37, 65)]
SHAPES_FP32 = [(3, 384, 512), (41, 37, 65), (257, 384, 512)]
POSITIVES = ["instance", "class"]


def _device(backend: str) -> str:
    """The device a backend is tested on: cpp on CPU, cuda on GPU, the others on the GPU when present."""
    if backend == "cpp" or not torch.cuda.is_available():
        return "cpu"
    return "cuda"


# The fused backends (the reference is what they are compared with). Triton on the CPU interpreter takes seconds
# per case: slow, but still part of the suite.
FUSED_BACKENDS = [name for name in BACKENDS.names() if name != REFERENCE]
_BACKEND_PARAMS = [
    pytest.param(name, marks=pytest.mark.slow) if name == "triton" and not torch.cuda.is_available() else name
    for name in FUSED_BACKENDS
]


@pytest.fixture(params=_BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> str:
    try:
        resolve_backend(_device(request.param), request.param)
    except InputError as error:
        pytest.skip(str(error))
    return request.param


def _labels(batch: int, generator: torch.Generator) -> torch.Tensor:
    """A few shared classes, some singletons (labels >= 1000), and large label values."""
    labels = torch.randint(0, max(1, batch // 4), (batch,), generator=generator) * 7_000_000_000
    labels[::5] = 1000 + torch.arange(len(labels[::5]))
    return labels


def _inputs(batch: int, dt: int, dv: int, *, seed: int = 0, logit_scale: float = INIT_LOGIT_SCALE) -> dict:
    """float64 CPU inputs: v, t, weight, bias, logit_scale, labels."""
    generator = torch.Generator().manual_seed(seed * 7919 + batch * 1000 + dt + dv)
    return dict(
        v=torch.randn(batch, dv, generator=generator, dtype=torch.float64),
        t=torch.randn(batch, dt, generator=generator, dtype=torch.float64),
        weight=torch.randn(dv, dt, generator=generator, dtype=torch.float64) / math.sqrt(dt),
        bias=0.1 * torch.randn(dv, generator=generator, dtype=torch.float64),
        logit_scale=torch.tensor(logit_scale, dtype=torch.float64),
        labels=_labels(batch, generator),
    )


def _to(inputs: dict, device: str, dtype: torch.dtype | None = None) -> dict:
    """Copies on `device` (floats cast to `dtype`), the learnable ones as fresh leaves."""
    out = {}
    for name, x in inputs.items():
        x = x.detach().to(device=device, dtype=dtype if x.is_floating_point() and dtype else x.dtype)
        out[name] = x.requires_grad_() if name in ("v", "weight", "bias", "logit_scale") else x
    return out


def _loss_and_grads(fn, inputs: dict, positives: str) -> list[torch.Tensor]:
    """[loss, grad_v, grad_weight, grad_bias, grad_logit_scale] for an upstream gradient of GRAD_LOSS."""
    loss = fn(**inputs, positives=positives)
    leaves = [inputs[name] for name in ("v", "weight", "bias", "logit_scale")]
    return [loss.detach(), *torch.autograd.grad(loss, leaves, torch.tensor(GRAD_LOSS, dtype=loss.dtype))]


def _reference(inputs: dict, positives: str) -> list[torch.Tensor]:
    return _loss_and_grads(contrastive_ref, _to(inputs, "cpu", torch.float64), positives)


def _fused(inputs: dict, positives: str, backend: str, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    def fn(**kwargs):
        return vlmkd_contrastive_loss(**kwargs, backend=backend)

    return _loss_and_grads(fn, _to(inputs, _device(backend), dtype), positives)


def _assert_matches(got: list[torch.Tensor], expected: list[torch.Tensor], rtol: float) -> None:
    """Each result within rtol of the reference, relative to the largest magnitude of that reference."""
    names = ("loss", "grad_v", "grad_weight", "grad_bias", "grad_logit_scale")
    for name, a, b in zip(names, got, expected, strict=True):
        assert a.shape == b.shape, name
        error = (a.double().cpu() - b).abs().max().item()
        assert error <= rtol * max(b.abs().max().item(), 1e-3), f"{name}: error {error:.3g}"


@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("shape", SHAPES_FP64, ids=str)
def test_float64_matches_reference(backend: str, shape: tuple[int, int, int], positives: str) -> None:
    inputs = _inputs(*shape)
    _assert_matches(_fused(inputs, positives, backend), _reference(inputs, positives), rtol=1e-10)


@pytest.mark.parametrize("positives", POSITIVES)
@pytest.mark.parametrize("shape", SHAPES_FP32, ids=str)
def test_float32_matches_float64_reference(backend: str, shape: tuple[int, int, int], positives: str) -> None:
    inputs = _inputs(*shape)
    _assert_matches(_fused(inputs, positives, backend, torch.float32), _reference(inputs, positives), rtol=2e-4)


@pytest.mark.parametrize("positives", POSITIVES)
def test_gradcheck_small(backend: str, positives: str) -> None:
    inputs = _to(_inputs(3, 5, 4, logit_scale=1.0), _device(backend))
    t, labels = inputs["t"], inputs["labels"]

    def fn(v, weight, bias, logit_scale):
        return vlmkd_contrastive_loss(v, t, weight, bias, logit_scale, labels, positives, backend=backend)

    assert torch.autograd.gradcheck(fn, (inputs["v"], inputs["weight"], inputs["bias"], inputs["logit_scale"]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("positives", POSITIVES)
def test_scale_100_saturated_logits_stay_finite_and_exact(backend: str, positives: str, dtype: torch.dtype) -> None:
    # Text features aligned with image features (+/-), so logits reach +/-100; positives of class mode sit
    # 200 below the row maximum, far beyond float32's exp range, which needs a separate log-sum-exp.
    inputs = _inputs(8, 16, 16, logit_scale=MAX_LOGIT_SCALE)
    inputs["weight"] = torch.eye(16, dtype=torch.float64)
    inputs["bias"] = torch.zeros(16, dtype=torch.float64)
    inputs["v"] = inputs["t"] * torch.tensor([1.0, -1.0]).repeat(4)[:, None]
    inputs["labels"] = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    got = _fused(inputs, positives, backend, dtype)
    assert all(torch.isfinite(x).all() for x in got)
    _assert_matches(got, _reference(inputs, positives), rtol=1e-10 if dtype == torch.float64 else 2e-4)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_logit_scale_at_or_above_the_clamp_gets_zero_gradient(backend: str, offset: float) -> None:
    inputs = _inputs(41, 37, 65, logit_scale=MAX_LOGIT_SCALE + offset)
    got = _fused(inputs, "class", backend)
    assert got[-1].item() == 0.0  # as torch.clamp's gradient, zero at the bound too
    _assert_matches(got, _reference(inputs, "class"), rtol=1e-10)


def test_one_class_for_all_gives_zero_loss_and_gradients(backend: str) -> None:
    inputs = _inputs(41, 37, 65)
    inputs["labels"] = torch.full((41,), 3)
    for x in _fused(inputs, "class", backend):
        assert x.abs().max().item() < 1e-12


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_autocast_error_at_most_twice_pytorchs_own(backend: str, low: torch.dtype) -> None:
    # Inputs as autocast hands them over: image features and text features in low precision, the adaptor
    # and temperature float32. Truth: float64 math on exactly those values.
    device = _device(backend)
    inputs = _inputs(41, 384, 512)
    for name in ("v", "t"):
        inputs[name] = inputs[name].to(low)
    for name in ("weight", "bias", "logit_scale"):
        inputs[name] = inputs[name].float()
    truth = _reference(inputs, "class")

    def under_autocast(fn):
        def run(**kwargs):
            with torch.autocast(device, dtype=low):
                return fn(**kwargs)

        return run

    pytorch = _loss_and_grads(under_autocast(contrastive_ref), _to(inputs, device), "class")
    ours = _loss_and_grads(
        under_autocast(lambda **kw: vlmkd_contrastive_loss(**kw, backend=backend)), _to(inputs, device), "class"
    )
    assert ours[0].dtype == torch.float32 and ours[1].dtype == low  # math in fp32, v's gradient in v's dtype
    for name, a, b, c in zip(("loss", "v", "weight", "bias", "logit_scale"), ours, pytorch, truth, strict=True):
        ours_error = (a.double().cpu() - c).abs().max().item()
        pytorch_error = (b.double().cpu() - c).abs().max().item()
        floor = 1e-6 * c.abs().max().item()  # float32 rounding, where PyTorch happens to be exact
        assert ours_error <= 2 * pytorch_error + floor, f"{name}: {ours_error:.3g} vs PyTorch {pytorch_error:.3g}"


def test_fused_backends_keep_at_most_one_batch_squared_buffer_for_backward(backend: str) -> None:
    batch = 257
    inputs = _to(_inputs(batch, 37, 65), _device(backend))
    big = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        if x.numel() >= batch * batch:
            big.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        vlmkd_contrastive_loss(**inputs, positives="class", backend=backend)
    assert len(big) <= 1, big


@pytest.mark.slow
def test_torch_compile_fullgraph_over_the_cpp_path() -> None:
    try:
        resolve_backend("cpu", "cpp")
    except InputError as error:
        pytest.skip(str(error))
    inputs = _inputs(41, 37, 65)

    def fn(**kwargs):
        return vlmkd_contrastive_loss(**kwargs, backend="cpp")

    eager = _loss_and_grads(fn, _to(inputs, "cpu", torch.float32), "class")
    compiled = _loss_and_grads(torch.compile(fn, fullgraph=True), _to(inputs, "cpu", torch.float32), "class")
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.requires_cuda
@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_torch_compile_fullgraph_over_the_gpu_paths(name: str) -> None:
    try:
        resolve_backend("cuda", name)
    except InputError as error:
        pytest.skip(str(error))
    inputs = _inputs(257, 384, 512)

    def fn(**kwargs):
        return vlmkd_contrastive_loss(**kwargs, backend=name)

    compiled = _loss_and_grads(torch.compile(fn, fullgraph=True), _to(inputs, "cuda", torch.float64), "class")
    _assert_matches(compiled, _reference(inputs, "class"), rtol=1e-10)


# ---------------------------------------------------------------------------------------------------------
# Dispatch


def test_default_backend_on_cpu_is_cpp_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLMKD_BACKEND", raising=False)
    assert resolve_backend("cpu") == "cpp"


def test_environment_variable_picks_the_backend_and_the_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMKD_BACKEND", "reference")
    assert resolve_backend("cpu") == "reference"
    assert resolve_backend("cpu", "cpp") == "cpp"
    # The reference path is plain autograd: t gets a gradient there, proof that it was the one used.
    inputs = _to(_inputs(3, 5, 4), "cpu")
    inputs["t"].requires_grad_()
    vlmkd_contrastive_loss(**inputs).backward()
    assert inputs["t"].grad is not None


def test_unknown_backend_names_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match=r"backend must be one of reference, cpp, triton, cuda, got 'fast'"):
        resolve_backend("cpu", "fast")
    monkeypatch.setenv("VLMKD_BACKEND", "fast")
    with pytest.raises(InputError, match=r"VLMKD_BACKEND must be one of"):
        resolve_backend("cpu")


def test_backend_has_one_name_and_a_near_miss_gets_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLMKD_BACKEND", raising=False)
    assert list(backends()) == list(BACKENDS)  # `vlmkd.backends()` and the dispatcher know the same names
    with pytest.raises(InputError, match=r"got 'ref' \(did you mean 'reference'\?\)$"):
        resolve_backend("cpu", "ref")
    with pytest.raises(InputError, match=r"got 'cuda_' \(did you mean 'cuda'\?\)$"):
        VlmkdContrastiveLoss(5, 4, backend="cuda_")(torch.zeros(2, 4), torch.zeros(2, 5))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_unusable_backend_says_why() -> None:
    with pytest.raises(InputError, match=r"backend='cuda' cannot run here: .+"):
        resolve_backend("cpu", "cuda")
    with pytest.raises(InputError, match=r"backend='cpp' cannot run here: it runs on CPU tensors, got cuda"):
        resolve_backend("cuda", "cpp")


def test_triton_on_cpu_tensors_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(InputError, match=r"backend='triton' cannot run here: .*TRITON_INTERPRET=1"):
        resolve_backend("cpu", "triton")


# ---------------------------------------------------------------------------------------------------------
# Input errors name the argument


def _error_cases() -> list[tuple[str, dict, str]]:
    return [
        (
            "weight transposed",
            {"weight": torch.zeros(384, 512)},
            r"weight must be \(Dv, Dt\) = \(512, 384\), got \(384, 512\)",
        ),
        ("bias too short", {"bias": torch.zeros(384)}, r"bias must be \(Dv,\) = \(512,\), got \(384,\)"),
        ("t rows", {"t": torch.zeros(7, 384)}, r"t must be \(B, Dt\) with B = 8 like v, got \(7, 384\)"),
        ("v rank", {"v": torch.zeros(512)}, r"v must be \(B, Dv\) with B >= 1, got \(512,\)"),
        ("empty batch", {"v": torch.zeros(0, 512), "t": torch.zeros(0, 384)}, r"v must be .* got \(0, 512\)"),
        (
            "integer t",
            {"t": torch.zeros(8, 384, dtype=torch.int64)},
            r"t must be a floating-point tensor, got \(8, 384\) int64",
        ),
        ("logit_scale vector", {"logit_scale": torch.zeros(2)}, r"logit_scale must hold one value, got shape \(2,\)"),
        ("device", {"weight": torch.zeros(512, 384, device="meta")}, r"weight is on meta but v is on cpu"),
        ("labels missing", {"labels": None}, r"labels are required when positives='class'"),
        ("labels shape", {"labels": torch.zeros(9, dtype=torch.int64)}, r"labels must be \(B,\) = \(8,\), got \(9,\)"),
        ("labels float", {"labels": torch.zeros(8)}, r"labels must be an integer tensor, got \(8,\) float32"),
        ("positives", {"positives": "pairs"}, r"positives must be 'instance' or 'class', got 'pairs'"),
    ]


@pytest.mark.parametrize(
    ("change", "message"), [case[1:] for case in _error_cases()], ids=[c[0] for c in _error_cases()]
)
def test_wrong_inputs_raise_input_error_naming_the_argument(change: dict, message: str) -> None:
    kwargs = dict(
        v=torch.zeros(8, 512),
        t=torch.zeros(8, 384),
        weight=torch.zeros(512, 384),
        bias=torch.zeros(512),
        logit_scale=torch.tensor(1.0),
        labels=torch.zeros(8, dtype=torch.int64),
        positives="class",
    )
    with pytest.raises(InputError, match=message):
        vlmkd_contrastive_loss(**{**kwargs, **change})


def test_fused_backend_refuses_a_text_input_that_requires_grad() -> None:
    inputs = _to(_inputs(3, 5, 4), "cpu")
    inputs["t"].requires_grad_()
    with pytest.raises(InputError, match=r"t requires grad, but backend 'cpp' treats it as frozen data"):
        vlmkd_contrastive_loss(**inputs, backend="cpp")


def test_bias_none_and_float_logit_scale_equal_zero_bias_and_tensor() -> None:
    inputs = _inputs(41, 37, 65)
    with_none = vlmkd_contrastive_loss(inputs["v"], inputs["t"], inputs["weight"], None, 2.5)
    expected = contrastive_ref(inputs["v"], inputs["t"], inputs["weight"], None, torch.tensor(2.5, dtype=torch.float64))
    torch.testing.assert_close(with_none, expected, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------------------
# The loss module


# The module as the bare op: raw image features, an adaptor bias and a learnt temperature (not the defaults).
BARE = {"image_center": False, "image_projection": False, "adaptor_bias": True}


def test_module_with_a_learnt_temperature_and_adaptor_bias_trains_both() -> None:
    module = VlmkdContrastiveLoss(37, 65, temperature=0.07, learn_temperature=True, **BARE).double()
    assert module.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert {name for name, _ in module.named_parameters()} == {"adaptor.weight", "adaptor.bias", "logit_scale"}
    inputs = _inputs(41, 37, 65)
    loss = module(inputs["v"], inputs["t"])
    expected = contrastive_ref(inputs["v"], inputs["t"], module.adaptor.weight, module.adaptor.bias, module.logit_scale)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    loss.backward()
    assert all(p.grad is not None for p in module.parameters())


def test_module_with_fixed_temperature_keeps_it_as_a_buffer() -> None:
    module = VlmkdContrastiveLoss(37, 65, learn_temperature=False, temperature=0.1)
    assert "logit_scale" in dict(module.named_buffers())
    assert "logit_scale" not in dict(module.named_parameters())
    assert module.logit_scale.item() == pytest.approx(math.log(10.0))


def test_module_class_positives_and_mlp_adaptor_train_every_layer() -> None:
    module = VlmkdContrastiveLoss(37, 65, positives="class", adaptor_hidden=48, **BARE).double()
    inputs = _inputs(41, 37, 65)
    loss = module(inputs["v"], inputs["t"], inputs["labels"])
    hidden = module.adaptor[:-1](inputs["t"])
    last = module.adaptor[-1]
    expected = contrastive_ref(
        inputs["v"], hidden, last.weight, last.bias, module.logit_scale, inputs["labels"], "class"
    )
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    loss.backward()
    assert module.adaptor[0].weight.grad is not None and module.adaptor[0].weight.grad.abs().sum() > 0
    with pytest.raises(InputError, match="labels are required"):
        module(inputs["v"], inputs["t"])


# ---------------------------------------------------------------------------------------------------------
# The C++ kernels themselves


@pytest.fixture
def native():
    try:
        resolve_backend("cpu", "cpp")
    except InputError as error:
        pytest.skip(str(error))
    from vlmkd import _C

    return _C


@pytest.mark.parametrize("threads", [1, 3])
def test_cpp_result_does_not_depend_on_the_thread_count(native, threads: int) -> None:
    inputs = _inputs(257, 37, 65)
    default = _fused(inputs, "class", "cpp")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)  # torch and vlmkd._C share one OpenMP runtime
        assert native.max_threads() == threads
        other = _fused(inputs, "class", "cpp")
    finally:
        torch.set_num_threads(before)
    _assert_matches(other, default, rtol=1e-12)


def test_cpp_boundary_checks_name_the_argument(native) -> None:
    s = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"s must be a C-contiguous float32 \(3, 3\) array, got float32 \(3, 4\)"):
        native.contrastive_grad_(np.zeros((3, 4), np.float32), np.arange(3), False)
    with pytest.raises(ValueError, match=r"labels must be a C-contiguous int64 \(3,\) array, got int32 \(3,\)"):
        native.contrastive_grad_(s, np.arange(3, dtype=np.int32), False)
    with pytest.raises(ValueError, match=r"s must be float32 or float64, got float16"):
        native.contrastive_grad_(s.astype(np.float16), np.arange(3), False)
    with pytest.raises(
        ValueError, match=r"out must be a C-contiguous float32 \(3, 3\) array, got float32 \(3, 3\) \(strided\)"
    ):
        native.normalize_rows(s, np.zeros((3, 3), np.float32).T, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"norms must be a C-contiguous float64 \(3,\) array, got float32 \(3,\)"):
        native.normalize_rows(s.astype(np.float64), s.astype(np.float64), np.zeros(3, np.float32))
