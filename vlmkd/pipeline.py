"""The pipeline from Python: one plain function per stage, exported as `vlmkd.caption`, `vlmkd.encode`,
`vlmkd.train` and `vlmkd.evaluate` (the stage packages of the same names hold each stage's modules).

Each takes its stage config, or the config's settings as keywords (keywords override a given config's),
plus objects already in memory where a path would otherwise be loaded: a dataset (`ImageList`), a prompt
set, a loaded engine or text encoder, an open caption store. Each runs its stage like the CLI does (resuming
finished work), changes no global state beyond the call, and returns a small result dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from vlmkd.config import StageConfig

if TYPE_CHECKING:
    from vlmkd.caption import CaptionConfig, CaptionReport
    from vlmkd.encode import EncodeConfig, FeatureStore
    from vlmkd.evaluate import EvalConfig, EvalResult
    from vlmkd.train import TrainConfig, TrainResult

C = TypeVar("C", bound=StageConfig)


@dataclass(frozen=True)
class EncodeResult:
    """A finished feature store and how long the call took."""

    store: FeatureStore
    seconds: float

    @property
    def path(self) -> Path:
        return self.store.path


def caption(config: CaptionConfig | None = None, /, **settings: Any) -> CaptionReport:
    """Caption a dataset into a caption store (`vlmkd-caption`); returns the run's `CaptionReport` (`.store`).

    Settings are `CaptionConfig` fields; `GenerationSettings` fields (max_new_tokens, do_sample...) may be
    given flat. `dataset` may be an `ImageList`, `prompts` a `PromptSet`, `engine` a loaded `CaptionEngine`.
    """
    from vlmkd.caption import CaptionConfig, CaptionEngine, PromptSet, run_captioning
    from vlmkd.data import ImageList

    objects = _take(settings, dataset=ImageList, prompts=PromptSet, engine=CaptionEngine)
    assignment = settings.pop("assignment", None)
    if config is not None:
        settings = {**config.to_dict(), **settings}
    return run_captioning(CaptionConfig.from_settings(**settings), assignment=assignment, **objects)


def encode(config: EncodeConfig | None = None, /, **settings: Any) -> EncodeResult:
    """Encode a caption store into a feature store (`vlmkd-encode`).

    Settings are `EncodeConfig` fields; `captions` may be an open `CaptionStore` (or a `CaptionReport`),
    `encoder` a loaded `TextEncoder`.
    """
    import time

    from vlmkd.caption import CaptionReport, CaptionStore
    from vlmkd.encode import EncodeConfig, TextEncoder, run_encoding

    if isinstance(settings.get("captions"), CaptionReport):
        settings["captions"] = settings["captions"].store
    objects = _take(settings, captions=CaptionStore, encoder=TextEncoder)
    start = time.perf_counter()
    store = run_encoding(_config(EncodeConfig, config, settings), **objects)
    return EncodeResult(store, time.perf_counter() - start)


def train(config: TrainConfig | None = None, /, resume: str | Path | None = None, **settings: Any) -> TrainResult:
    """Train a classifier (`vlmkd-train`); settings are `TrainConfig` fields, `resume` a checkpoint or "auto".

    `features` may be an `EncodeResult` or `FeatureStore` (its path is used).
    """
    from vlmkd.encode import FeatureStore
    from vlmkd.train import TrainConfig
    from vlmkd.train.trainer import train as run_training

    if isinstance(settings.get("features"), (EncodeResult, FeatureStore)):
        settings["features"] = settings["features"].path
    return run_training(_config(TrainConfig, config, settings), resume=None if resume is None else str(resume))


def evaluate(config: EvalConfig | None = None, /, **settings: Any) -> EvalResult:
    """Evaluate a trained classifier (`vlmkd-eval`); settings are `EvalConfig` fields.

    `checkpoint` may be a `TrainResult` (its output directory is used). Returns `EvalResult` (`.top1["few"]`,
    `.per_class`, `.figures`).
    """
    from vlmkd.evaluate import EvalConfig, run_evaluation
    from vlmkd.train import TrainResult

    if isinstance(settings.get("checkpoint"), TrainResult):
        settings["checkpoint"] = settings["checkpoint"].output
    return run_evaluation(_config(EvalConfig, config, settings))


def _config(cls: type[C], config: C | None, settings: dict[str, Any]) -> C:
    if config is not None and not isinstance(config, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(config).__name__}")
    if config is None:
        return cls.from_dict(settings)
    return config.replace(**settings) if settings else config


def _take(settings: dict[str, Any], **kinds: type) -> dict[str, Any]:
    """Remove from `settings` (and return) the values that are objects of the given kinds, not config data."""
    return {name: settings.pop(name) for name, kind in kinds.items() if isinstance(settings.get(name), kind)}


__all__ = ["EncodeResult", "caption", "encode", "evaluate", "train"]
