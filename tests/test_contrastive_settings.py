"""One set of defaults for the VLM-KD term: `VlmkdContrastiveLoss()` built by hand is the module `vlmkd-train`
builds, setting by setting (issue #29: the module once defaulted to settings the trainer had measured to fail)."""

from __future__ import annotations

import inspect
from dataclasses import fields

import torch

from vlmkd.losses import VlmkdContrastiveLoss
from vlmkd.losses.contrastive_settings import CONTRASTIVE_DEFAULTS, ContrastiveSettings
from vlmkd.train.config import TrainConfig, field_default
from vlmkd.train.text import build_contrastive


def test_every_setting_has_one_default_shared_by_the_module_and_the_trainer() -> None:
    module_defaults = {
        name: p.default for name, p in inspect.signature(VlmkdContrastiveLoss).parameters.items()
        if p.default is not inspect.Parameter.empty
    }  # fmt: skip
    trainer_defaults = {spec.name: field_default(spec) for spec in fields(TrainConfig)}
    for spec in fields(ContrastiveSettings):
        expected = getattr(CONTRASTIVE_DEFAULTS, spec.name)
        assert module_defaults[spec.name] == expected, f"VlmkdContrastiveLoss({spec.name}=...)"
        assert trainer_defaults[spec.name] == expected, f"TrainConfig.{spec.name}"


def test_the_module_built_by_hand_is_the_module_the_trainer_builds() -> None:
    torch.manual_seed(0)
    by_hand = VlmkdContrastiveLoss(384, 64)
    torch.manual_seed(0)
    trained = build_contrastive(TrainConfig(), 384, 64)
    assert repr(by_hand) == repr(trained)
    assert by_hand.state_dict().keys() == trained.state_dict().keys()
    for key, value in by_hand.state_dict().items():
        torch.testing.assert_close(value, trained.state_dict()[key])
    assert [name for name, _ in by_hand.named_parameters()] == [name for name, _ in trained.named_parameters()]
