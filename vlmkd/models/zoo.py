"""Backbones by name, randomly initialised: the project's ResNet-32 and torchvision's ResNet-50 / ResNeXt-50."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch import nn

from vlmkd.errors import InputError, MissingDependencyError
from vlmkd.models.classifier import Classifier
from vlmkd.models.resnet32 import ResNet32Features
from vlmkd.registry import Registry


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


BACKBONES: Registry[Callable[[ModelSpec], tuple[nn.Module, int]]] = Registry("arch")
BACKBONES.register("resnet32", _resnet32, "the CIFAR ResNet-32 (16/32/64 x width channels), any image size")
BACKBONES.register("resnet50", _torchvision("resnet50"), "torchvision ResNet-50, random init")
BACKBONES.register("resnext50", _torchvision("resnext50_32x4d"), "torchvision ResNeXt-50 32x4d, random init")


def build_model(spec: ModelSpec) -> Classifier:
    """A randomly initialised `Classifier` for `spec` (no pretrained weights are ever loaded).

    A backbone builder takes the spec and returns `(trunk, feature_dim)`: a module mapping images to
    (B, feature_dim) features; the linear head is added here.
    """
    trunk, feature_dim = BACKBONES.get(spec.arch)(spec)
    return Classifier(trunk, feature_dim, spec.num_classes)
