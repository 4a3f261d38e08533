"""docs/extending.md's recipes, followed step by step: one new file plus one registration line each makes a new
backbone, engine, task loss or contrastive backend work through the CLI choices, the Python API and the errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vlmkd
from vlmkd.backends import BACKENDS, BackendStatus, ContrastiveBackend, runs_on
from vlmkd.caption.engines import ENGINES
from vlmkd.losses.task import TASK_LOSSES, TaskLoss
from vlmkd.models import BACKBONES
from vlmkd.ops import contrastive_ref, vlmkd_contrastive_loss
from vlmkd.train import load_classifier

BACKBONE_FILE = """
from torch import nn

from vlmkd.models.zoo import ModelSpec


def build_mynet(spec: ModelSpec) -> tuple[nn.Module, int]:
    trunk = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return trunk, 64
"""

ENGINE_FILE = """
from vlmkd.caption.engines.base import CaptionEngine


class EchoEngine(CaptionEngine):
    name = "echo"

    def __init__(self, model, settings, *, device="cpu", trust_remote_code=False):
        self.model_id, self.settings = str(model), settings

    def caption(self, requests):
        return [[f"{prompt} ({r.image.width}x{r.image.height})" for prompt in r.prompts] for r in requests]
"""

# A minimal backend: the forward op computes the loss and, for an upstream gradient of 1, the four gradients
# (torch.func.vjp of the reference); the backward op scales them by the upstream gradient.
BACKEND_FILE = """
import torch

from vlmkd.ops.contrastive_backend import register_backend_ops
from vlmkd.ops.contrastive_reference import contrastive_ref


def forward(v, t, weight, bias, logit_scale, labels, class_positives):
    positives = "class" if class_positives else "instance"
    loss, vjp = torch.func.vjp(lambda *x: contrastive_ref(x[0], t, *x[1:], labels, positives), v, weight, bias,
                               logit_scale)
    return [loss, *vjp(torch.ones_like(loss))]


def backward(grad_loss, v, t, weight, bias, logit_scale, labels, class_positives, saved):
    return [grad_loss * grad for grad in saved]


def fake_forward(v, t, weight, bias, logit_scale, labels, class_positives):
    return [v.new_empty(()), *(torch.empty_like(x) for x in (v, weight, bias, logit_scale))]


register_backend_ops("mine", forward, backward, fake_forward, device_type="cpu")
"""


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path for the new files; every registry is restored after the test."""
    for registry in (BACKBONES, ENGINES, TASK_LOSSES, BACKENDS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_resolved", dict(registry._resolved))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    (tmp_path / "src").mkdir()
    return tmp_path


def _new_file(scratch: Path, module: str, text: str) -> None:
    (scratch / "src" / f"{module}.py").write_text(textwrap.dedent(text))


def test_a_new_backbone_trains_through_the_cli_and_evaluates(scratch: Path, tiny_dataset) -> None:
    from vlmkd.cli import main

    _new_file(scratch, "ext_mynet", BACKBONE_FILE)
    BACKBONES.register("mynet", "ext_mynet:build_mynet", "a one-layer CNN")
    run = scratch / "run"
    argv = ["train", "--train", str(tiny_dataset.source), "--output", str(run), "--arch", "mynet", "--epochs", "1",
            "--batch-size", "6", "--image-size", "8", "--num-workers", "0", "--threads", "1",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert vlmkd.TrainConfig.from_yaml(run / "config.yaml").arch == "mynet"
    model, meta = load_classifier(run)
    assert meta["spec"]["arch"] == "mynet" and model.feature_dim == 64  # rebuilt by name from the registry
    result = vlmkd.evaluate(checkpoint=run, dataset=tiny_dataset.source, plots=False, num_workers=0)
    assert result.top1["all"] is not None
    with pytest.raises(vlmkd.InputError, match=r"got 'mynt' \(did you mean 'mynet'\?\)"):
        vlmkd.TrainConfig(arch="mynt")


def test_a_new_engine_writes_a_caption_store(scratch: Path, tiny_dataset) -> None:
    _new_file(scratch, "ext_echo", ENGINE_FILE)
    ENGINES.register("echo", "ext_echo:EchoEngine", "prompt and image size, for tests")
    report = vlmkd.caption(dataset=tiny_dataset, engine="echo", model="echo-v1", out=scratch / "s", progress=False)
    table = report.store.read_table().to_pydict()
    assert report.store.manifest["engine"] == "echo" and report.store.manifest["model_id"] == "echo-v1"
    assert len(table["caption"]) == 5 * len(tiny_dataset)
    assert table["caption"][0] == "Describe this image in detail. (32x32)"  # the default set's G prompt


def test_a_new_task_loss_is_a_registered_offset(scratch: Path) -> None:
    TASK_LOSSES.register("sqrt_balanced", lambda counts, tau: 0.5 * counts.log(), "logits + 0.5 log n_j")
    counts = torch.tensor([100.0, 10.0, 1.0])
    logits, labels = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = F.cross_entropy(logits + 0.5 * counts.log(), labels)
    torch.testing.assert_close(TaskLoss("sqrt_balanced", counts)(logits, labels), expected)
    assert vlmkd.TrainConfig(task_loss="sqrt_balanced").task_loss == "sqrt_balanced"


def test_a_new_contrastive_backend_matches_the_reference(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _new_file(scratch, "ext_backend", BACKEND_FILE)
    BACKENDS.register(
        "mine",
        ContrastiveBackend(
            status=lambda: BackendStatus("mine", True, True, "my kernels"),
            ops_module="ext_backend",
            device_problem=runs_on("cpu", "CPU"),
        ),
        "my fused kernels, CPU tensors",
    )
    assert vlmkd.backends()["mine"].usable
    generator = torch.Generator().manual_seed(1)
    v, t = torch.randn(9, 6, generator=generator, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    weight, bias = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    scale, labels = torch.tensor(2.0, dtype=torch.float64), torch.tensor([0, 1, 0, 2, 1, 0, 3, 3, 2])
    results = []
    for backend in ("reference", "mine"):
        leaves = [x.clone().requires_grad_() for x in (v, weight, bias, scale)]
        loss = vlmkd_contrastive_loss(leaves[0], t, *leaves[1:], labels, "class", backend=backend)
        (-1.7 * loss).backward()  # a non-unit upstream gradient
        results.append([loss.detach(), *(leaf.grad for leaf in leaves)])
    for ours, reference in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    monkeypatch.setenv("VLMKD_BACKEND", "mine")  # the environment variable knows the new name too
    expected = contrastive_ref(v, t, weight, bias, scale, None, "instance")
    torch.testing.assert_close(vlmkd_contrastive_loss(v, t, weight, bias, scale), expected, rtol=1e-12, atol=1e-12)
    assert vlmkd.TrainConfig(contrastive_backend="mine").contrastive_backend == "mine"
