"""Optimizer parameter groups (weight decay by parameter kind, the VLM-KD parameters' own learning rates), the
learning-rate schedule and the VLM-KD weight's schedule."""

from __future__ import annotations

import math

import pytest
import torch

from vlmkd.losses import VlmkdContrastiveLoss
from vlmkd.train.schedule import build_optimizer, lr_at, vlmkd_weight_at


def _group_of(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter) -> dict:
    (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return group


def test_own_learning_rates_get_their_own_groups_and_keep_the_weight_decay_split() -> None:
    model = torch.nn.Linear(4, 3)
    loss = VlmkdContrastiveLoss(5, 3, learn_temperature=True, adaptor_bias=True)
    optimizer = build_optimizer(
        [model, loss],
        "sgd",
        lr=0.1,
        weight_decay=5e-4,
        own_lr=[([loss.logit_scale], 0.01), ([loss.adaptor.weight], 1.0)],
    )
    expected = {
        model.weight: (0.1, 5e-4),
        model.bias: (0.1, 0.0),
        loss.logit_scale: (0.01, 0.0),
        loss.adaptor.weight: (1.0, 5e-4),
        loss.adaptor.bias: (0.1, 0.0),
    }
    for param, (rate, decay) in expected.items():
        group = _group_of(optimizer, param)
        assert (group["base_lr"], group["weight_decay"]) == (rate, decay)
    seen = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(seen) == len({id(p) for p in seen}) == len(list(model.parameters())) + len(list(loss.parameters()))


def test_a_group_at_its_own_rate_moves_by_its_rate() -> None:
    """One SGD step without momentum moves each parameter by -lr * grad with its group's rate."""
    scale = torch.nn.Parameter(torch.tensor(2.0))
    other = torch.nn.Parameter(torch.tensor(3.0))
    holder = torch.nn.Module()
    holder.scale, holder.other = scale, other
    optimizer = build_optimizer([holder], "sgd", lr=0.5, weight_decay=0.0, momentum=0.0, own_lr=[([scale], 0.01)])
    (scale * 1.0 + other * 1.0).backward()
    optimizer.step()
    assert scale.item() == pytest.approx(2.0 - 0.01) and other.item() == pytest.approx(3.0 - 0.5)


def test_schedule_scales_any_base_rate() -> None:
    assert lr_at(0, 100, 10, 0.01) == pytest.approx(0.001)
    assert lr_at(55, 100, 10, 0.01) == pytest.approx(0.005)


# ---------------------------------------------------------------------------------------------------------
# The VLM-KD weight's schedule


def test_vlmkd_weight_ramps_decays_and_switches_off_as_configured() -> None:
    total, weight = 100, 2.0
    constant = [vlmkd_weight_at(step, total, weight) for step in range(total)]
    assert constant == [weight] * total
    ramp = [vlmkd_weight_at(step, total, weight, warmup_steps=10) for step in range(total)]
    assert ramp[:10] == pytest.approx([weight * (k + 1) / 10 for k in range(10)]) and ramp[10:] == [weight] * 90
    off = [vlmkd_weight_at(step, total, weight, off_steps=25) for step in range(total)]
    assert off[:75] == [weight] * 75 and off[75:] == [0.0] * 25
    cosine = [
        vlmkd_weight_at(step, total, weight, warmup_steps=10, off_steps=20, decay="cosine") for step in range(total)
    ]
    assert cosine[9] == weight and cosine[10] == weight and cosine[80:] == [0.0] * 20
    assert cosine[45] == pytest.approx(weight * 0.5 * (1 + math.cos(math.pi * 35 / 70)))
    assert all(a >= b for a, b in zip(cosine[10:80], cosine[11:80], strict=False))  # never rises again
    linear = [vlmkd_weight_at(step, total, weight, decay="linear") for step in range(total)]
    assert linear[0] == weight and linear[50] == pytest.approx(weight / 2) and linear[99] == pytest.approx(weight / 100)


def test_training_logs_the_scheduled_weight_and_the_off_epochs_train_on_the_task_loss_alone(
    tiny_dataset, tmp_path
) -> None:
    from _cases import make_features, tiny_config

    from vlmkd.train.metrics_log import read_metrics
    from vlmkd.train.trainer import train

    features = make_features(tiny_dataset, tmp_path)
    config = tiny_config(
        tiny_dataset, tmp_path / "run", features=str(features), vlmkd_weight=0.5, batch_size=4, epochs=4,
        log_every=1, vlmkd_warmup_epochs=1, vlmkd_off_epochs=1, vlmkd_decay="cosine",
    )  # fmt: skip
    train(config)
    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "step"]
    per_epoch, total = len(steps) // 4, len(steps)
    expected = [
        vlmkd_weight_at(s, total, 0.5, warmup_steps=per_epoch, off_steps=per_epoch, decay="cosine")
        for s in range(total)
    ]
    assert [r["vlmkd_weight"] for r in steps] == pytest.approx(expected)
    for record in steps:
        assert record["loss"] == pytest.approx(record["task_loss"] + record["vlmkd_weight"] * record["vlmkd_loss"])
    assert all(r["vlmkd_weight"] == 0 and r["vlmkd_loss"] > 0 for r in steps[-per_epoch:])
