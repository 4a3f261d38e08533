"""Training configuration as data: dataclass defaults < YAML preset or file < command-line flags."""

from __future__ import annotations

import dataclasses
import types
import typing
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
    """Settings from a YAML file path or the name of a bundled preset (listed by `vlmkd-train --help`)."""
    path = Path(spec)
    if not path.is_file():
        preset = PRESET_DIR / f"{spec}.yaml"
        if not preset.is_file():
            raise InputError(f"{spec}: no such config file or preset (presets: {', '.join(list_presets())})")
        path = preset
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise InputError(f"{where}: not valid YAML ({getattr(error, 'problem', None) or 'syntax error'})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of settings at the top level")
    return check_settings(data, str(path))


def check_settings(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """Settings with each value checked against its field's type (ints widen to floats); `InputError` otherwise."""
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(settings) - set(hints))
    if unknown:
        raise InputError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    return {name: _typed(name, value, hints[name], where) for name, value in settings.items()}


def _typed(name: str, value: Any, hint: Any, where: str) -> Any:
    options = [arg for arg in typing.get_args(hint) if arg is not type(None)] if _is_optional(hint) else [hint]
    if value is None and len(options) == 1 and options[0] is not hint:
        return None
    kind = options[0]
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        if isinstance(value, list):
            items = [_scalar(v, item) for v in value]
            if all(v is not _BAD for v in items) and (item is not float or len(items) == 3):
                return items
    elif (checked := _scalar(value, kind)) is not _BAD:
        return checked
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))
    if typing.get_origin(kind) is list:
        expected = "a list of 3 numbers" if typing.get_args(kind)[0] is float else "a list of strings"
    if kind is not hint:
        expected += " or null"
    raise InputError(f"{where}: {name} must be {expected}, got {value!r}")


_BAD = object()


def _scalar(value: Any, kind: type) -> Any:
    if kind is bool:
        return value if isinstance(value, bool) else _BAD
    if isinstance(value, bool):
        return _BAD
    if kind is int:
        return value if isinstance(value, int) else _BAD
    if kind is float:
        return float(value) if isinstance(value, (int, float)) else _BAD
    return value if isinstance(value, kind) else _BAD


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config(file_settings: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the file's settings, then the flags that were given (None means not given)."""
    from_file = check_settings(file_settings, "config")
    given = check_settings({k: v for k, v in overrides.items() if v is not None}, "setting")
    return TrainConfig(**{**from_file, **given}).validate()


def write_config(config: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML, loadable again with `--config`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
