"""docs/extending.md's recipes, run as written: one new file plus one registration line each makes a new backbone,
engine, task loss or contrastive backend work through the CLI choices, the Python API and the errors.

The blocks come from the Markdown (`tests/_markdown.py`): a new file is written into its package (this test puts a
scratch folder on the package's `__path__`), a block for an existing module runs among that module's names."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _markdown import CodeBlock, python_blocks

import vlmkd
from vlmkd.backends import BACKENDS
from vlmkd.caption.engines import ENGINES
from vlmkd.losses.task import TASK_LOSSES, TaskLoss
from vlmkd.models import BACKBONES
from vlmkd.ops import contrastive_ref, vlmkd_contrastive_loss
from vlmkd.train import load_classifier

RECIPES = {block.file: block for block in python_blocks("docs/extending.md")}


@pytest.fixture
def follow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`follow(file)` does what docs/extending.md's block for `file` says; every registry, package path and new
    module is restored after the test."""
    for registry in (BACKBONES, ENGINES, TASK_LOSSES, BACKENDS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_resolved", dict(registry._resolved))

    def follow(file: str) -> CodeBlock:
        block = RECIPES[file]
        assert block.module is not None
        if block.adds_to_existing_file:  # a registration line, among the names of the module it goes in
            exec(compile(block.text, block.source, "exec"), dict(vars(importlib.import_module(block.module))))
            return block
        package, _, name = block.module.rpartition(".")
        folder = tmp_path / package
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.py").write_text(block.text)
        parent = importlib.import_module(package)
        monkeypatch.setattr(parent, "__path__", [*parent.__path__, str(folder)])
        monkeypatch.delitem(sys.modules, block.module, raising=False)  # imported during the test, dropped after
        return block

    return follow


def test_a_new_backbone_with_an_unusual_stride_trains_through_the_cli_and_evaluates(follow, tmp_path, tiny_dataset):
    from vlmkd.cli import main

    follow("vlmkd/models/mynet.py")
    follow("vlmkd/models/zoo.py")
    run = tmp_path / "run"
    argv = ["train", "--train", str(tiny_dataset.source), "--output", str(run), "--arch", "mynet", "--epochs", "1",
            "--batch-size", "6", "--image-size", "12", "--num-workers", "0", "--threads", "1",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert vlmkd.TrainConfig.from_yaml(run / "config.yaml").arch == "mynet"
    model, meta = load_classifier(run)
    assert meta["spec"]["arch"] == "mynet" and model.feature_dim == 64  # rebuilt by name from the registry
    result = vlmkd.evaluate(checkpoint=run, dataset=tiny_dataset.source, plots=False, num_workers=0)
    assert result.top1["all"] is not None
    # the stride the registration line states is the config's check, with no table elsewhere to update
    assert vlmkd.TrainConfig(arch="mynet", image_size=6).image_size == 6
    with pytest.raises(vlmkd.InputError, match=r"image_size 5 is smaller than mynet's stride of 6 pixels"):
        vlmkd.TrainConfig(arch="mynet", image_size=5)
    with pytest.raises(vlmkd.InputError, match=r"got 'mynt' \(did you mean 'mynet'\?\)"):
        vlmkd.TrainConfig(arch="mynt")


def test_a_new_engine_writes_a_caption_store(follow, tmp_path, tiny_dataset) -> None:
    follow("vlmkd/caption/engines/echo.py")
    follow("vlmkd/caption/engines/__init__.py")
    report = vlmkd.caption(dataset=tiny_dataset, engine="echo", model="echo-v1", out=tmp_path / "s", progress=False)
    table = report.store.read_table().to_pydict()
    assert report.store.manifest["engine"] == "echo" and report.store.manifest["model_id"] == "echo-v1"
    assert len(table["caption"]) == 5 * len(tiny_dataset)
    assert table["caption"][0] == "Describe this image in detail. (32x32)"  # the default set's G prompt


def test_a_new_task_loss_is_a_registered_offset(follow) -> None:
    follow("vlmkd/losses/task.py")
    counts = torch.tensor([100.0, 10.0, 1.0])
    logits, labels = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = F.cross_entropy(logits + 0.5 * counts.log(), labels)
    torch.testing.assert_close(TaskLoss("sqrt_balanced", counts)(logits, labels), expected)
    assert vlmkd.TrainConfig(task_loss="sqrt_balanced").task_loss == "sqrt_balanced"


def test_a_new_contrastive_backend_matches_the_reference(follow, monkeypatch: pytest.MonkeyPatch) -> None:
    follow("vlmkd/ops/contrastive_mine.py")
    follow("vlmkd/backends.py")
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
