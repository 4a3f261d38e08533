"""`--channels-last` and `--compile`: the same losses, weights and predictions as eager, the same checkpoints.

The compile tests run torch.compile through dynamo and AOTAutograd with the `aot_eager` backend: the same graph
capture, functionalisation and in-place module compile the default `inductor` backend gets, without its C++
code generation (over two minutes per model on a busy 2-core machine). Inductor itself is exercised, and
timed, by benchmarks/bench_train_step.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _cases import tiny_config
from safetensors.torch import load_file

from vlmkd.evaluate.features import load_eval_features
from vlmkd.evaluate.run import evaluate_checkpoint
from vlmkd.models import ModelSpec, build_model
from vlmkd.models import speed as speed_module
from vlmkd.models.speed import apply_speed_settings, batch_layout
from vlmkd.train.config import TrainConfig, read_config_file, resolve_config
from vlmkd.train.trainer import train


def _step_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "step"]


@pytest.fixture
def aot_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed_module, "COMPILE_BACKEND", "aot_eager")


def test_channels_last_puts_weights_and_batches_in_nhwc_and_changes_no_output() -> None:
    torch.manual_seed(0)
    eager = build_model(ModelSpec("resnet32", 3, 0.25)).eval()
    fast = build_model(ModelSpec("resnet32", 3, 0.25)).eval()
    fast.load_state_dict(eager.state_dict())
    apply_speed_settings(fast, channels_last=True)
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    images = torch.randn(4, 3, 16, 16)
    assert batch_layout(images, True).is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(fast(batch_layout(images, True)), eager(images), atol=1e-5)


@pytest.mark.slow
def test_channels_last_and_compile_train_to_the_same_losses_and_weights_as_eager(tiny_dataset, tmp_path, aot_eager):
    """Two steps each (batch 6 of 12 images): step 1 compares forwards, step 2 a backward and an SGD update."""
    from torch._dynamo.utils import counters

    runs = {}
    for name, flags in {"eager": {}, "channels_last": {"channels_last": True}, "compile": {"compile": True}}.items():
        runs[name] = tmp_path / name
        counters.clear()
        train(tiny_config(tiny_dataset, runs[name], batch_size=6, epochs=1, image_size=16, **flags))
        assert (counters["stats"]["unique_graphs"] > 0) == (name == "compile"), name  # the backbone was compiled
    eager_losses = _step_losses(runs["eager"])
    assert len(eager_losses) == 2
    eager_weights = load_file(str(runs["eager"] / "model.safetensors"))
    for name in ("channels_last", "compile"):
        assert _step_losses(runs[name]) == pytest.approx(eager_losses, rel=1e-4), name
        weights = load_file(str(runs[name] / "model.safetensors"))
        assert weights.keys() == eager_weights.keys(), name  # checkpoints do not depend on the speed settings
        for key, value in weights.items():
            assert value.is_contiguous(), (name, key)
            assert torch.allclose(value, eager_weights[key], atol=1e-4), (name, key)


@pytest.mark.slow
def test_eval_with_channels_last_and_compile_gives_the_same_predictions(tiny_dataset, tmp_path, aot_eager) -> None:
    run = tmp_path / "run"
    train(tiny_config(tiny_dataset, run, batch_size=6, epochs=1, image_size=16))
    kwargs = {"plots": False, "num_workers": 0, "save_features": True}
    evaluate_checkpoint(run, tiny_dataset.source, tmp_path / "eager", **kwargs)
    evaluate_checkpoint(run, tiny_dataset.source, tmp_path / "fast", channels_last=True, compile=True, **kwargs)
    eager, fast = load_eval_features(tmp_path / "eager"), load_eval_features(tmp_path / "fast")
    assert np.allclose(fast.image_features, eager.image_features, atol=1e-5)
    assert np.array_equal(fast.predicted, eager.predicted)


def test_the_flags_round_trip_through_the_config(tmp_path, capsys) -> None:
    from vlmkd.cli import main as vlmkd_main

    config = TrainConfig(train=Path("train.txt"), channels_last=True, compile=True)
    config.to_yaml(tmp_path / "config.yaml")
    again = resolve_config(read_config_file(tmp_path / "config.yaml"), {})
    assert again.channels_last is True and again.compile is True and again == config.validate()
    assert TrainConfig().channels_last is False and TrainConfig().compile is False
    assert vlmkd_main(["train", "--train", "t.txt", "--channels-last", "--compile", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "channels_last: true" in printed and "compile: true" in printed
