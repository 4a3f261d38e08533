"""DDP under torchrun: 2 gloo processes reach the weights of 1 process with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _cases import make_features
from safetensors.torch import load_file


def _command(dataset, output: Path, features: Path) -> list[str]:
    # One step per epoch (global batch = dataset): the two ranks' halves then make up exactly the
    # single process's batch. GroupNorm, because BatchNorm statistics depend on the per-process batch.
    # A moderate learning rate: at 0.05 this tiny net is chaotic, and the float rounding that differs between
    # one process and two (sums in another order) grows to 1e-3 within three steps.
    return [
        "train", "--train", str(dataset.source), "--output", str(output), "--features", str(features),
        "--vlmkd-weight", "1.0", "--positives", "class", "--caption-mix", "mean", "--task-loss", "logit_adjust",
        "--arch", "resnet32", "--width", "0.25", "--norm", "group", "--image-size", "8", "--batch-size", "12",
        "--epochs", "3", "--warmup-epochs", "0", "--lr", "0.01", "--num-workers", "0", "--no-progress",
        "--threads", "1", "--tensorboard",
    ]  # fmt: skip


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tiny_dataset, tmp_path) -> None:
    features = make_features(tiny_dataset, tmp_path)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "vlmkd", *_command(tiny_dataset, single, features)], check=True, timeout=300)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two_ranks = subprocess.run(
        [*launcher, "-m", "vlmkd", *_command(tiny_dataset, ddp, features)], capture_output=True, text=True, timeout=300
    )
    assert two_ranks.returncode == 0, two_ranks.stderr
    one, two = load_file(str(single / "model.safetensors")), load_file(str(ddp / "model.safetensors"))
    assert one.keys() == two.keys()
    after_first = load_file(str(single / "epoch_0001" / "model.safetensors"))
    moved = max((one[k] - after_first[k]).abs().max().item() for k in one)
    assert moved > 1e-3  # training changed the weights, so agreement below is not trivial
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    # The job's messages come from rank 0 alone: the run header, each epoch's line and the final one, once each
    lines = two_ranks.stdout.splitlines()
    headers = [line for line in lines if line.startswith("vlmkd-train: resnet32 from scratch")]
    assert len(headers) == 1 and "2 processes" in headers[0], two_ranks.stdout
    assert sum(line.startswith("epoch ") for line in lines) == 3, two_ranks.stdout
    assert [line for line in lines if line.startswith("model saved")] == [f"model saved to {ddp}"], two_ranks.stdout
    # TensorBoard events come from rank 0 alone: one event file, each step once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((ddp / "tensorboard").glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(ddp / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("epoch/loss/total")] == [1, 2, 3]
