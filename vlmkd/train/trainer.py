"""The training loop: classifier + VLM-KD objective, AMP, DDP, per-epoch checkpoints and exact resume."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vlmkd.data import ImageList, load_image_list
from vlmkd.errors import InputError, StoreMismatchError, VlmkdError
from vlmkd.losses import TaskLoss, VlmkdObjective
from vlmkd.models import Classifier, ModelSpec, build_model
from vlmkd.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_classifier,
    save_checkpoint,
    save_classifier,
    sweep_temporary,
)
from vlmkd.train.config import TrainConfig, write_config
from vlmkd.train.distributed import Dist, barrier, cleanup, gather_batch, init_distributed, mean_across
from vlmkd.train.metrics_log import MetricsLog
from vlmkd.train.schedule import build_optimizer, lr_at
from vlmkd.train.text import build_contrastive, feature_fingerprint, open_text_source

LOSS_KEYS = ("loss", "task_loss", "vlmkd_loss", "kd_loss")
# Settings that may differ between a run and its resumption without changing the result.
RESUME_FREE = frozenset({"output", "progress", "log_every", "num_workers"})
IDENTITY_NAMES = {
    "train_fingerprint": "training dataset (--train)",
    "features_fingerprint": "feature store (--features)",
}


class NonFiniteLossError(VlmkdError):
    """A loss term became NaN or infinite and `on_nonfinite` is `stop`."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run left behind."""

    output: Path
    steps: int
    skipped_steps: int
    last_epoch: dict[str, float]


class TrainStep(nn.Module):
    """Classifier and objective in one module, so DDP averages the adaptor's gradients with the model's."""

    def __init__(self, model: Classifier, objective: VlmkdObjective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        text: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        logits, features = self.model(images, return_features=True)
        return self.objective(logits, features, labels, text=text, teacher_logits=teacher_logits)


def train(config: TrainConfig, resume: str | None = None) -> TrainResult:
    """Run `config` to the end; `resume` is a checkpoint directory or "auto" (latest in the output dir)."""
    config.validate()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    ctx = init_distributed(config.device)
    try:
        return _train(config, resume, ctx)
    finally:
        cleanup(ctx)


def _train(config: TrainConfig, resume: str | None, ctx: Dist) -> TrainResult:
    from vlmkd.data.loaders import build_loader

    output = Path(config.output)
    if config.batch_size % ctx.world_size:
        raise InputError(f"batch_size {config.batch_size} is not divisible by {ctx.world_size} processes")
    torch.manual_seed(config.seed)
    dataset = load_image_list(config.train)
    counts = torch.as_tensor(dataset.class_counts())
    spec = ModelSpec(config.arch, dataset.num_classes, config.width, config.norm)
    model = build_model(spec).to(ctx.device)
    text = open_text_source(config, dataset) if config.vlmkd_weight > 0 else None
    contrastive = build_contrastive(config, text.dim, model.feature_dim) if text is not None else None
    objective = VlmkdObjective(
        TaskLoss(config.task_loss, counts, tau=config.la_tau),
        contrastive,
        vlmkd_weight=config.vlmkd_weight,
        kd_weight=config.kd_weight,
        kd_temperature=config.kd_temperature,
        gather=gather_batch,
    ).to(ctx.device)
    teacher = _load_teacher(config, dataset, ctx.device)
    step_module: nn.Module = TrainStep(model, objective)
    if ctx.enabled:
        if config.sync_bn:
            step_module = nn.SyncBatchNorm.convert_sync_batchnorm(step_module)
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    optimizer = build_optimizer([model, objective], config.optimizer, config.lr, config.weight_decay, config.momentum)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.amp == "fp16")
    loader = build_loader(
        dataset,
        loader=config.loader,
        train=True,
        batch_size=config.batch_size // ctx.world_size,
        image_size=config.image_size,
        num_workers=config.num_workers,
        seed=config.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        drop_last=True,
        mean=config.mean,
        std=config.std,
        flip=config.flip,
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise InputError(f"{config.train}: {len(dataset)} images make no full batch of {config.batch_size}")
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)

    start_epoch, step, skipped = 0, 0, 0
    checkpoint = _find_resume(resume, output)
    identity = {"train_fingerprint": dataset.fingerprint(), "features_fingerprint": feature_fingerprint(config)}
    if checkpoint is not None:
        start_epoch, step, skipped = _restore(checkpoint, config, identity, model, objective, optimizer, scaler)
    if ctx.is_main:
        sweep_temporary(output)
        write_config(config, output / "config.yaml")
    log = MetricsLog(output / "metrics.jsonl", resume_step=step if checkpoint else None) if ctx.is_main else None
    model_meta = {
        "classnames": list(dataset.classnames),
        "train_counts": counts.tolist(),
        "train_fingerprint": dataset.fingerprint(),
    }
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    summary: dict[str, float] = {}

    for epoch in range(start_epoch, config.epochs):
        step_module.train()
        loader.set_epoch(epoch)
        sampler = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 1009 + ctx.rank)
        sums = torch.zeros(len(LOSS_KEYS), dtype=torch.float64)
        counted, epoch_skipped, started = 0, 0, time.perf_counter()
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (config.progress and ctx.is_main),
            leave=False,
        )
        for images, labels, indices in loader:
            images, labels = images.to(ctx.device, non_blocking=True), labels.to(ctx.device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup_steps, config.lr)
            batch_text = text(indices, sampler).to(ctx.device) if text is not None else None
            teacher_logits = None
            with torch.autocast(ctx.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(images)
                parts = step_module(images, labels, text=batch_text, teacher_logits=teacher_logits)
            values = mean_across(torch.stack([parts[k].detach().float() for k in LOSS_KEYS]).cpu())
            finite = bool(torch.isfinite(values).all())
            if not finite and config.on_nonfinite == "stop":
                named = ", ".join(f"{k}={v:.4g}" for k, v in zip(LOSS_KEYS, values.tolist(), strict=True))
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} (epoch {epoch + 1}): {named}; "
                    "rerun with --on-nonfinite skip to skip such steps, or lower --lr / use --amp bf16"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(parts["loss"]).backward()  # also on skipped steps: DDP expects every backward
            if finite:
                scaler.step(optimizer)
                scaler.update()
                sums += values.double()
                counted += 1
            else:
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                epoch_skipped += 1
            step += 1
            bar.update(1)
            if finite:
                bar.set_postfix(loss=f"{values[0].item():.3f}")
            if log is not None and (step % config.log_every == 0 or not finite):
                record = {"kind": "step", "epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"]}
                record |= dict(zip(LOSS_KEYS, values.tolist(), strict=True))
                record |= _temperature(objective) | {"skipped": not finite}
                log.write(record)
        bar.close()
        seconds = time.perf_counter() - started
        summary = {k: s / max(counted, 1) for k, s in zip(LOSS_KEYS, sums.tolist(), strict=True)}
        summary |= {"skipped_steps": epoch_skipped, "seconds": seconds}
        summary |= {"images_per_s": steps_per_epoch * config.batch_size / seconds}
        if ctx.is_main:
            assert log is not None
            log.write({"kind": "epoch", "epoch": epoch + 1, "step": step, **summary, **_temperature(objective)})
            train_state = {
                "optimizer": optimizer.state_dict(),
                "objective": objective.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state()},
            }
            info = {"step": step, "skipped_steps": skipped, "config": config.to_dict(), **identity}
            save_checkpoint(
                output,
                epoch + 1,
                model=model,
                spec=spec,
                model_meta=model_meta,
                train_state=train_state,
                info=info,
            )
            print(_epoch_line(epoch + 1, config.epochs, summary), flush=True)
        barrier()
    if ctx.is_main:
        save_classifier(output, model, spec, {**model_meta, "config": config.to_dict()})
    barrier()
    return TrainResult(output=output, steps=step, skipped_steps=skipped, last_epoch=summary)


def _load_teacher(config: TrainConfig, dataset: ImageList, device: torch.device) -> nn.Module | None:
    if config.kd_weight <= 0 or not config.teacher:
        return None
    teacher, meta = load_classifier(config.teacher, device)
    if teacher.num_classes != dataset.num_classes:
        raise InputError(
            f"{config.teacher}: teacher has {teacher.num_classes} classes, the dataset {dataset.num_classes}"
        )
    return teacher.requires_grad_(False).eval()


def _find_resume(resume: str | None, output: Path) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(output)
    path = Path(resume)
    if not path.is_dir():
        raise InputError(f"{resume}: no such checkpoint directory")
    return path


def _restore(
    checkpoint: Path,
    config: TrainConfig,
    identity: dict[str, str | None],
    model: nn.Module,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> tuple[int, int, int]:
    model_state, train_state, info = load_checkpoint(checkpoint)
    saved, current = info["config"], config.to_dict()
    changed = sorted(k for k in current if k not in RESUME_FREE and saved.get(k) != current[k])
    if changed:
        detail = ", ".join(f"{k} ({saved.get(k)!r} -> {current[k]!r})" for k in changed)
        raise InputError(f"{checkpoint}: cannot resume with different settings: {detail}")
    for key, value in identity.items():
        if info.get(key) != value:
            raise StoreMismatchError(
                f"{checkpoint}: the {IDENTITY_NAMES[key]} changed since this run started ({info.get(key)} -> {value}); "
                "resuming would mix two trainings: start a new --output"
            )
    model.load_state_dict(model_state)
    objective.load_state_dict(train_state["objective"])
    optimizer.load_state_dict(train_state["optimizer"])
    scaler.load_state_dict(train_state["scaler"])
    torch.set_rng_state(train_state["rng"]["torch"])
    return int(info["epoch"]), int(info["step"]), int(info["skipped_steps"])


def _temperature(objective: VlmkdObjective) -> dict[str, float]:
    scale = getattr(objective.contrastive, "logit_scale", None)
    if scale is None:
        return {}
    return {"temperature": math.exp(-float(scale.detach().clamp(max=math.log(100.0))))}


def _epoch_line(epoch: int, epochs: int, summary: dict[str, Any]) -> str:
    terms = " ".join(f"{k}={summary[k]:.4f}" for k in LOSS_KEYS)
    skipped = f" skipped={summary['skipped_steps']}" if summary["skipped_steps"] else ""
    return f"epoch {epoch}/{epochs} {terms}{skipped} ({summary['images_per_s']:.0f} img/s)"
