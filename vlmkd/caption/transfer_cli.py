"""`vlmkd caption import` and `vlmkd caption export`: thin argparse layers over `vlmkd.caption.transfer`."""

from __future__ import annotations

from pathlib import Path

from vlmkd.arguments import ArgumentParser
from vlmkd.caption.prompts import shipped_prompt_sets
from vlmkd.caption.transfer import import_captions


def import_main(argv: list[str] | None = None) -> int:
    """`vlmkd caption import SOURCE --dataset DATASET --out STORE [--prompts ...]`."""
    parser = ArgumentParser(
        prog="vlmkd caption import",
        description="Read captions you already have (dataset alt-text, human captions, captions an API model "
        "wrote) from JSONL / CSV / Parquet into a caption store that vlmkd-encode reads. Columns: image_index "
        "(0-based, dataset order) and/or image_path, prompt_id, caption (or text). Every (image, prompt) pair "
        "of the dataset must appear exactly once.",
    )
    parser.add_argument("source", type=Path, help="caption file: .jsonl, .csv or .parquet")
    parser.add_argument("--dataset", required=True, type=Path, help="the dataset the captions describe")
    parser.add_argument("--out", required=True, type=Path, help="caption store directory (created)")
    parser.add_argument(
        "--prompts",
        default=None,
        metavar="FILE_OR_NAME",
        help="prompt-set file, or a shipped set by name, whose ids the file uses; its templates are recorded "
        f"(shipped: {', '.join(shipped_prompt_sets())}) (default: the ids found in the file, templates unknown)",
    )
    parser.add_argument("--prompt-id", default=None, help="prompt id of every row of a file without prompt_id")
    parser.add_argument("--root", type=Path, default=None, help="image root for a list file (default: its folder)")
    parser.add_argument("--classnames", type=Path, default=None, help="class names, one per line, in label order")
    parser.add_argument(
        "--num-shards", type=int, default=None, help="shards of the store (default: one per 256 images)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a store made from another file or settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from vlmkd.data import load_image_list

    dataset = load_image_list(args.dataset, root=args.root, classnames=args.classnames)
    report = import_captions(
        args.source,
        dataset,
        args.out,
        prompts=args.prompts,
        prompt_id=args.prompt_id,
        num_shards=args.num_shards,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    store = report.store
    done = "imported" if report.shards_written else "already imported (nothing to do)"
    print(
        f"{done}: {report.rows} captions ({store.num_images} images x {len(store.prompt_ids)} prompts: "
        f"{', '.join(store.prompt_ids)}) from {report.source} (sha256 {report.sha256[:16]}...) -> {store.path}"
    )
    return 0


def export_main(argv: list[str] | None = None) -> int:
    """`vlmkd caption export STORE --out FILE.jsonl`."""
    parser = ArgumentParser(
        prog="vlmkd caption export",
        description="Write every caption of a complete caption store to JSONL, one object per line "
        "(image_index, image_path, prompt_id, caption) in (image, prompt) order; `vlmkd caption import` reads it "
        "back to the same rows.",
    )
    parser.add_argument("store", type=Path, help="caption store directory")
    parser.add_argument("--out", required=True, type=Path, help="JSONL file to write (replaced atomically)")
    args = parser.parse_args(argv)
    from vlmkd.caption.store import CaptionStore
    from vlmkd.caption.transfer import export_captions

    store = CaptionStore.open(args.store)
    rows = export_captions(store, args.out)
    print(f"exported {rows} captions ({store.num_images} images x {len(store.prompt_ids)} prompts) -> {args.out}")
    failed = store.failed_images()
    if failed:
        print(
            f"note: {len(failed)} images have no captions (unreadable when captioned, e.g. {failed[0][1]}); "
            "importing this file needs a row for each of them"
        )
    return 0
