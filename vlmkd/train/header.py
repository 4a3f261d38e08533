"""The first lines of a training run (and of `--print-config`): what trains, and which loss terms are on."""

from __future__ import annotations

from vlmkd.train.config import TrainConfig


def run_header(config: TrainConfig, *, threads: int, device: str, processes: int = 1) -> list[str]:
    """What the run does, one line for the setup and one per loss term (on, with what; or off, and why)."""
    where = f"{device}, {_count(threads, 'torch thread')}"
    if processes > 1:
        where += f" per process, {processes} processes"
    lines = [
        f"vlmkd-train: {config.arch} from scratch on {config.train} -> {config.output} "
        f"({_count(config.epochs, 'epoch')}, batch {config.batch_size}, {config.optimizer} lr {config.lr}; {where})",
        f"  task loss: {config.task_loss}" + (f" (tau {config.la_tau})" if config.task_loss == "logit_adjust" else ""),
    ]
    if config.vlmkd_weight > 0:
        adaptor = f"MLP adaptor ({config.adaptor_hidden} hidden)" if config.adaptor_hidden else "linear adaptor"
        temperature = f"temperature {config.temperature} {'learned' if config.learn_temperature else 'fixed'}"
        prompts = ",".join(config.prompts) if config.prompts else "all prompts"
        lines.append(
            f"  VLM-KD:    on, weight {config.vlmkd_weight}, features {config.features} ({prompts}, caption mix "
            f"{config.caption_mix}, {config.positives} positives, {_negatives(config.negatives)}, {temperature}, "
            f"{adaptor})"
        )
    else:
        lines.append(f"  VLM-KD:    off ({'--vlmkd-weight 0' if config.features else 'no --features'})")
    if config.kd_weight > 0:
        lines.append(
            f"  logit KD:  on, weight {config.kd_weight}, teacher {config.teacher} "
            f"(temperature {config.kd_temperature})"
        )
    else:
        lines.append(f"  logit KD:  off ({'--kd-weight 0' if config.teacher else 'no --teacher'})")
    return lines


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'s' if number != 1 else ''}"


def _negatives(negatives: str) -> str:
    return "negatives within each class" if negatives == "class" else "in-batch negatives"
