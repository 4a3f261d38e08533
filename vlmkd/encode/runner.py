"""`encode_captions`: every caption of a caption store through a text encoder into a feature store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vlmkd.caption.store import CaptionStore
from vlmkd.encode.captions import StoreCaptions
from vlmkd.encode.config import EncodeConfig
from vlmkd.encode.store import FORMAT, VERSION, FeatureStore
from vlmkd.encode.text_encoder import TextEncoder, load_text_encoder
from vlmkd.encode.writer import FeatureWriter
from vlmkd.errors import InputError
from vlmkd.output_lock import holding


def encode_captions(
    captions: Path | str | CaptionStore,
    out: Path | str,
    *,
    encoder: str | Path | TextEncoder | None = None,
    **settings: Any,
) -> FeatureStore:
    """Encode every (image, prompt) caption into the fp16 feature store `out`, resuming an unfinished one.

    `captions` is a caption store or its directory; `encoder` a name or path for `load_text_encoder` (None: the
    bundled all-MiniLM-L6-v2) or an already loaded encoder; `settings` are the other `EncodeConfig` fields.
    """
    store = captions if isinstance(captions, CaptionStore) else None
    loaded = encoder if isinstance(encoder, TextEncoder) else None
    config = EncodeConfig(
        captions=store.path if store is not None else captions,
        out=out,
        encoder=None if loaded is not None else encoder,
        **settings,
    )
    return run_encoding(config, captions=store, encoder=loaded)


def run_encoding(
    config: EncodeConfig, *, captions: CaptionStore | None = None, encoder: TextEncoder | None = None
) -> FeatureStore:
    """Run `config`; `captions` (an open caption store) and `encoder` (a loaded one) replace what it names.

    `normalize` L2-normalises each feature before it is stored. Work is committed every `chunk_size` images,
    so a rerun after a crash encodes only the chunks that were not finished.
    """
    if config.out is None or (captions is None and config.captions is None):
        raise InputError("encoding needs a caption store (captions) and an output feature store (out)")
    store = captions if captions is not None else CaptionStore.open(config.captions)
    texts = StoreCaptions(store)  # read shard by shard: never every caption at once
    digest = texts.digest()  # checks every shard before anything is loaded or written
    text_encoder = encoder if encoder is not None else load_text_encoder(config.encoder, config.device, config.dtype)
    manifest = feature_manifest(store, digest, text_encoder, config.normalize)
    with holding(config.out, what="feature store"):  # one writer at a time
        return _write_features(config, manifest, texts, text_encoder)


def _write_features(
    config: EncodeConfig, manifest: dict[str, Any], texts: StoreCaptions, text_encoder: TextEncoder
) -> FeatureStore:
    writer = FeatureWriter(config.out, manifest, chunk_size=config.chunk_size, overwrite=config.overwrite)
    width = len(texts.prompt_ids)
    total = sum(len(writer.chunk_rows(chunk)) for chunk in writer.pending) * width
    with tqdm(total=total, unit="caption", desc="encode", disable=not config.progress or total == 0) as bar:
        for chunk in writer.pending:
            images = writer.chunk_rows(chunk)
            captions = texts.rows(images)
            vectors = encode_unique(text_encoder, captions, batch_size=config.batch_size)
            if config.normalize:
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            features = vectors.reshape(len(images), width, text_encoder.dim).astype(np.float16)
            check_finite(features, images, captions, texts.prompt_ids)
            writer.write(chunk, features)
            bar.update(len(images) * width)
    return writer.finish()


def check_finite(features: np.ndarray, images: range, captions: list[str], prompt_ids: tuple[str, ...]) -> None:
    """Refuse NaN/inf features (fp16 turns values beyond +-65504 into inf), naming the image, prompt and caption
    (`captions`: the chunk's, in (image, prompt) order)."""
    bad = np.argwhere(~np.isfinite(features).all(axis=2))
    if bad.size:
        offset, prompt = (int(i) for i in bad[0])
        image = images.start + offset
        caption = captions[offset * len(prompt_ids) + prompt]
        raise InputError(
            f"image {image}, prompt {prompt_ids[prompt]}: the text encoder gave a non-finite feature "
            f"(NaN, inf, or beyond float16's range) for the caption {caption[:80]!r}; "
            f"{len(bad)} such feature(s) in this chunk, nothing of it was stored"
        )


def encode_unique(encoder: TextEncoder, texts: list[str], *, batch_size: int) -> np.ndarray:
    """`encoder.encode(texts)`, encoding each distinct text once (VLMs often repeat a caption verbatim)."""
    first: dict[str, int] = {}
    inverse = np.fromiter((first.setdefault(text, len(first)) for text in texts), dtype=np.int64, count=len(texts))
    return encoder.encode(list(first), batch_size=batch_size)[inverse]


def feature_manifest(store: CaptionStore, digest: str, encoder: TextEncoder, normalize: bool) -> dict[str, Any]:
    """The manifest of the features of `store` (whose captions hash to `digest`, `StoreCaptions.digest`) under
    `encoder`: everything that defines them, nothing else."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "encoder": encoder.name,
        "encoder_dtype": encoder.dtype,
        "dim": int(encoder.dim),
        "normalized": bool(normalize or encoder.normalized),
        "dtype": "float16",
        "prompt_ids": list(store.prompt_ids),
        "num_images": store.num_images,
        "dataset_fingerprint": store.manifest["dataset_fingerprint"],
        "caption_store_fingerprint": store.fingerprint(),
        "caption_model_id": store.manifest["model_id"],
        "captions_digest": digest,
    }
