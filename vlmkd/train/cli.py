"""`vlmkd-train`: every `TrainConfig` field is a flag; `--config` (file or preset) sets the defaults."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import fields

from vlmkd.arguments import ArgumentParser, format_default
from vlmkd.threads import MAX_DEFAULT_THREADS
from vlmkd.train.config import (
    DEFAULT_KD_WEIGHT,
    DEFAULT_VLMKD_WEIGHT,
    TrainConfig,
    choices,
    field_default,
    list_presets,
    read_config_file,
    resolve_config,
)

HELP = {
    "train": "training dataset: a list file (`path label` lines) or an ImageFolder directory",
    "output": "run directory: checkpoints, metrics.jsonl, config.yaml and the final model",
    "features": "caption feature store from vlmkd-encode: given, the VLM-KD term is on",
    "arch": "backbone, randomly initialised",
    "width": "ResNet-32 channel multiplier (16/32/64 x width)",
    "norm": "ResNet-32 normalisation (group: independent of the per-process batch)",
    "sync_bn": "SyncBatchNorm across DDP processes (GPU only)",
    "channels_last": "keep weights and image batches in channels-last (NHWC) memory order, for faster convolutions",
    "compile": "torch.compile the backbone (the first steps pay the compilation; checkpoints are unchanged)",
    "flip": "random horizontal flips",
    "crop_scale": "random-resized-crop area fraction range, 2 values (1 1: no zoom)",
    "crop_ratio": "random-resized-crop aspect-ratio range, 2 values (1 1: square crops)",
    "mean": "normalisation mean, 3 values",
    "std": "normalisation std, 3 values",
    "task_loss": "classification loss",
    "la_tau": "tau of logit adjustment",
    "vlmkd_weight": "lambda, weight of the VLM-KD contrastive term (0: off)",
    "positives": "contrastive positives: the image's own caption, or every caption of its class",
    "negatives": "contrastive negatives: every other caption of the batch, or only those of the image's class",
    "caption_mix": "per step, one random prompt per image (sample) or the mean over prompts",
    "prompts": "prompt ids to use, comma-separated",
    "text_center": "subtract the training set's mean text feature (per prompt, over all prompts, or not)",
    "text_whiten": "also ZCA-whiten the centred text features (computed once per run from the feature store)",
    "temperature": "initial contrastive temperature",
    "learn_temperature": "learn the temperature (as a logit scale clamped at 100) or keep it fixed",
    "temperature_lr": "learning rate of the logit scale, its own parameter group (default: --lr)",
    "adaptor_lr": "learning rate of the text adaptor and image projection (default: --lr)",
    "adaptor_hidden": "hidden width of a 2-layer MLP text adaptor",
    "adaptor_bias": "give the text adaptor a bias (with centred text it only adds a direction all captions share)",
    "image_center": "subtract the (global) batch mean of the image features before the contrast",
    "image_standardize": "standardise image features per dimension over the (global) batch before the contrast",
    "image_projection": "a learnt linear map of the image features before the contrast (CLIP's image projection)",
    "projection_hidden": "make the image projection a 2-layer MLP head of this width (Linear, ReLU, Linear), so the "
    "contrast shapes the head's output rather than the classifier's features",
    "soft_targets": "soft contrastive targets: softmax of caption-caption cosine over this temperature, so "
    "near-identical captions of different images are not negatives (plain-PyTorch contrast)",
    "contrast_balance": "weight each image and caption of the contrast by its class's training count ** -1/2 "
    "(sqrt) or ** -1 (inverse), mean 1 per batch (plain-PyTorch contrast)",
    "contrast_min_count": "leave the images of classes with fewer training images than this out of the contrast "
    "(their features are shaped by the task loss alone; 0: every image; any backend)",
    "vlmkd_warmup_epochs": "ramp the VLM-KD weight linearly from 0 over these epochs",
    "vlmkd_decay": "after the warm-up, decay the VLM-KD weight linearly or by a cosine to 0 at the off epochs",
    "vlmkd_off_epochs": "train the last epochs without the VLM-KD term (weight 0): the classifier settles on its task",
    "contrastive_backend": "backend of the fused VLM-KD loss",
    "teacher": "frozen vision teacher: a classifier saved by vlmkd-train",
    "kd_weight": "weight of logit KD from --teacher (0: off)",
    "kd_temperature": "softmax temperature of logit KD",
    "batch_size": "global batch size (split across DDP processes)",
    "warmup_epochs": "linear warmup length, then cosine decay to zero",
    "amp": "autocast precision (fp16 uses a GradScaler)",
    "on_nonfinite": "on a NaN/inf loss: stop with a message naming the step, or skip the step and count it",
    "threads": "CPU threads for torch",
    "log_every": "write a metrics.jsonl record every N steps",
    "tensorboard": "also log every metrics record to TensorBoard (OUTPUT/tensorboard; needs the tensorboard extra)",
    "progress": "show a progress bar",
    "image_size": "training image size, px",
    "loader": "data loader: torch DataLoader or NVIDIA DALI",
    "num_workers": "loader worker processes (torch) or threads (DALI)",
    "epochs": "training epochs",
    "optimizer": "optimizer of the backbone, classifier and adaptor",
    "lr": "peak learning rate (after warmup)",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "seed": "seed of initialisation, sampling and augmentation",
    "device": "auto: cuda when available, else cpu",
}
# What a setting whose default is None (or empty) means, for its help text.
DEFAULT_MEANING = {
    "features": "none",
    "prompts": "all in the feature store",
    "adaptor_hidden": "a linear adaptor",
    "projection_hidden": "a linear projection",
    "soft_targets": "one-hot: each image's own caption",
    "contrastive_backend": "the fastest usable",
    "teacher": "none",
    "threads": f"the idle cores, at most {MAX_DEFAULT_THREADS}",
    "vlmkd_weight": f"{DEFAULT_VLMKD_WEIGHT} with --features, else 0",
    "vlmkd_warmup_epochs": "an eighth of --epochs",
    "kd_weight": f"{DEFAULT_KD_WEIGHT} with --teacher, else 0",
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="vlmkd-train",
        description="Train a long-tail image classifier from scratch with VLM-KD caption supervision. "
        "Settings come from the defaults, then --config, then the flags given. Under `torchrun` it runs "
        "data-parallel (gloo on CPU, nccl on GPU).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help=f"YAML file or preset name ({', '.join(list_presets())})")
    parser.add_argument(
        "--resume", nargs="?", const="auto", help="continue from a checkpoint directory (default: latest in --output)"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    hints = typing.get_type_hints(TrainConfig)
    for spec in fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        default = field_default(spec)
        meaning = DEFAULT_MEANING.get(spec.name) if default is None else format_default(default)
        text = HELP.get(spec.name, spec.name.replace("_", " "))
        if spec.name == "arch":
            from vlmkd.models.zoo import describe_archs

            text += f": {describe_archs()}"
        kwargs: dict[str, typing.Any] = {"help": f"{text} (default: {meaning})" if meaning else f"{text} (required)"}
        kind = _scalar_type(hints[spec.name])
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif spec.name == "prompts":
            kwargs |= {"type": lambda text: [p for p in text.split(",") if p], "metavar": "ID,ID"}
        elif typing.get_origin(kind) is list:
            kwargs |= {"type": typing.get_args(kind)[0], "nargs": spec.metadata.get("length", "+"), "metavar": "X"}
        else:
            kwargs |= {"type": kind, "choices": choices(spec.name)}
        parser.add_argument(flag, dest=spec.name, **kwargs)
    return parser


def _scalar_type(hint: typing.Any) -> typing.Any:
    """`X` for a hint `X | None`, else the hint itself."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config", None)
    resume = args.pop("resume", None)
    print_only = args.pop("print_config", False)
    config = resolve_config(read_config_file(config_file) if config_file else {}, args)
    if print_only:  # shows the settings without needing the files yet; `train` checks every path first
        import torch
        import yaml

        from vlmkd.threads import default_threads
        from vlmkd.train.header import run_header

        device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        header = run_header(config, threads=config.threads or default_threads(), device=device)
        notes = [f"warning: {note}" for note in config.inert_settings()]
        print("".join(f"# {line}\n" for line in header + notes), end="")
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    from vlmkd.train.trainer import train

    result = train(config, resume=resume)
    if not result.main_process:  # under torchrun, rank 0 says once what the job did
        return 0
    if result.skipped_steps:
        print(f"skipped {result.skipped_steps} step(s) with a non-finite loss")
    print(f"model: {result.output} (reused, nothing trained)" if result.reused else f"model saved to {result.output}")
    return 0
