"""Backbones by name, randomly initialised: the project's ResNet-32 and torchvision's ResNet-50 / ResNeXt-50."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch import nn

from vlmkd.errors import InputError, MissingDependencyError
from vlmkd.models.classifier import Classifier
from vlmkd.models.resnet32 import ResNet32Features


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a classifier; stored as JSON beside its weights."""

    arch: str
    num_classes: int
    width: float = 1.0
    norm: str = "batch"

    def to_dict(self) -> dict:
        return asdict(self)


def _resnet32(spec: ModelSpec) -> tuple[nn.Module, int]:
    trunk = ResNet32Features(width=spec.width, norm=spec.norm)
    return trunk, trunk.out_features


def _torchvision(name: str) -> Callable[[ModelSpec], tuple[nn.Module, int]]:
    def build(spec: ModelSpec) -> tuple[nn.Module, int]:
        if spec.width != 1 or spec.norm != "batch":
            raise InputError(f"arch {spec.arch}: width and norm options apply to resnet32 only")
        try:
            import torchvision.models
        except ImportError:
            raise MissingDependencyError(
                f"arch {spec.arch} needs torchvision: pip install 'vlmkd[vision]' (matching your torch)"
            ) from None
        trunk = getattr(torchvision.models, name)(weights=None)
        feature_dim = trunk.fc.in_features
        trunk.fc = nn.Identity()
        return trunk, feature_dim

    return build


ARCHS: dict[str, Callable[[ModelSpec], tuple[nn.Module, int]]] = {
    "resnet32": _resnet32,
    "resnet50": _torchvision("resnet50"),
    "resnext50": _torchvision("resnext50_32x4d"),
}


def build_model(spec: ModelSpec) -> Classifier:
    """A randomly initialised `Classifier` for `spec` (no pretrained weights are ever loaded)."""
    if spec.arch not in ARCHS:
        raise InputError(f"unknown arch {spec.arch!r}; choose from {', '.join(ARCHS)}")
    trunk, feature_dim = ARCHS[spec.arch](spec)
    return Classifier(trunk, feature_dim, spec.num_classes)
