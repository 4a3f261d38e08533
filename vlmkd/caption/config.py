"""`CaptionConfig`: every setting of a captioning run, shared by `vlmkd-caption`, `vlmkd.caption` and the runner."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vlmkd.caption.engines import ENGINES
from vlmkd.caption.engines.base import GenerationSettings
from vlmkd.config import StageConfig, in_range


@dataclass
class CaptionConfig(StageConfig):
    """What to caption, with which model and settings, into which store, and how processes share it."""

    dataset: Path | None = None  # list file (`relative/path label` lines) or ImageFolder directory
    model: str | None = None  # model directory, cached Hugging Face id, or (openai) the served name; a Path is fine
    out: Path | None = None  # caption store directory (created or resumed)
    root: Path | None = None  # image root of a list file (default: its folder)
    classnames: Path | None = None  # class names, one per line, in label order
    engine: str = "hf"
    prompts: Path | None = None  # prompt-set YAML/JSON file or the name of a shipped set (None: the default)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    # captions per batch at most; batches hold whole images (all their prompts), at least one
    batch_size: int = field(default=16, metadata=in_range(ge=1))
    # size batches by work instead: whole images while the engine's estimated tokens of their captions (KV-cache
    # tokens once generated: image, prompt and new tokens) fit; replaces batch_size
    batch_tokens: int | None = field(default=None, metadata=in_range(ge=1))
    device: str = "cpu"  # cpu, cuda (this rank's GPU under torchrun), cuda:N
    trust_remote_code: bool = False
    engine_options: dict[str, Any] = field(default_factory=dict)  # to the engine (openai: api_bases, concurrency...)
    # shards of a new store (None: one per DEFAULT_SHARD_SIZE images, >= 1 per rank)
    num_shards: int | None = field(default=None, metadata=in_range(ge=1))
    shard_index: int | None = field(default=None, metadata=in_range(ge=0))  # write only this shard
    overwrite: bool = False  # replace a store made with other settings
    progress: bool = True
    # torch CPU threads during the run; None: vlmkd.threads.default_threads()
    threads: int | None = field(default=None, metadata=in_range(ge=1))

    def check(self) -> None:
        ENGINES.check(self.engine)

    @classmethod
    def from_settings(cls, **settings: Any) -> CaptionConfig:
        """A config from flat keywords; `GenerationSettings` fields (max_new_tokens, ...) go into `generation`."""
        names = {f.name for f in fields(GenerationSettings)}
        generation = {k: settings.pop(k) for k in list(settings) if k in names}
        if generation:
            base = settings.pop("generation", None) or GenerationSettings()
            base_settings = base.to_dict() if isinstance(base, GenerationSettings) else dict(base)
            settings["generation"] = {**base_settings, **generation}
        return cls.from_dict(settings)
