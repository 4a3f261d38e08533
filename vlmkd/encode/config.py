"""`EncodeConfig`: every setting of an encoding run, shared by `vlmkd-encode`, `vlmkd.encode` and the runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlmkd.config import StageConfig, in_range
from vlmkd.encode.text_encoder import DTYPES
from vlmkd.registry import choice_error


@dataclass
class EncodeConfig(StageConfig):
    """Which caption store to encode, with which text encoder, into which feature store."""

    captions: Path | None = None  # caption store directory (vlmkd-caption)
    out: Path | None = None  # feature store directory (created or resumed)
    encoder: str | None = None  # sentence-transformers or HF encoder: directory or cached hub id (None: bundled MiniLM)
    batch_size: int = field(default=64, metadata=in_range(ge=1))  # captions per forward pass
    device: str = "cpu"
    dtype: str = "float32"  # compute dtype
    normalize: bool = True  # L2-normalise each feature before storing it
    chunk_size: int = field(default=1024, metadata=in_range(ge=1))  # images per committed chunk, the unit of resuming
    overwrite: bool = False  # replace a feature store made by another job
    progress: bool = True

    def check(self) -> None:
        if self.dtype not in DTYPES:
            raise choice_error("--dtype", self.dtype, DTYPES)
