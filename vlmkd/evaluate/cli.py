"""`vlmkd-eval CKPT DATASET`: Many/Medium/Few/All top-1, per-class plot, t-SNE maps, JSON and a table."""

from __future__ import annotations

from vlmkd.arguments import ArgumentParser
from vlmkd.threads import add_threads_flag, torch_threads


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="vlmkd-eval",
        description="Evaluate a classifier saved by vlmkd-train: top-1 on the Many / Medium / Few / All splits "
        "(by training images per class), a per-class accuracy plot, and t-SNE maps of image features and, "
        "with a feature store, of caption features.",
    )
    parser.add_argument("checkpoint", help="run directory or epoch_NNNN checkpoint of vlmkd-train")
    parser.add_argument("dataset", help="test set: list file or ImageFolder directory")
    parser.add_argument("--out", help="where metrics.json and the plots go (default: CKPT/eval)")
    parser.add_argument("--features", help="caption feature store for the caption t-SNE (default: the training one)")
    parser.add_argument("--train", help="dataset the feature store was encoded from (default: the training set)")
    parser.add_argument("--many-threshold", type=int, default=100, help="Many: more training images than this")
    parser.add_argument("--few-threshold", type=int, default=20, help="Few: fewer training images than this")
    parser.add_argument("--no-plots", action="store_true", help="only compute and print the accuracies")
    parser.add_argument("--tsne-max", type=int, default=2000, help="t-SNE points at most (a seeded subsample)")
    parser.add_argument(
        "--save-features", action="store_true",
        help="also write the test images' features and the VLM-KD loss module (adaptor, temperature) to OUT/features",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=256, help="test images per forward pass")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights and batches (faster convolutions)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone first")
    add_threads_flag(parser, "torch and t-SNE")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or stage times")
    return parser


def main(argv: list[str] | None = None) -> int:
    from threadpoolctl import threadpool_limits

    from vlmkd.evaluate.config import EvalConfig
    from vlmkd.evaluate.metrics import format_table
    from vlmkd.evaluate.run import run_evaluation

    args = build_parser().parse_args(argv)
    config = EvalConfig.from_namespace(args, plots=not args.no_plots, progress=not args.no_progress)
    with torch_threads(args.threads) as threads, threadpool_limits(threads):  # and scikit-learn's t-SNE's OpenMP
        result = run_evaluation(config)
    print(format_table(result.splits))
    print(f"results: {result.metrics_file}")
    for name, path in result.plots.items():
        note = result.notes.get(name)
        print(f"plot ({name}): {path}" + (f": {note}" if note else ""))
    if "features" in result.record:
        print(f"features: {result.record['features']}")
    return 0
