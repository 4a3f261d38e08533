"""The training loop: classifier + VLM-KD objective, AMP, DDP, per-epoch checkpoints and exact resume."""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vlmkd.data import ImageList, load_image_list
from vlmkd.encode.store import FeatureStore
from vlmkd.errors import InputError, StoreMismatchError, VlmkdError
from vlmkd.losses import TaskLoss, VlmkdObjective
from vlmkd.losses.contrastive import temperature
from vlmkd.models import Classifier, ModelSpec, build_model
from vlmkd.models.speed import apply_speed_settings, batch_layout
from vlmkd.models.zoo import check_image_size
from vlmkd.output_lock import holding
from vlmkd.threads import torch_threads
from vlmkd.train.checkpoint import (
    MODEL_META,
    latest_checkpoint,
    load_checkpoint,
    load_classifier,
    save_checkpoint,
    save_classifier,
    sweep_temporary,
)
from vlmkd.train.config import ADDED_SETTINGS, TrainConfig, flag_name, write_config
from vlmkd.train.distributed import Dist, barrier, cleanup, gather_batch, init_distributed, mean_across
from vlmkd.train.header import run_header
from vlmkd.train.metrics_log import MetricsLog, read_metrics
from vlmkd.train.record_fields import FRACTION, LOSS_TERMS
from vlmkd.train.run_dir import check_run_directory
from vlmkd.train.schedule import build_optimizer, lr_at, vlmkd_weight_at
from vlmkd.train.tensorboard_log import TensorBoardLog
from vlmkd.train.text import TextSource, build_contrastive, conditioning_tensors, open_text_source

LOSS_KEYS = tuple(LOSS_TERMS)  # the objective's loss terms, in record order
METRIC_KEYS = (*LOSS_KEYS, "vlmkd_chance")  # averaged per step; the chance level gives the VLM-KD fraction
# The text term "is not learning" when its loss is still this close to chance after a quarter of the run.
INERT_FRACTION = 0.98
# Settings that may differ between a run and its resumption without changing the result.
RESUME_FREE = frozenset({"output", "progress", "log_every", "num_workers", "tensorboard"})
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
    reused: bool = False  # the run was already finished: nothing was trained or written
    main_process: bool = True  # False on the other ranks under torchrun, which leave the job's messages to rank 0


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


@dataclass
class Run:
    """Everything a run builds before its first step: data, model, objective, optimizer and loader."""

    config: TrainConfig
    ctx: Dist
    output: Path
    dataset: ImageList
    spec: ModelSpec
    model: Classifier
    objective: VlmkdObjective
    step_module: nn.Module  # TrainStep, wrapped in DistributedDataParallel under torchrun
    teacher: nn.Module | None
    text: TextSource | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: Any
    steps_per_epoch: int
    identity: dict[str, str | None]  # fingerprints of the dataset and feature store, checked on resume
    model_meta: dict[str, Any]

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        return round(self.config.warmup_epochs * self.steps_per_epoch)

    @property
    def inert_check_step(self) -> int:
        """When the text term is checked for learning: a quarter into the steps where its weight is on."""
        config, per_epoch = self.config, self.steps_per_epoch
        start = round(config.vlmkd_warmup_epochs * per_epoch)
        active = self.total_steps - start - round(config.vlmkd_off_epochs * per_epoch)
        return start + active // 4

    def vlmkd_weight_at(self, step: int) -> float:
        """The VLM-KD weight at optimizer step `step` under the configured schedule."""
        config, per_epoch = self.config, self.steps_per_epoch
        return vlmkd_weight_at(
            step,
            self.total_steps,
            config.vlmkd_weight,
            warmup_steps=round(config.vlmkd_warmup_epochs * per_epoch),
            off_steps=round(config.vlmkd_off_epochs * per_epoch),
            decay=config.vlmkd_decay,
        )


@dataclass
class Progress:
    """How far a run has come: epochs finished, optimizer steps taken, steps skipped for a non-finite loss."""

    epoch: int = 0
    step: int = 0
    skipped: int = 0


def train(config: TrainConfig, resume: str | None = None) -> TrainResult:
    """Run `config` to the end; `resume` is a checkpoint directory or "auto" (latest in the output dir).

    `config.threads` applies for the call only: torch's thread count is restored when it returns.
    """
    config.validate()
    config.check_paths()
    with torch_threads(config.threads) as threads:
        ctx = init_distributed(config.device)
        # One writer per run folder (the main rank writes it): a second run into it refuses, naming the first.
        lock = holding(Path(config.output), what="training run", flag="--output") if ctx.is_main else nullcontext()
        try:
            with lock:
                if ctx.is_main:
                    header = run_header(config, threads=threads, device=str(ctx.device), processes=ctx.world_size)
                    print("\n".join(header))
                    for note in config.inert_settings():
                        print(f"vlmkd-train: warning: {note}", file=sys.stderr)
                    sys.stdout.flush()
                return _train(config, resume, ctx)
        finally:
            cleanup(ctx)


def _train(config: TrainConfig, resume: str | None, ctx: Dist) -> TrainResult:
    check_run_directory(Path(config.output), resume)  # before anything is built or written
    run = build_run(config, ctx)
    checkpoint = _find_resume(resume, run.output)
    progress = restore(run, checkpoint) if checkpoint is not None else Progress()
    if ctx.is_main:
        sweep_temporary(run.output)  # debris of a killed save, also beside a finished run
    if progress.epoch >= config.epochs and (run.output / MODEL_META).is_file():  # written last: the save finished
        return _finished_run(run, progress)
    if ctx.is_main:
        print(_start_line(resume, checkpoint, progress.epoch, config.epochs, run.output), flush=True)
        write_config(config, run.output / "config.yaml")
    log = None
    if ctx.is_main:
        resume_step = progress.step if checkpoint else None
        sinks = [TensorBoardLog.for_run(run.output, config, resume_step)] if config.tensorboard else []
        log = MetricsLog(run.output / "metrics.jsonl", resume_step=resume_step, sinks=sinks)
        conditioning = getattr(run.text, "conditioning", None)
        if conditioning is not None and checkpoint is None:
            log.write({"kind": "text_conditioning", "step": 0, **conditioning.summary()})
    summary: dict[str, float] = {}
    for epoch in range(progress.epoch, config.epochs):
        summary = train_one_epoch(run, epoch, progress, log)
        if ctx.is_main:
            assert log is not None
            log.write({"kind": "epoch", "epoch": epoch + 1, "step": progress.step, **summary, **_temperature(run)})
            save_epoch_checkpoint(run, progress)
            print(_epoch_line(epoch + 1, config.epochs, summary | _temperature(run)), flush=True)
        barrier()
    if log is not None:
        log.close()
    if ctx.is_main:
        save_classifier(run.output, run.model, run.spec, {**run.model_meta, "config": config.to_dict()})
    barrier()
    return TrainResult(run.output, progress.step, progress.skipped, summary, main_process=ctx.is_main)


def _finished_run(run: Run, progress: Progress) -> TrainResult:
    """A resumed run whose last epoch and final model are on disk: reuse it, write nothing, say so."""
    epochs = [r for r in read_metrics(run.output / "metrics.jsonl") if r.get("kind") == "epoch"]
    last = {k: v for k, v in epochs[-1].items() if isinstance(v, (int, float))} if epochs else {}
    if run.ctx.is_main:
        print(f"{run.output}: already trained for {run.config.epochs} epochs; reusing its model", flush=True)
    return TrainResult(run.output, progress.step, progress.skipped, last, reused=True, main_process=run.ctx.is_main)


def build_run(config: TrainConfig, ctx: Dist) -> Run:
    """Seed, then build the model, objective (opening the feature store once), teacher, optimizer and loader."""
    from vlmkd.data.loaders import build_loader

    if config.batch_size % ctx.world_size:
        raise InputError(f"batch_size {config.batch_size} is not divisible by {ctx.world_size} processes")
    torch.manual_seed(config.seed)
    dataset = load_image_list(config.train)
    counts = torch.as_tensor(dataset.class_counts())
    spec = ModelSpec(config.arch, dataset.num_classes, config.width, config.norm)
    model = build_model(spec).to(ctx.device)
    check_image_size(model, config.arch, config.image_size)
    apply_speed_settings(model, channels_last=config.channels_last, compile=config.compile)
    store = FeatureStore.open(config.features) if config.vlmkd_weight > 0 else None
    text = open_text_source(config, dataset, store) if store is not None else None
    contrastive = build_contrastive(config, text.dim, model.feature_dim, counts.tolist()) if text is not None else None
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
    optimizer = build_optimizer(
        [model, objective],
        config.optimizer,
        config.lr,
        config.weight_decay,
        config.momentum,
        own_lr=_contrastive_rates(config, contrastive),
    )
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
        scale=tuple(config.crop_scale),
        ratio=tuple(config.crop_ratio),
    )
    if len(loader) == 0:
        raise InputError(f"{config.train}: {len(dataset)} images make no full batch of {config.batch_size}")
    return Run(
        config=config,
        ctx=ctx,
        output=Path(config.output),
        dataset=dataset,
        spec=spec,
        model=model,
        objective=objective,
        step_module=step_module,
        teacher=teacher,
        text=text,
        optimizer=optimizer,
        scaler=scaler,
        loader=loader,
        steps_per_epoch=len(loader),
        identity={
            "train_fingerprint": dataset.fingerprint(),
            "features_fingerprint": store.fingerprint() if store is not None else None,
        },
        model_meta={
            "classnames": list(dataset.classnames),
            "train_counts": counts.tolist(),
            "train_fingerprint": dataset.fingerprint(),
            "features_fingerprint": store.fingerprint() if store is not None else None,
            # absolute, so that vlmkd-eval finds them from any working directory
            "inputs": {"train": str(Path(config.train).resolve()), "features": _resolved(config.features)},
        },
    )


def train_one_epoch(run: Run, epoch: int, progress: Progress, log: MetricsLog | None) -> dict[str, float]:
    """One pass over the loader (updating `progress`); returns the epoch's mean loss terms, skips and speed."""
    config, ctx, optimizer, scaler = run.config, run.ctx, run.optimizer, run.scaler
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    run.step_module.train()
    run.loader.set_epoch(epoch)
    sampler = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 1009 + ctx.rank)
    sums = torch.zeros(len(METRIC_KEYS), dtype=torch.float64)
    counted, epoch_skipped, started = 0, 0, time.perf_counter()
    bar = tqdm(
        total=run.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        disable=not (config.progress and ctx.is_main),
        leave=False,
    )
    for images, labels, indices in run.loader:
        images = batch_layout(images.to(ctx.device, non_blocking=True), config.channels_last)
        labels = labels.to(ctx.device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(progress.step, run.total_steps, run.warmup_steps, group["base_lr"])
        run.objective.vlmkd_weight = run.vlmkd_weight_at(progress.step)
        batch_text = run.text(indices, sampler).to(ctx.device) if run.text is not None else None
        teacher_logits = None
        with torch.autocast(ctx.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if run.teacher is not None:
                with torch.no_grad():
                    teacher_logits = run.teacher(images)
            parts = run.step_module(images, labels, text=batch_text, teacher_logits=teacher_logits)
        values = mean_across(torch.stack([parts[k].detach().double() for k in METRIC_KEYS]).cpu())
        finite = bool(torch.isfinite(values).all())
        if not finite and config.on_nonfinite == "stop":
            named = ", ".join(f"{k}={v:.4g}" for k, v in zip(LOSS_KEYS, values.tolist(), strict=False))
            cause = _nonfinite_text(run, indices, batch_text)
            advice = cause or "lower --lr / use --amp bf16"
            raise NonFiniteLossError(
                f"non-finite loss at step {progress.step} (epoch {epoch + 1}): {named}; "
                f"rerun with --on-nonfinite skip to skip such steps, or {advice}"
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
            progress.skipped += 1
            epoch_skipped += 1
        progress.step += 1
        bar.update(1)
        text_term = _text_term(run, values) if finite else {}
        if finite:
            shown = {k: f"{v:.3f}" for k, v in (text_term | _temperature(run)).items()}
            bar.set_postfix(loss=f"{values[0].item():.3f}", **shown)
        if log is not None and (progress.step % config.log_every == 0 or not finite):
            record = {"kind": "step", "epoch": epoch + 1, "step": progress.step, "lr": optimizer.param_groups[0]["lr"]}
            record |= {"vlmkd_weight": run.objective.vlmkd_weight} if run.objective.contrastive is not None else {}
            record |= dict(zip(LOSS_KEYS, values.tolist(), strict=False))
            record |= _temperature(run) | text_term | {"skipped": not finite}
            log.write(record)
        if progress.step == run.inert_check_step and ctx.is_main and counted:
            _warn_if_inert(run, sums, counted)
    bar.close()
    progress.epoch = epoch + 1
    seconds = time.perf_counter() - started
    summary = {k: s / max(counted, 1) for k, s in zip(LOSS_KEYS, sums.tolist(), strict=False)}
    summary |= _text_term(run, sums / max(counted, 1))
    summary |= {"skipped_steps": epoch_skipped, "seconds": seconds}
    summary |= {"images_per_s": run.steps_per_epoch * config.batch_size / seconds}
    return summary


def save_epoch_checkpoint(run: Run, progress: Progress) -> Path:
    """Write `epoch_NNNN/` for the epochs finished so far: classifier, optimizer, objective, scaler, RNG, and the
    text conditioning the adaptor was trained behind."""
    train_state = {
        "optimizer": run.optimizer.state_dict(),
        "objective": run.objective.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
    }
    info = {"step": progress.step, "skipped_steps": progress.skipped, "config": run.config.to_dict(), **run.identity}
    conditioning = getattr(run.text, "conditioning", None)
    if conditioning is not None:  # the text side of the adaptor: what it was trained on, for probing it later
        train_state["text_conditioning"] = conditioning_tensors(conditioning)
        info["text_conditioning"] = conditioning.summary()
    return save_checkpoint(
        run.output,
        progress.epoch,
        model=run.model,
        spec=run.spec,
        model_meta=run.model_meta,
        train_state=train_state,
        info=info,
    )


def _nonfinite_text(run: Run, indices: torch.Tensor, text: torch.Tensor | None) -> str:
    """When the batch's text features themselves are NaN/inf, what to do about it, naming the store and images."""
    if text is None:
        return ""
    bad = [
        int(i) for i, row in zip(indices.tolist(), text.detach().cpu(), strict=True) if not torch.isfinite(row).all()
    ]
    if not bad:
        return ""
    shown = ", ".join(f"{i} ({run.dataset.samples[i].path})" for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
    return (
        f"re-encode the feature store {run.config.features}: the text features of {len(bad)} image(s) of this "
        f"batch are NaN or infinite: {shown}"
    )


def _resolved(path: str | Path | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _load_teacher(config: TrainConfig, dataset: ImageList, device: torch.device) -> nn.Module | None:
    if config.kd_weight <= 0 or not config.teacher:
        return None
    teacher, meta = load_classifier(config.teacher, device)
    if teacher.num_classes != dataset.num_classes:
        raise InputError(
            f"{config.teacher}: teacher has {teacher.num_classes} classes, the dataset {dataset.num_classes}"
        )
    return teacher.requires_grad_(False).eval()


def _start_line(resume: str | None, checkpoint: Path | None, start_epoch: int, epochs: int, output: Path) -> str:
    """The header's last line: where training starts, from scratch or from a checkpoint."""
    if checkpoint is None:
        return "  start:     from scratch" + (f" (no checkpoint in {output} to resume)" if resume == "auto" else "")
    return f"  start:     resumed from {checkpoint} (epoch {start_epoch} of {epochs} done)"


def _find_resume(resume: str | None, output: Path) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(output)
    path = Path(resume)
    if not path.is_dir():
        raise InputError(f"{resume}: no such checkpoint directory")
    return path


def _as_flag(name: str, value: object) -> str:
    """A saved setting as it is written on `vlmkd-train`'s command line."""
    flag = flag_name(name)
    if isinstance(value, bool):
        return flag if value else flag.replace("--", "--no-", 1)
    if value is None:
        return f"no {flag}"
    return f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"


def restore(run: Run, checkpoint: Path) -> Progress:
    """Load a checkpoint of this run into its model, objective, optimizer, scaler and RNG; refuse other settings."""
    model_state, train_state, info = load_checkpoint(checkpoint)
    saved = {**ADDED_SETTINGS, **info["config"]}  # a setting added since the run started: it trained without it
    current = run.config.to_dict()
    changed = sorted(k for k in current if k not in RESUME_FREE and saved.get(k) != current[k])
    if changed:
        detail = ", ".join(f"{k} ({saved.get(k)!r} -> {current[k]!r})" for k in changed)
        flags = ", ".join(_as_flag(k, saved.get(k)) for k in changed)
        raise InputError(
            f"{checkpoint}: cannot resume with different settings: {detail}; to resume it as it started: {flags} "
            "(or start a new --output)"
        )
    for key, value in run.identity.items():
        if info.get(key) != value:
            raise StoreMismatchError(
                f"{checkpoint}: the {IDENTITY_NAMES[key]} changed since this run started ({info.get(key)} -> {value}); "
                "resuming would mix two trainings: start a new --output"
            )
    run.model.load_state_dict(model_state)
    run.objective.load_state_dict(train_state["objective"])
    run.optimizer.load_state_dict(train_state["optimizer"])
    run.scaler.load_state_dict(train_state["scaler"])
    torch.set_rng_state(train_state["rng"]["torch"])
    return Progress(int(info["epoch"]), int(info["step"]), int(info["skipped_steps"]))


def _contrastive_rates(config: TrainConfig, contrastive: nn.Module | None) -> list[tuple[list[nn.Parameter], float]]:
    """The VLM-KD parameters with a learning rate of their own: the temperature, the adaptor and projection."""
    if contrastive is None:
        return []
    rates = []
    scale = getattr(contrastive, "logit_scale", None)
    if isinstance(scale, nn.Parameter) and config.temperature_lr is not None:
        rates.append(([scale], config.temperature_lr))
    if config.adaptor_lr is not None:
        rates.append(([p for p in contrastive.parameters() if p is not scale], config.adaptor_lr))
    return rates


def _text_term(run: Run, values: torch.Tensor) -> dict[str, float]:
    """The VLM-KD loss as a fraction of its chance level for the batch (absent without the term)."""
    if run.objective.contrastive is None:
        return {}
    chance = float(values[METRIC_KEYS.index("vlmkd_chance")])
    return {FRACTION: float(values[LOSS_KEYS.index("vlmkd_loss")]) / chance if chance > 0 else float("nan")}


def _warn_if_inert(run: Run, sums: torch.Tensor, counted: int) -> None:
    """One line when the text term's loss this epoch is still at chance a quarter of the way into training."""
    if run.objective.contrastive is None:
        return
    loss, chance = (float(sums[METRIC_KEYS.index(k)]) / counted for k in ("vlmkd_loss", "vlmkd_chance"))
    if chance > 0 and loss / chance > INERT_FRACTION:
        tqdm.write(
            f"warning: the text term is not learning: after a quarter of training vlmkd_loss={loss:.3f} is "
            f"{loss / chance:.3f} x its chance level {chance:.3f} ({_chance_name(run.config)}); captions that barely "
            "differ between images (or one caption for all) cannot teach anything; see docs/training.md, 'When the "
            "text term does not learn'"
        )


def _chance_name(config: TrainConfig) -> str:
    """What the text term's chance level is, in words (`vlmkd.losses.objective.contrast_chance`)."""
    if config.negatives == "class":
        return "mean log of the class count in the batch"
    return "mean log(batch / same-label count)" if config.positives == "class" else "log batch"


def _temperature(run: Run) -> dict[str, float]:
    scale = getattr(run.objective.contrastive, "logit_scale", None)
    if scale is None:
        return {}
    return {"temperature": temperature(scale.detach())}


def _epoch_line(epoch: int, epochs: int, summary: dict[str, Any]) -> str:
    terms = " ".join(f"{k}={summary[k]:.4f}" for k in (*LOSS_KEYS, FRACTION, "temperature") if k in summary)
    skipped = f" skipped={summary['skipped_steps']}" if summary["skipped_steps"] else ""
    return f"epoch {epoch}/{epochs} {terms}{skipped} ({summary['images_per_s']:.0f} img/s)"
