"""Backbones from timm by name: `timm:NAME` is `timm.create_model(NAME, pretrained=False, num_classes=0)`.

Randomly initialised, like every vlmkd backbone (no weights are downloaded). The feature width is read from
the model: timm's `head_hidden_size` (the width of what `forward` returns once the classifier is removed;
it differs from `num_features` in models with a pre-logits layer, such as MobileNetV3: 288 vs 1024), else
`num_features`. Checkpoints record the timm version next to the name, because timm may change a model's
definition between releases.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import warnings
from types import ModuleType

from torch import nn

from vlmkd.errors import InputError, MissingDependencyError

PREFIX = "timm:"
# A few names to show in help texts: small and fast ones first, then the families researchers ask for.
EXAMPLES = (
    "resnet10t",
    "mobilenetv3_small_050",
    "convnext_atto",
    "efficientnet_b0",
    "regnety_002",
    "vit_small_patch16_224",
)


def is_timm_arch(arch: str) -> bool:
    """Whether `arch` names a timm model (`timm:NAME`)."""
    return arch.startswith(PREFIX)


def timm_name(arch: str) -> str:
    """NAME of `timm:NAME`; an `InputError` for an empty name."""
    name = arch[len(PREFIX) :] if is_timm_arch(arch) else arch
    if not name:
        raise InputError(f"arch {arch!r}: name a timm model after 'timm:', e.g. timm:{EXAMPLES[0]}")
    return name


def timm_version() -> str | None:
    """The installed timm's version, None when timm is not installed (read without importing timm)."""
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None


def timm_summary() -> str:
    """One line for `vlmkd info`: the installed timm, how many models it offers, a few example names."""
    examples = ", ".join(PREFIX + name for name in EXAMPLES[:4])
    try:
        import timm
    except ImportError:
        return f"timm not installed (pip install 'vlmkd[vision]'), so {PREFIX}NAME backbones are unavailable"
    return f"timm {timm.__version__}: {len(timm.list_models())} models as {PREFIX}NAME, e.g. {examples}"


def _import_timm(arch: str) -> ModuleType:
    try:
        import timm
    except ImportError:
        raise MissingDependencyError(f"arch {arch} needs timm: pip install 'vlmkd[vision]'") from None
    return timm


def check_timm_name(arch: str) -> str:
    """The timm model name of `arch`, checked against timm's registry; unknown names list close matches."""
    name = timm_name(arch)
    timm = _import_timm(arch)
    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise InputError(
        f"arch {arch}: unknown timm model {name!r} (timm {timm.__version__}, {len(timm.list_models())} models){hint}; "
        "list them with: python -c \"import timm; print(timm.list_models('*pattern*'))\""
    )


def build_timm_trunk(arch: str, recorded_version: str | None = None) -> tuple[nn.Module, int]:
    """(trunk, feature width) for `timm:NAME`: the model without its classifier, returning (B, width) features.

    `recorded_version` is the timm version a checkpoint was trained with; another installed version warns,
    since timm may have changed the model's definition (a mismatch in the weights is then reported on load).
    """
    name = check_timm_name(arch)
    timm = _import_timm(arch)
    if recorded_version is not None and recorded_version != timm.__version__:
        warnings.warn(
            f"arch {arch} was saved with timm {recorded_version}, timm {timm.__version__} is installed",
            stacklevel=2,
        )
    trunk = timm.create_model(name, pretrained=False, num_classes=0)
    width = getattr(trunk, "head_hidden_size", None) or trunk.num_features
    return trunk, int(width)
