"""`vlmkd models make-tiny blip|llava|llava-next DIR`: a local VLM with random weights, to try the CLI offline."""

from __future__ import annotations

from pathlib import Path

from vlmkd.arguments import ArgumentParser
from vlmkd.testing.tiny_models import _ARCHITECTURES, RANDOM_WEIGHTS_NOTICE, TINY_VLMS, make_tiny_vlm


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="vlmkd models", description="Local vision-language models for vlmkd caption.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tiny = commands.add_parser(
        "make-tiny",
        help="save a tiny VLM with RANDOM weights (BLIP, LLaVA or LLaVA-NeXT) to try vlmkd caption without a download",
        description="Save a tiny vision-language model of a real architecture with RANDOM weights (never "
        "trained: its captions are gibberish) into DIR, loadable by `vlmkd caption --model DIR`. For trying the "
        "commands offline; real captions need a real model (e.g. LLaVA-NeXT, BLIP-large) from a model hub. "
        "llava-next has LLaVA-NeXT-7B's image-token counts (anyres grid scaled down), for realistic speed trials.",
    )
    tiny.add_argument("kind", choices=list(TINY_VLMS), metavar="{" + ",".join(TINY_VLMS) + "}", help="architecture")
    tiny.add_argument("dir", type=Path, metavar="DIR", help="directory to write (created)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.add_argument("--overwrite", action="store_true", help="replace DIR if it is not empty")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = make_tiny_vlm(args.kind, args.dir, seed=args.seed, overwrite=args.overwrite)
    print(f"saved a tiny {args.kind} to {out}: " + RANDOM_WEIGHTS_NOTICE.format(arch=_ARCHITECTURES[args.kind]))
    print(f"try: vlmkd caption DATASET --model {out} --out STORE")
    return 0
