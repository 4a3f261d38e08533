"""Training configuration as data: dataclass defaults < YAML preset or file < command-line flags."""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from vlmkd.config import StageConfig, coerce_settings, in_range, read_yaml_mapping, setting_names
from vlmkd.errors import InputError
from vlmkd.losses.contrastive_settings import CONTRASTIVE_DEFAULTS
from vlmkd.registry import Registry, choice_error

PRESET_DIR = Path(__file__).parent / "configs"
CHOICES: dict[str, tuple[str, ...]] = {
    "norm": ("batch", "group"),
    "caption_mix": ("sample", "mean"),
    "text_center": ("none", "all", "prompt"),
    "optimizer": ("sgd", "adamw"),
    "amp": ("off", "bf16", "fp16"),
    "on_nonfinite": ("stop", "skip"),
    "device": ("auto", "cpu", "cuda"),
}


def registries() -> dict[str, Registry]:
    """Settings whose values are registered names: backbones, task losses and contrastive backends."""
    from vlmkd.backends import BACKENDS
    from vlmkd.losses.task import TASK_LOSSES
    from vlmkd.models.zoo import BACKBONES

    return {"arch": BACKBONES, "task_loss": TASK_LOSSES, "contrastive_backend": BACKENDS}


def component_choices() -> dict[str, tuple[str, ...]]:
    """Settings whose values are defined by the component that takes them: the contrast's positives, negatives and
    anchor balance, the VLM-KD weight's decay and the data loaders."""
    from vlmkd.data.loaders import LOADERS
    from vlmkd.losses.contrast_targets import BALANCES
    from vlmkd.losses.contrastive import NEGATIVES
    from vlmkd.ops.contrastive_reference import POSITIVES
    from vlmkd.train.schedule import DECAYS

    return {
        "positives": POSITIVES,
        "negatives": NEGATIVES,
        "contrast_balance": BALANCES,
        "vlmkd_decay": DECAYS,
        "loader": LOADERS.names(),
    }


def choices(name: str) -> tuple[str, ...] | None:
    """The allowed values of setting `name` (None: any value of its type, or a registry with name families such as
    `timm:NAME`, which `TrainConfig.check` validates)."""
    registry = registries().get(name)
    if registry is not None:
        return None if registry.families() else registry.names()
    return CHOICES.get(name) or component_choices().get(name)


@dataclass
class TrainConfig(StageConfig):
    """Every setting of a training run. Field names are the YAML keys; `--some-field` flags override them.

    Values are checked on construction (`InputError` naming the setting); `validate()` also requires the
    inputs a run needs (a dataset, and features or a teacher when their terms are on).
    """

    train: Path | None = None  # dataset: list file or ImageFolder directory
    output: Path = Path("runs/train")
    features: Path | None = None  # caption feature store: given, the VLM-KD term is on
    # model
    arch: str = "resnet32"
    width: float = field(default=1.0, metadata=in_range(gt=0))  # resnet32 channel multiplier (0.5: 8/16/32 channels)
    norm: str = "batch"
    sync_bn: bool = False  # SyncBatchNorm under DDP (GPU only)
    channels_last: bool = False  # NHWC weights and batches (faster convolutions on most hardware)
    compile: bool = False  # torch.compile the backbone (in place: checkpoints are unchanged)
    # data
    image_size: int = field(default=32, metadata=in_range(ge=1))  # and at least the backbone's stride
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406], metadata={"length": 3})
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225], metadata=in_range(gt=0, length=3))
    flip: bool = True
    # random-resized-crop: area fraction and aspect-ratio range of the crop (a zoom changes stroke widths and
    # sizes that captions may state: docs/training.md)
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0], metadata=in_range(gt=0, le=1, length=2))
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3], metadata=in_range(gt=0, length=2))
    loader: str = "torch"
    num_workers: int = field(default=2, metadata=in_range(ge=0))
    # objective
    task_loss: str = "balanced_softmax"  # the long-tail loss; "ce" for a plain baseline
    la_tau: float = field(default=1.0, metadata=in_range(ge=0))
    # lambda; None: DEFAULT_VLMKD_WEIGHT with features, else 0 (off)
    vlmkd_weight: float | None = field(default=None, metadata=in_range(ge=0))
    # the VLM-KD term (defaults: vlmkd.losses.contrastive_settings, shared with VlmkdContrastiveLoss)
    positives: str = CONTRASTIVE_DEFAULTS.positives
    negatives: str = CONTRASTIVE_DEFAULTS.negatives  # every caption of the batch, or only its class's
    caption_mix: str = "sample"
    prompts: list[str] | None = None  # prompt ids to use; None = all in the store
    text_center: str = "prompt"  # subtract the training set's mean text feature: per prompt, over all, or none
    text_whiten: bool = False  # also ZCA-whiten the centred text features
    temperature: float = field(default=CONTRASTIVE_DEFAULTS.temperature, metadata=in_range(gt=0))
    learn_temperature: bool = CONTRASTIVE_DEFAULTS.learn_temperature
    temperature_lr: float | None = field(default=None, metadata=in_range(ge=0))  # logit scale's own lr (default: lr)
    adaptor_lr: float | None = field(default=None, metadata=in_range(ge=0))  # text adaptor's lr (default: lr)
    adaptor_hidden: int | None = field(default=CONTRASTIVE_DEFAULTS.adaptor_hidden, metadata=in_range(ge=1))
    adaptor_bias: bool = CONTRASTIVE_DEFAULTS.adaptor_bias
    image_center: bool = CONTRASTIVE_DEFAULTS.image_center
    image_standardize: bool = CONTRASTIVE_DEFAULTS.image_standardize
    image_projection: bool = CONTRASTIVE_DEFAULTS.image_projection
    projection_hidden: int | None = field(default=CONTRASTIVE_DEFAULTS.projection_hidden, metadata=in_range(ge=1))
    soft_targets: float | None = field(default=CONTRASTIVE_DEFAULTS.soft_targets, metadata=in_range(gt=0))
    contrast_balance: str = CONTRASTIVE_DEFAULTS.contrast_balance
    contrast_min_count: int = field(default=CONTRASTIVE_DEFAULTS.contrast_min_count, metadata=in_range(ge=0))
    # schedule of the VLM-KD weight: linear ramp from 0, then decay to 0 by the start of the last `off` epochs.
    # Defaults measured on MNIST-LT (experiments/RESULTS.md): a term on from the first step, at a constant weight,
    # cost the tail; a warm-up of an eighth of training (None: epochs / 8) and a cosine decay protect it.
    vlmkd_warmup_epochs: float | None = field(default=None, metadata=in_range(ge=0))
    vlmkd_decay: str = "cosine"
    vlmkd_off_epochs: float = field(default=0.0, metadata=in_range(ge=0))
    contrastive_backend: str | None = None  # a name in vlmkd.backends(); default: the fastest usable
    teacher: Path | None = None  # a vlmkd classifier checkpoint: frozen vision teacher
    kd_weight: float | None = field(default=None, metadata=in_range(ge=0))  # None: DEFAULT_KD_WEIGHT with a teacher
    kd_temperature: float = field(default=4.0, metadata=in_range(gt=0))
    # optimisation
    epochs: int = field(default=10, metadata=in_range(ge=1))
    batch_size: int = field(default=128, metadata=in_range(ge=1))  # global: split across processes under DDP
    optimizer: str = "sgd"
    lr: float = field(default=0.1, metadata=in_range(gt=0))
    momentum: float = field(default=0.9, metadata=in_range(ge=0, lt=1))
    weight_decay: float = field(default=5e-4, metadata=in_range(ge=0))
    warmup_epochs: float = field(default=1.0, metadata=in_range(ge=0))  # and at most epochs
    amp: str = "off"
    on_nonfinite: str = "stop"
    # run
    seed: int = field(default=0, metadata=in_range(ge=0))
    device: str = "auto"
    threads: int | None = field(
        default=None, metadata=in_range(ge=1)
    )  # CPU threads for torch; None: vlmkd.threads.default_threads()
    log_every: int = field(default=10, metadata=in_range(ge=1))
    tensorboard: bool = False  # also write the metrics as TensorBoard events into OUTPUT/tensorboard
    progress: bool = True

    def __post_init__(self) -> None:
        # An input that is given switches its term on, unless its weight is set: the obvious reading of
        # `--features F` is "train with VLM-KD from F", of `--teacher T` "distil from T".
        if self.vlmkd_weight is None:
            self.vlmkd_weight = DEFAULT_VLMKD_WEIGHT if self.features else 0.0
        if self.vlmkd_warmup_epochs is None and isinstance(self.epochs, int) and self.epochs >= 1:
            self.vlmkd_warmup_epochs = self.epochs * DEFAULT_VLMKD_WARMUP_FRACTION
        if self.kd_weight is None:
            self.kd_weight = DEFAULT_KD_WEIGHT if self.teacher else 0.0
        super().__post_init__()

    def check(self) -> None:
        for name, allowed in {**CHOICES, **component_choices()}.items():
            if getattr(self, name) not in allowed:
                raise choice_error(name, getattr(self, name), allowed)
        for name, registry in registries().items():
            if getattr(self, name) is not None:
                registry.check(getattr(self, name), name)
        # Ranges of single settings are field metadata (`in_range`), checked with the types; these involve two.
        if self.warmup_epochs > self.epochs:
            raise InputError(f"warmup_epochs ({self.warmup_epochs:g}) must be at most epochs ({self.epochs})")
        if self.vlmkd_warmup_epochs + self.vlmkd_off_epochs > self.epochs:
            raise InputError(
                f"vlmkd_warmup_epochs + vlmkd_off_epochs ({self.vlmkd_warmup_epochs:g} + {self.vlmkd_off_epochs:g}) "
                f"must be at most epochs ({self.epochs})"
            )
        if self.soft_targets is not None and (self.positives, self.negatives) != ("instance", "batch"):
            raise InputError(
                "soft_targets replace the one-hot targets of positives 'instance' with negatives 'batch'; "
                f"got positives {self.positives!r}, negatives {self.negatives!r}"
            )
        if self.projection_hidden is not None and not self.image_projection:
            raise InputError("projection_hidden makes the image projection an MLP head: it needs image_projection")
        for name in ("crop_scale", "crop_ratio"):
            low, high = getattr(self, name)
            if low > high:
                raise InputError(f"{name} must be [low, high] with low <= high; got [{low:g}, {high:g}]")
        if self.positives == "class" and self.negatives == "class":
            raise InputError(
                "positives 'class' with negatives 'class' leaves the contrast no negative (every pair is a "
                "positive); use one of them"
            )
        if self.vlmkd_weight > 0 and self.batch_size < 2:
            raise InputError(
                f"the VLM-KD term needs a global batch_size of at least 2 (the other captions of a batch are its "
                f"negatives; with {self.batch_size} its loss is 0 at every step); raise --batch-size or set "
                "--vlmkd-weight 0"
            )
        stride = registries()["arch"].get(self.arch).stride
        if self.image_size < stride:
            raise InputError(
                f"image_size {self.image_size} is smaller than {self.arch}'s stride of {stride} pixels; "
                f"use --image-size {stride} or more"
            )

    def validate(self) -> TrainConfig:
        """Re-check every setting and require the run's inputs; raise `InputError` naming the first problem."""
        self.__post_init__()
        if not self.train:
            raise InputError("no training dataset: pass --train (a list file or ImageFolder directory)")
        if self.vlmkd_weight > 0 and not self.features:
            raise InputError("--vlmkd-weight > 0 needs --features (a caption feature store from vlmkd-encode)")
        if self.kd_weight > 0 and not self.teacher:
            raise InputError("--kd-weight > 0 needs --teacher (a trained vlmkd classifier)")
        return self

    def check_paths(self) -> None:
        """Raise `InputError` for the first input path that does not exist, before any work starts."""
        inputs = {
            "train": (self.train, "a list file or ImageFolder directory"),
            "features": (self.features, "a feature store directory from vlmkd-encode"),
            "teacher": (self.teacher, "a run directory or checkpoint of vlmkd-train"),
        }
        for name, (path, what) in inputs.items():
            if path is not None and not Path(path).exists():
                raise InputError(f"--{name} {path}: no such file or directory (expected {what})")
        if self.features is not None and not Path(self.features).is_dir():
            raise InputError(
                f"--features {self.features}: not a directory (expected a feature store from vlmkd-encode)"
            )
        if Path(self.output).is_file():
            raise InputError(f"--output {self.output}: is a file (expected a run directory)")

    def inert_settings(self) -> list[str]:
        """One line per setting that has no effect in this run because another setting turns its term off."""
        defaults = {spec.name: field_default(spec) for spec in fields(self)}
        defaults["vlmkd_warmup_epochs"] = self.epochs * DEFAULT_VLMKD_WARMUP_FRACTION  # what None resolves to
        changed = {name for name, default in defaults.items() if getattr(self, name) != default}
        notes = []
        if self.vlmkd_weight == 0:
            if self.features:
                notes.append("--features is unused: --vlmkd-weight 0 turns the VLM-KD term off (a baseline run)")
            why = "--vlmkd-weight 0" if self.features else "no --features"
            notes += [
                f"{flag_name(n)} has no effect: the VLM-KD term is off ({why})" for n in VLMKD_SETTINGS if n in changed
            ]
        else:
            if "temperature_lr" in changed and not self.learn_temperature:
                notes.append("--temperature-lr has no effect: the temperature is fixed (add --learn-temperature)")
            if self.contrastive_backend not in (None, "reference") and (
                self.soft_targets is not None or (self.contrast_balance != "none" and self.negatives == "batch")
            ):
                notes.append(
                    f"--contrastive-backend {self.contrastive_backend} is not used: --soft-targets and "
                    "--contrast-balance compute the contrast in plain PyTorch (the fused kernels take uniform "
                    "anchors and one-hot or same-class targets only)"
                )
        if self.kd_weight == 0:
            if self.teacher:
                notes.append("--teacher is unused: --kd-weight 0 turns logit KD off")
            why = "--kd-weight 0" if self.teacher else "no --teacher"
            notes += [f"{flag_name(n)} has no effect: logit KD is off ({why})" for n in KD_SETTINGS if n in changed]
        if "la_tau" in changed and self.task_loss != "logit_adjust":
            notes.append(f"--la-tau has no effect: the task loss is {self.task_loss}, not logit_adjust")
        if "momentum" in changed and self.optimizer != "sgd":
            notes.append(f"--momentum has no effect: the optimizer is {self.optimizer}, not sgd")
        return notes


# Settings of the VLM-KD term and of logit KD: inert while their term is off.
VLMKD_SETTINGS = (
    "positives", "negatives", "caption_mix", "prompts", "text_center", "text_whiten", "temperature",
    "learn_temperature", "temperature_lr", "adaptor_lr", "adaptor_hidden", "adaptor_bias", "image_center",
    "image_standardize", "image_projection", "projection_hidden", "soft_targets", "contrast_balance",
    "contrast_min_count", "vlmkd_warmup_epochs", "vlmkd_decay", "vlmkd_off_epochs", "contrastive_backend",
)  # fmt: skip
KD_SETTINGS = ("kd_temperature",)
# Settings added after runs were first saved, with the value that reproduces how a run saved before then trained:
# such a checkpoint (without the key) resumes when the setting has this value now.
ADDED_SETTINGS: dict[str, Any] = {
    "projection_hidden": None, "soft_targets": None, "contrast_balance": "none", "contrast_min_count": 0,
    "vlmkd_warmup_epochs": 0.0, "vlmkd_decay": "none", "vlmkd_off_epochs": 0.0,
}  # fmt: skip
DEFAULT_VLMKD_WEIGHT = 1.0  # lambda when --features is given without --vlmkd-weight
DEFAULT_VLMKD_WARMUP_FRACTION = 1 / 8  # of the epochs: the VLM-KD weight's warm-up when not given
DEFAULT_KD_WEIGHT = 1.0  # logit-KD weight when --teacher is given without --kd-weight


def field_default(spec: Field) -> Any:
    """The value a `TrainConfig` field takes when it is not given (None for the inputs-dependent ones)."""
    return spec.default_factory() if spec.default_factory is not MISSING else spec.default


def flag_name(name: str) -> str:
    """The command-line flag of a setting: `vlmkd_decay` -> `--vlmkd-decay`."""
    return "--" + name.replace("_", "-")


def field_names() -> list[str]:
    return setting_names(TrainConfig)


def read_config_file(spec: str | Path) -> dict[str, Any]:
    """Settings from a YAML file path or the name of a bundled preset (listed by `vlmkd-train --help`)."""
    path = Path(spec)
    if not path.is_file():
        preset = PRESET_DIR / f"{spec}.yaml"
        if not preset.is_file():
            raise InputError(f"{spec}: no such config file or preset (presets: {', '.join(list_presets())})")
        path = preset
    return check_settings(read_yaml_mapping(path), str(path))


def check_settings(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """Settings with each value checked against its field's type (ints widen to floats); `InputError` otherwise."""
    return dict(coerce_settings(TrainConfig, settings, where))


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_config(file_settings: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the file's settings, then the flags that were given (None means not given)."""
    from_file = check_settings(file_settings, "config")
    given = check_settings({k: v for k, v in overrides.items() if v is not None}, "setting")
    return TrainConfig(**{**from_file, **given}).validate()


def write_config(config: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML, loadable again with `--config`."""
    config.to_yaml(path)
