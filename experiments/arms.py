"""The study's arms: the baseline, the VLM-KD settings before issue #27 ("today"), and each training option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmkd.experiment.runner import Arm

# The VLM-KD settings shipped before the tail was measured, pinned so that the arm stays what it was when the
# library's defaults change.
TODAY: dict[str, Any] = {
    "vlmkd_weight": 1.0, "positives": "instance", "negatives": "batch", "caption_mix": "sample",
    "text_center": "prompt", "text_whiten": False, "temperature": 0.5, "learn_temperature": False,
    "adaptor_hidden": None, "adaptor_bias": False, "image_center": True, "image_standardize": False,
    "image_projection": True, "projection_hidden": None, "soft_targets": None, "contrast_balance": "none",
    "vlmkd_warmup_epochs": 0.0, "vlmkd_decay": "none", "vlmkd_off_epochs": 0.0, "contrast_min_count": 0,
}  # fmt: skip

# Each training option of issue #27 on top of TODAY (screened at IF 256; the full study keeps the best of each).
OPTIONS: dict[str, dict[str, Any]] = {
    "warm-2": {"vlmkd_warmup_epochs": 2.0},
    "warm-4": {"vlmkd_warmup_epochs": 4.0},
    "sched-cos": {"vlmkd_warmup_epochs": 2.0, "vlmkd_decay": "cosine"},
    "sched-off": {"vlmkd_warmup_epochs": 2.0, "vlmkd_off_epochs": 4.0},
    "bal-sqrt": {"contrast_balance": "sqrt"},
    "bal-inv": {"contrast_balance": "inverse"},
    "soft-0.1": {"soft_targets": 0.1},
    "soft-0.03": {"soft_targets": 0.03},
    "head-128": {"projection_hidden": 128},
    "min-20": {"contrast_min_count": 20},
    "sched-half": {"vlmkd_decay": "cosine", "vlmkd_off_epochs": 8.0},
    "cos-soft": {"vlmkd_warmup_epochs": 2.0, "vlmkd_decay": "cosine", "soft_targets": 0.1},
    "cos-min": {"vlmkd_warmup_epochs": 2.0, "vlmkd_decay": "cosine", "contrast_min_count": 20},
    "all": {
        "vlmkd_warmup_epochs": 2.0,
        "vlmkd_decay": "cosine",
        "contrast_balance": "sqrt",
        "soft_targets": 0.1,
        "projection_hidden": 128,
    },
    "all-half": {
        "vlmkd_decay": "cosine",
        "vlmkd_off_epochs": 8.0,
        "contrast_balance": "inverse",
        "soft_targets": 0.1,
        "projection_hidden": 128,
    },
    "all-half-w0.3": {
        "vlmkd_weight": 0.3,
        "vlmkd_decay": "cosine",
        "vlmkd_off_epochs": 8.0,
        "contrast_balance": "inverse",
        "soft_targets": 0.1,
        "projection_hidden": 128,
    },
}

BASELINE = Arm("baseline", {"vlmkd_weight": 0.0})
# Every VLM-KD variant of the study: TODAY, each option on top of it, and the library's own defaults.
VARIANTS: dict[str, dict[str, Any] | None] = {"today": {}, **OPTIONS, "default": None}


def vlmkd_arm(source: str, features: Path, variant: str = "today", **extra: Any) -> Arm:
    """`SOURCE-VARIANT`: TODAY's settings plus the variant's (`default`: the library's defaults) with `features`."""
    overrides = VARIANTS[variant]
    settings = {} if overrides is None else {**TODAY, **overrides}
    return Arm(f"{source}-{variant}", {**settings, **extra, "features": str(features)})
