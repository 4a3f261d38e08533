"""`EncodeConfig`: every setting of an encoding run, shared by `vlmkd-encode`, `vlmkd.encode` and the runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlmkd.config import StageConfig
from vlmkd.encode.text_encoder import DTYPES
from vlmkd.errors import InputError
from vlmkd.registry import choice_error


@dataclass
class EncodeConfig(StageConfig):
    """Which caption store to encode, with which text encoder, into which feature store."""

    captions: Path | None = None  # caption store directory (vlmkd-caption)
    out: Path | None = None  # feature store directory (created or resumed)
    encoder: str | None = None  # sentence-transformers or HF encoder: directory or cached hub id (None: bundled MiniLM)
    batch_size: int = 64  # captions per forward pass
    device: str = "cpu"
    dtype: str = "float32"  # compute dtype
    normalize: bool = True  # L2-normalise each feature before storing it
    chunk_size: int = 1024  # images per committed chunk, the unit of resuming
    overwrite: bool = False  # replace a feature store made by another job
    progress: bool = True

    def check(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.chunk_size < 1:
            raise InputError(f"--chunk-size must be at least 1, got {self.chunk_size}")
        if self.dtype not in DTYPES:
            raise choice_error("--dtype", self.dtype, DTYPES)
