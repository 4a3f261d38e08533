"""`vlmkd encode` / `vlmkd-encode`: turn a caption store into a fp16 feature store."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from vlmkd.arguments import ArgumentParser
from vlmkd.encode.config import EncodeConfig
from vlmkd.encode.runner import run_encoding
from vlmkd.encode.text_encoder import DEFAULT_ENCODER, DTYPES
from vlmkd.threads import add_threads_flag, torch_threads


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="vlmkd-encode",
        description="Encode every caption of a caption store with a text encoder into a feature store: "
        "float16 features (images x prompts x dim) in features.npy plus manifest.json. An interrupted run "
        "resumes where it stopped when rerun with the same arguments.",
    )
    parser.add_argument("captions", type=Path, metavar="CAPTIONS", help="caption store directory (vlmkd-caption)")
    parser.add_argument("--out", type=Path, required=True, metavar="FEATURES", help="feature store directory")
    parser.add_argument(
        "--encoder",
        metavar="NAME_OR_PATH",
        default=None,
        help="sentence-transformers or Hugging Face encoder: a directory or a cached hub id "
        f"(default: {DEFAULT_ENCODER}, bundled offline)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="captions per forward pass")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device, help=f"torch device (default here: {default_device})")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="compute dtype")
    parser.add_argument(
        "--no-normalize", dest="normalize", action="store_false", help="store features without L2 normalisation"
    )
    parser.add_argument("--chunk-size", type=int, default=1024, help="images per committed chunk, the unit of resuming")
    parser.add_argument("--overwrite", action="store_true", help="replace a feature store made by another job")
    add_threads_flag(parser)
    parser.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `vlmkd encode`; user errors propagate as `VlmkdError` for the dispatcher to print."""
    args = build_parser().parse_args(argv)
    before = _finished_manifest(args.out)
    start = time.perf_counter()
    config = EncodeConfig.from_namespace(args, progress=not args.quiet)
    with torch_threads(args.threads):
        store = run_encoding(config)
    images, prompts, dim = store.features.shape
    encoder = store.manifest["encoder"]
    if store.manifest == before:
        done = "reused: it was already complete, nothing encoded"
    else:
        done = f"encoded in {time.perf_counter() - start:.1f} s"
    print(f"{store.path}: {images} images x {prompts} prompts x {dim} float16 features ({encoder}); {done}")
    warning = served_as_warning(config.captions)
    if warning:
        print(f"vlmkd encode: warning: {warning}", file=sys.stderr)
    return 0


def served_as_warning(captions: Path) -> str | None:
    """One line when the store holds captions whose server said it served another model than the one asked for
    (kept with `vlmkd-caption --served-model record`): the features then mix what those models wrote."""
    from vlmkd.caption.store import CaptionStore

    store = CaptionStore.open(captions)
    served = store.served_as()
    if not served:
        return None
    total = sum(len(found) for found in served.values())
    names = ", ".join(f"{name!r} {len(found)}" for name, found in sorted(served.items()))
    return (
        f"{captions}: {total} captions were answered by a server as another model than {store.manifest['model_id']!r} "
        f"({names}); `vlmkd caption-info {captions} --json` lists them under served_as"
    )


def _finished_manifest(out: Path) -> dict | None:
    """The manifest of a complete feature store at `out` before this run (None: none there, or unreadable)."""
    from vlmkd.encode.store import FeatureStore
    from vlmkd.errors import VlmkdError

    try:
        return FeatureStore.open(out).manifest if (out / "manifest.json").is_file() else None
    except (VlmkdError, OSError, ValueError):
        return None
