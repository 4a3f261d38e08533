"""Optimizer parameter groups: weight decay by parameter kind and the VLM-KD parameters' own learning rates."""

from __future__ import annotations

import pytest
import torch

from vlmkd.losses import VlmkdContrastiveLoss
from vlmkd.train.schedule import build_optimizer, lr_at


def _group_of(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter) -> dict:
    (group,) = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    return group


def test_own_learning_rates_get_their_own_groups_and_keep_the_weight_decay_split() -> None:
    model = torch.nn.Linear(4, 3)
    loss = VlmkdContrastiveLoss(5, 3, learn_temperature=True)
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
