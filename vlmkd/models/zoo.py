"""Backbones by name, randomly initialised: the project's ResNet-32, torchvision's ResNet-50 / ResNeXt-50, and any
timm model as `timm:NAME`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from vlmkd.errors import InputError, MissingDependencyError
from vlmkd.models.classifier import Classifier
from vlmkd.models.resnet32 import ResNet32Features
from vlmkd.models.timm_backbones import EXAMPLES as TIMM_EXAMPLES
from vlmkd.models.timm_backbones import PREFIX as TIMM_PREFIX
from vlmkd.models.timm_backbones import build_timm_trunk, is_timm_arch, timm_version
from vlmkd.registry import Registry, resolve


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a classifier; stored as JSON beside its weights."""

    arch: str
    num_classes: int
    width: float = 1.0
    norm: str = "batch"
    timm_version: str | None = None  # the timm a `timm:NAME` model was built with (filled in when not given)

    def __post_init__(self) -> None:
        if is_timm_arch(self.arch) and self.timm_version is None:
            object.__setattr__(self, "timm_version", timm_version())

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["timm_version"] is None:
            del data["timm_version"]
        return data


BuildTrunk = Callable[[ModelSpec], tuple[nn.Module, int]]


@dataclass(frozen=True)
class Backbone:
    """A registered backbone: its trunk builder (or a lazy "module:attribute" naming it, imported on first build)
    and the facts the config checks before anything is built."""

    build: BuildTrunk | str  # spec -> (trunk mapping images to (B, feature_dim) features, feature_dim)
    stride: int = 1  # how much it downsamples: an image smaller than this leaves it no pixel to look at

    def trunk(self, spec: ModelSpec) -> tuple[nn.Module, int]:
        build: BuildTrunk = resolve(self.build)  # type: ignore[assignment]
        return build(spec)


def _resnet32(spec: ModelSpec) -> tuple[nn.Module, int]:
    trunk = ResNet32Features(width=spec.width, norm=spec.norm)
    return trunk, trunk.out_features


def _only_resnet32_options(spec: ModelSpec) -> None:
    if spec.width != 1 or spec.norm != "batch":
        raise InputError(f"arch {spec.arch}: width and norm options apply to resnet32 only")


def _timm(spec: ModelSpec) -> tuple[nn.Module, int]:
    _only_resnet32_options(spec)
    return build_timm_trunk(spec.arch, spec.timm_version)


def _torchvision(name: str) -> Callable[[ModelSpec], tuple[nn.Module, int]]:
    def build(spec: ModelSpec) -> tuple[nn.Module, int]:
        _only_resnet32_options(spec)
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


BACKBONES: Registry[Backbone] = Registry("arch")
BACKBONES.register("resnet32", Backbone(_resnet32, stride=4), "the CIFAR ResNet-32 (16/32/64 x width channels)")
BACKBONES.register("resnet50", Backbone(_torchvision("resnet50"), stride=32), "torchvision ResNet-50, random init")
BACKBONES.register(
    "resnext50", Backbone(_torchvision("resnext50_32x4d"), stride=32), "torchvision ResNeXt-50 32x4d, random init"
)
BACKBONES.register_family(
    TIMM_PREFIX,
    Backbone(_timm),  # sizes a timm model cannot take are found by `check_image_size`, before training
    "any timm model: timm.create_model(NAME, pretrained=False, num_classes=0), random init",
    check="vlmkd.models.timm_backbones:check_timm_name",
    examples=tuple(TIMM_PREFIX + name for name in TIMM_EXAMPLES),
)


def build_model(spec: ModelSpec) -> Classifier:
    """A randomly initialised `Classifier` for `spec` (no pretrained weights are ever loaded).

    The registered `Backbone` builds the trunk (images to (B, feature_dim) features); the linear head is added
    here.
    """
    trunk, feature_dim = BACKBONES.get(spec.arch).trunk(spec)
    return Classifier(trunk, feature_dim, spec.num_classes)


def describe_archs() -> str:
    """The choices of `--arch` in one line: the built-in names, then each name family with examples."""
    families = [f"{f.pattern} ({f.description}; e.g. {', '.join(f.examples[:3])})" for f in BACKBONES.families()]
    return " or ".join([", ".join(BACKBONES.names()), *families])


def check_image_size(model: Classifier, arch: str, image_size: int) -> None:
    """Run one blank `image_size` px image through the trunk (eval mode, no grad): a backbone that cannot take
    that size (a vision transformer built for 224 px, a net that downsamples a tiny image to nothing) is a
    one-line `InputError` before training starts, not a traceback from its first step."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.features(torch.zeros(1, 3, image_size, image_size, device=device))
    except (RuntimeError, AssertionError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(
            f"arch {arch} cannot take {image_size} px images ({reason}); choose another --image-size or --arch"
        ) from None
    finally:
        model.train(was_training)
