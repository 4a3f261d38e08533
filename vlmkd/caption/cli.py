"""`vlmkd caption` (`vlmkd-caption`) and `vlmkd caption-info`: thin argparse layers over the runner and store."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from vlmkd.arguments import ArgumentParser
from vlmkd.caption.config import CaptionConfig
from vlmkd.caption.engines import ENGINES, GenerationSettings
from vlmkd.caption.engines.hf import DTYPES
from vlmkd.caption.engines.openai import DEFAULT_API_KEY_ENV, DEFAULT_CONCURRENCY, SERVED_MODEL_CHOICES, RetryPolicy
from vlmkd.caption.prompts import shipped_prompt_sets
from vlmkd.caption.runner import (
    DEFAULT_SHARD_SIZE,
    REFUSED_PREFIX,
    UNUSABLE_PREFIX,
    CaptionReport,
    run_captioning,
)
from vlmkd.caption.store import CaptionStore
from vlmkd.data import load_image_list
from vlmkd.reporting.gallery import GalleryOptions, gallery_summary, write_gallery

FAILURES_SHOWN = 20
SUBCOMMANDS = {  # `vlmkd caption NAME ...`: module:function
    "import": "vlmkd.caption.transfer_cli:import_main",
    "export": "vlmkd.caption.transfer_cli:export_main",
    "merge": "vlmkd.caption.merge:main",
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="vlmkd-caption",
        description="Caption every image of a dataset with a VLM, once per prompt (General + T1-T4 by default), "
        "into a sharded Parquet caption store. Reruns resume; finished shards are never rewritten.",
        epilog="Several processes share a store through --num-shards/--shard-index, or automatically under "
        "torchrun (RANK/WORLD_SIZE): rank r writes shards r, r+W, r+2W... Captions you already have: "
        "`vlmkd caption import FILE --dataset DATASET --out STORE`; a store to JSONL: `vlmkd caption export`; "
        "stores captioned on several machines into one: `vlmkd caption merge OUT STORE...`.",
    )
    parser.add_argument("dataset", type=Path, help="list file (`relative/path label` lines) or ImageFolder dir")
    parser.add_argument(
        "--model",
        default=None,
        help="model directory (or a cached Hugging Face id); with --engine openai the served model's name "
        "(default: the one model the servers report)",
    )
    parser.add_argument("--out", required=True, type=Path, help="caption store directory (created or resumed)")
    parser.add_argument(
        "--engine",
        choices=ENGINES.names(),
        default="hf",
        help="; ".join(f"{entry.name}: {entry.description}" for entry in ENGINES.entries()),
    )
    parser.add_argument(
        "--prompts",
        default=None,
        metavar="FILE_OR_NAME",
        help=f"prompt-set YAML/JSON file, or a set shipped with vlmkd by name: {', '.join(shipped_prompt_sets())} "
        "(default: the shipped General + T1-T4)",
    )
    parser.add_argument("--root", type=Path, default=None, help="image root for a list file (default: its folder)")
    parser.add_argument("--classnames", type=Path, default=None, help="class names, one per line, in label order")
    gen = parser.add_argument_group("generation")
    gen.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="captions per batch at most (batches hold whole images with all their prompts, at least one)",
    )
    gen.add_argument(
        "--batch-tokens", type=int, default=None, metavar="N",
        help="size batches by work instead of --batch-size: whole images while their captions' estimated tokens "
        "(image, prompt and new tokens of each, as held in the KV cache) fit in N",
    )  # fmt: skip
    gen.add_argument("--max-new-tokens", type=int, default=32, help="caption length limit, in tokens")
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0, help="with --do-sample")
    gen.add_argument("--top-p", type=float, default=1.0, help="with --do-sample")
    gen.add_argument("--seed", type=int, default=0, help="with --do-sample: each batch is seeded with it")
    gen.add_argument("--num-beams", type=int, default=1, help="beam search width (1: greedy or sampled)")
    gen.add_argument("--device", default="cpu", help="cpu, cuda (this rank's GPU under torchrun), cuda:N (hf only)")
    gen.add_argument(
        "--dtype", choices=DTYPES, default=None,
        help="model weights' dtype (auto: as saved; default float32, for --engine trt auto: TensorRT-LLM has no fp32)",
    )  # fmt: skip
    gen.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code to run")
    trt = parser.add_argument_group("TensorRT-LLM (--engine trt)")
    trt.add_argument(
        "--kv-cache-reuse", choices=("on", "off"), default=None,
        help="KV-cache block reuse (default: on for the models TensorRT-LLM supports it for: LLaVA-NeXT, Qwen2-VL, "
        "Qwen2.5-VL)",
    )  # fmt: skip
    servers = parser.add_argument_group("servers (--engine openai)")
    servers.add_argument(
        "--api-base", action="append", default=[], metavar="URL",
        help="an OpenAI-compatible server, e.g. http://node1:8000/v1 (repeat for each server, or one load balancer)",
    )  # fmt: skip
    servers.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY,
        help=f"requests in flight over all servers (default {DEFAULT_CONCURRENCY})",
    )  # fmt: skip
    servers.add_argument(
        "--api-key-env", default=DEFAULT_API_KEY_ENV, metavar="NAME",
        help=f"environment variable holding the API key, sent as a bearer token if set (default {DEFAULT_API_KEY_ENV})",
    )  # fmt: skip
    servers.add_argument(
        "--request-timeout", type=positive_seconds, default=RetryPolicy.request_timeout_s, metavar="S",
        help="seconds one attempt may take before it is retried",
    )  # fmt: skip
    servers.add_argument(
        "--dead-after", type=positive_seconds, default=RetryPolicy.dead_after_s, metavar="S",
        help="seconds a server may stay unreachable before the run gives up on it",
    )  # fmt: skip
    servers.add_argument(
        "--header", action="append", default=[], type=header_setting, metavar="NAME=VALUE",
        help="an HTTP header sent with every request, for gateways (e.g. api-key=...; repeatable); values of "
        "secret-looking names (key, token, auth...) are masked in every message",
    )  # fmt: skip
    servers.add_argument(
        "--ca-bundle", type=Path, default=None, metavar="PEM",
        help="CA certificates to trust for https:// servers (default: the system's, or SSL_CERT_FILE)",
    )  # fmt: skip
    servers.add_argument(
        "--max-caption-chars", type=int, default=None, metavar="N",
        help="a longer answer is that image's failure (default: 32 per --max-new-tokens, at least 1024)",
    )  # fmt: skip
    servers.add_argument(
        "--served-model", choices=SERVED_MODEL_CHOICES, default="require",
        help="a server whose answers name another model than --model: given up (require), or its answers kept "
        "and the name it gave logged and recorded in each caption's shard (record)",
    )  # fmt: skip
    store = parser.add_argument_group("store")
    store.add_argument(
        "--num-shards", type=int, default=None,
        help=f"shards in a new store (default: one per {DEFAULT_SHARD_SIZE} images, at least one per rank)",
    )  # fmt: skip
    store.add_argument("--shard-index", type=int, default=None, help="write only this shard")
    store.add_argument("--overwrite", action="store_true", help="replace a store made with other settings")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads (default: the idle cores, at most 4; torch's one per core is many times slower on "
        "a busy machine)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def positive_seconds(text: str) -> float:
    """A duration flag: a finite number of seconds > 0 (`nan`, `inf` and `-5` are refused in one line)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def header_setting(text: str) -> tuple[str, str]:
    """`NAME=VALUE` of a --header flag."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("must be NAME=VALUE (e.g. api-key=...)")
    return name.strip(), value


def main(argv: list[str] | None = None) -> int:
    """`vlmkd-caption DATASET --model PATH --out STORE [...]`, or `vlmkd caption import|export ...`."""
    if argv and argv[0] in SUBCOMMANDS:  # a dataset literally named so is reachable as ./import
        import importlib

        module, function = SUBCOMMANDS[argv[0]].split(":")
        return getattr(importlib.import_module(module), function)(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.engine == "openai" and not args.api_base:
        parser.error("--engine openai needs --api-base URL (one per server, or a load balancer)")
    if args.engine != "openai" and args.model is None:
        parser.error(f"--engine {args.engine} needs --model")
    if args.engine != "openai" and args.api_base:
        parser.error("--api-base is for --engine openai")
    if args.engine != "trt" and args.kv_cache_reuse:
        parser.error("--kv-cache-reuse is for --engine trt")
    if args.dtype is None:
        args.dtype = "auto" if args.engine == "trt" else "float32"
    options = {}
    if args.engine == "trt" and args.kv_cache_reuse:
        options = {"kv_cache_reuse": args.kv_cache_reuse == "on"}
    if args.engine == "openai":
        policy = {"request_timeout_s": args.request_timeout, "dead_after_s": args.dead_after}
        options = {"api_bases": args.api_base, "concurrency": args.concurrency, "api_key_env": args.api_key_env,
                   "policy": policy, "headers": dict(args.header),
                   "ca_bundle": str(args.ca_bundle) if args.ca_bundle else None,
                   "max_caption_chars": args.max_caption_chars, "served_model": args.served_model}  # fmt: skip
    generation = GenerationSettings.from_namespace(args)
    config = CaptionConfig.from_namespace(
        args, generation=generation, engine_options=options, progress=not args.no_progress
    )
    report = run_captioning(config)
    print(summary(report))
    return 0


def summary(report: CaptionReport) -> str:
    """The end-of-run summary: work done, speed, store state, unreadable images by path."""
    store = report.store
    missing = store.missing_shards()
    state = "complete" if not missing else f"{len(missing)} of {store.num_shards} shards still missing"
    elsewhere = len(report.shards_taken_elsewhere)
    by_others = f", {elsewhere} captioned by another process at the same time" if elsewhere else ""
    if not report.shards_written:
        return f"nothing to do: this process's {len(report.shards_already_done)} shards were already written" \
            f"{by_others}; store {state}: {store.path}"  # fmt: skip
    threads = f"{report.threads} torch thread{'s' * (report.threads != 1)}"
    lines = [
        f"captioned {report.images} images x {len(store.prompt_ids)} prompts -> {report.captions} captions "
        f"in {report.seconds:.1f} s ({report.images_per_second:.1f} images/s, {threads}; writing shards "
        f"{_share(report.store_seconds, report.seconds)}, {_share(report.store_wait_seconds, report.seconds, '')} "
        "waited for)",
        f"shards: {len(report.shards_written)} written, {len(report.shards_already_done)} already done{by_others}; "
        f"store {state}: {store.path}",
    ]
    if report.failed:
        refused = sum(reason.startswith(REFUSED_PREFIX) for _, _, reason in report.failed)
        unusable = sum(reason.startswith(UNUSABLE_PREFIX) for _, _, reason in report.failed)
        if refused or unusable:
            kinds = [f"{len(report.failed) - refused - unusable} unreadable"]
            kinds += [f"{refused} refused by the servers"] * bool(refused)
            kinds += [f"{unusable} with empty or oversized answers"] * bool(unusable)
            lines.append(f"{len(report.failed)} images skipped ({', '.join(kinds)}; recorded in the store):")
        else:
            lines.append(f"{len(report.failed)} unreadable images skipped (recorded in the store):")
        lines += [f"  {path}: {reason}" for _, path, reason in report.failed[:FAILURES_SHOWN]]
        if len(report.failed) > FAILURES_SHOWN:
            lines.append(f"  ... and {len(report.failed) - FAILURES_SHOWN} more (see `vlmkd caption-info --failed`)")
    return "\n".join(lines)


def _share(part: float, whole: float, of: str = " of wall time") -> str:
    return f"{100 * part / whole:.1f}%{of}" if whole > 0 else "n/a"


def info_main(argv: list[str] | None = None) -> int:
    """`vlmkd caption-info STORE`: what a caption store holds and how it was made."""
    parser = ArgumentParser(prog="vlmkd caption-info", description="Summarise a caption store.")
    parser.add_argument("store", type=Path)
    parser.add_argument("--failed", action="store_true", help="list every unreadable image")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    page = parser.add_argument_group(
        "HTML gallery", "--html OUT writes static, self-contained pages (no server, no network): sampled images "
        "per class with every prompt's caption, the unreadable images, the settings and caption diversity",
    )  # fmt: skip
    page.add_argument("--html", type=Path, default=None, metavar="OUT", help="gallery file (page 1; more: OUT-2.html)")
    page.add_argument("--dataset", type=Path, default=None, help="the captioned dataset: shows images, by class")
    page.add_argument("--root", type=Path, default=None, help="image root for a list-file --dataset")
    page.add_argument("--classnames", type=Path, default=None, help="class names for --dataset, one per line")
    page.add_argument("--features", type=Path, default=None, help="feature store of these captions: adds cosines")
    defaults = GalleryOptions()
    page.add_argument("--per-class", type=int, default=defaults.per_class, help="images shown per class")
    page.add_argument("--classes-per-page", type=int, default=defaults.classes_per_page, help="classes on each page")
    page.add_argument("--thumb-size", type=int, default=defaults.thumb_size, help="thumbnail size in pixels")
    page.add_argument("--seed", type=int, default=defaults.seed, help="seed of the image sample")
    args = parser.parse_args(argv)
    store = CaptionStore.open(args.store)
    if args.html is not None:
        return _gallery(store, args)
    info = store_info(store)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
        return 0
    m = store.manifest
    done = m["num_shards"] - len(info["missing_shards"])
    print(f"caption store {store.path}  (fingerprint {info['fingerprint']})")
    print(f"  dataset     {m['num_images']} images, fingerprint {m['dataset_fingerprint']}")
    prompt_set = m["prompt_set"]
    print(f"  prompts     {prompt_set['name']} ({prompt_set['fingerprint']}): {', '.join(store.prompt_ids)}")
    print(f"  engine      {m['engine']}, model {m['model_id']} ({m['model_fingerprint']})")
    print(f"  generation  {', '.join(f'{k}={v}' for k, v in sorted(m['generation'].items()))}")
    print(f"  shards      {done}/{m['num_shards']} written" + (", complete" if done == m["num_shards"] else ""))
    print(f"  captions    {info['captions']}")
    failed = info["failed"]
    print(f"  unreadable  {len(failed)} images")
    shown = failed if args.failed else failed[:FAILURES_SHOWN]
    for item in shown:
        print(f"    [{item['image_index']}] {item['image_path']}: {item['reason']}")
    if len(shown) < len(failed):
        print(f"    ... {len(failed) - len(shown)} more (--failed lists all)")
    return 0


def _gallery(store: CaptionStore, args: argparse.Namespace) -> int:
    from vlmkd.encode.store import FeatureStore

    dataset = load_image_list(args.dataset, root=args.root, classnames=args.classnames) if args.dataset else None
    features = FeatureStore.open(args.features) if args.features else None
    options = GalleryOptions(args.per_class, args.classes_per_page, args.thumb_size, args.seed)
    print(gallery_summary(write_gallery(store, args.html, dataset=dataset, features=features, options=options)))
    return 0


def store_info(store: CaptionStore) -> dict:
    """A JSON-able summary of a store (the `--json` output)."""
    missing = store.missing_shards()
    captions = sum(store.shard_rows(k) for k in range(store.num_shards) if k not in missing)
    return {
        "path": str(store.path),
        "fingerprint": store.fingerprint(),
        "manifest": store.manifest,
        "missing_shards": missing,
        "captions": captions,
        "failed": [{"image_index": i, "image_path": p, "reason": r} for i, p, r in store.failed_images()],
        "served_as": {
            name: [{"image_index": i, "prompt_id": p} for i, p in captions]
            for name, captions in store.served_as().items()
        },  # fmt: skip
    }
