"""Training configuration as data: dataclass defaults < YAML preset or file < command-line flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from vlmkd.errors import InputError

PRESET_DIR = Path(__file__).parent / "configs"
CHOICES: dict[str, tuple[str, ...]] = {
    "arch": ("resnet32", "resnet50", "resnext50"),
    "norm": ("batch", "group"),
    "task_loss": ("ce", "balanced_softmax", "logit_adjust"),
    "positives": ("instance", "class"),
    "caption_mix": ("sample", "mean"),
    "optimizer": ("sgd", "adamw"),
    "amp": ("off", "bf16", "fp16"),
    "on_nonfinite": ("stop", "skip"),
    "loader": ("torch", "dali"),
    "device": ("auto", "cpu", "cuda"),
}


@dataclass
class TrainConfig:
    """Every setting of a training run. Field names are the YAML keys; `--some-field` flags override them."""

    train: str = ""  # dataset: list file or ImageFolder directory
    output: str = "runs/train"
    features: str | None = None  # caption feature store (needed when vlmkd_weight > 0)
    # model
    arch: str = "resnet32"
    width: float = 1.0  # resnet32 channel multiplier (0.5: 8/16/32 channels)
    norm: str = "batch"
    sync_bn: bool = False  # SyncBatchNorm under DDP (GPU only)
    # data
    image_size: int = 32
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    flip: bool = True
    loader: str = "torch"
    num_workers: int = 2
    # objective
    task_loss: str = "ce"
    la_tau: float = 1.0
    vlmkd_weight: float = 0.0
    positives: str = "instance"
    caption_mix: str = "sample"
    prompts: list[str] | None = None  # prompt ids to use; None = all in the store
    temperature: float = 0.07
    learn_temperature: bool = True
    adaptor_hidden: int | None = None  # 2-layer MLP adaptor of this width (default: linear)
    contrastive_backend: str | None = None  # ref|cpp|triton|cuda; default: the fastest usable
    teacher: str | None = None  # a vlmkd classifier checkpoint: frozen vision teacher
    kd_weight: float = 0.0
    kd_temperature: float = 4.0
    # optimisation
    epochs: int = 10
    batch_size: int = 128  # global: split across processes under DDP
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    amp: str = "off"
    on_nonfinite: str = "stop"
    # run
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # CPU threads for torch (default: torch's choice; 1 is fastest on a busy machine)
    log_every: int = 10
    progress: bool = True

    def validate(self) -> TrainConfig:
        """Raise `InputError` naming the first bad setting."""
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if not self.train:
            raise InputError("no training dataset: pass --train (a list file or ImageFolder directory)")
        if self.vlmkd_weight > 0 and not self.features:
            raise InputError("--vlmkd-weight > 0 needs --features (a caption feature store from vlmkd-encode)")
        if self.kd_weight > 0 and not self.teacher:
            raise InputError("--kd-weight > 0 needs --teacher (a trained vlmkd classifier)")
        if self.width <= 0:
            raise InputError(f"width must be positive; got {self.width}")
        for name in ("epochs", "batch_size", "image_size", "log_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.temperature <= 0 or self.kd_temperature <= 0:
            raise InputError("temperatures must be positive")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def read_config_file(spec: str) -> dict[str, Any]:
    """Settings from a YAML file path or the name of a bundled preset (see `vlmkd-train --list-presets`)."""
    path = Path(spec)
    if not path.is_file():
        preset = PRESET_DIR / f"{spec}.yaml"
        if not preset.is_file():
            raise InputError(f"{spec}: no such config file or preset (presets: {', '.join(list_presets())})")
        path = preset
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of settings at the top level")
    unknown = sorted(set(data) - set(field_names()))
    if unknown:
        raise InputError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    return data


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config(file_settings: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the file's settings, then the flags that were given (None means not given)."""
    merged = {**file_settings, **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(**merged).validate()


def write_config(config: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML, loadable again with `--config`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
