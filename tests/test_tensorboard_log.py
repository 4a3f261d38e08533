"""The TensorBoard sink: tags and values read back with TensorBoard's own reader, resume without duplicates."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from vlmkd.errors import MissingDependencyError  # noqa: E402
from vlmkd.train.metrics_log import MetricsLog, read_metrics  # noqa: E402
from vlmkd.train.tensorboard_log import TensorBoardLog  # noqa: E402

BATCH = 32
STEP_TAGS = {"loss/total", "loss/task", "loss/vlmkd", "vlmkd/fraction_of_chance", "vlmkd/temperature", "train/lr"}
EPOCH_TAGS = {f"epoch/{tag}" for tag in STEP_TAGS - {"train/lr"}} | {"epoch/train/images_per_s"}


def step_record(step: int, epoch: int = 1, offset: float = 0.0) -> dict:
    """A record as the trainer writes it (the KD term off: exact zeros)."""
    return {
        "kind": "step", "epoch": epoch, "step": step, "lr": 0.1 / step, "loss": 5.0 - 0.1 * step + offset,
        "task_loss": 2.0 - 0.1 * step + offset, "vlmkd_loss": 3.0 + offset, "kd_loss": 0.0,
        "temperature": 0.07 + 0.01 * step, "skipped": False,
    }  # fmt: skip


def epoch_record(step: int, epoch: int) -> dict:
    return {
        "kind": "epoch", "epoch": epoch, "step": step, "loss": 4.0, "task_loss": 1.0, "vlmkd_loss": 3.0,
        "kd_loss": 0.0, "skipped_steps": 0, "seconds": 2.0, "images_per_s": 123.0, "temperature": 0.1,
    }  # fmt: skip


def scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in `directory`, as TensorBoard itself reads it (purging orphaned events)."""
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_every_quantity_is_a_tag_per_step_and_per_epoch_with_the_records_values(tmp_path: Path) -> None:
    sink = TensorBoardLog(tmp_path / "tb", BATCH, terms_off=frozenset({"kd_loss"}))
    records = [step_record(1), step_record(2), epoch_record(2, 1), step_record(3, epoch=2), epoch_record(3, 2)]
    for record in records:
        sink.write(record)
    sink.close()
    found = scalars(tmp_path / "tb")
    assert set(found) == STEP_TAGS | EPOCH_TAGS | {"train/images_per_s", "epoch/train/skipped_steps"}
    steps = [r for r in records if r["kind"] == "step"]
    assert found["loss/task"] == [(r["step"], pytest.approx(r["task_loss"])) for r in steps]
    assert found["train/lr"] == [(r["step"], pytest.approx(r["lr"])) for r in steps]
    assert found["vlmkd/fraction_of_chance"] == [(r["step"], pytest.approx(3.0 / math.log(BATCH))) for r in steps]
    assert found["epoch/train/images_per_s"] == [(2, 123.0), (3, 123.0)]
    assert found["epoch/vlmkd/temperature"] == [(2, pytest.approx(0.1)), (3, pytest.approx(0.1))]
    # images/s of a step record: measured since the previous one, so the first has none
    assert [step for step, _ in found["train/images_per_s"]] == [2, 3]
    assert all(value > 0 for _, value in found["train/images_per_s"])


def test_a_records_own_fraction_of_chance_is_kept(tmp_path: Path) -> None:
    sink = TensorBoardLog(tmp_path, BATCH)
    sink.write(step_record(1) | {"vlmkd_fraction": 0.25})
    sink.close()
    assert scalars(tmp_path)["vlmkd/fraction_of_chance"] == [(1, 0.25)]


def test_resume_purges_events_past_the_checkpoint_so_no_step_is_duplicated(tmp_path: Path) -> None:
    """A run killed at step 6 after its checkpoint at step 4 logged 5 and 6 twice, unless they are purged."""
    first = MetricsLog(tmp_path / "metrics.jsonl", sinks=[TensorBoardLog(tmp_path / "tb", BATCH)])
    for step in range(1, 7):
        first.write(step_record(step))
    first.close()
    resumed = MetricsLog(tmp_path / "metrics.jsonl", resume_step=4, sinks=[TensorBoardLog(tmp_path / "tb", BATCH,
                                                                                          resume_step=4)])  # fmt: skip
    for step in range(5, 9):
        resumed.write(step_record(step, offset=100.0))
    resumed.close()
    found = scalars(tmp_path / "tb")
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 2  # events continue in a new file
    assert [step for step, _ in found["loss/total"]] == list(range(1, 9))
    expected = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert found["loss/total"] == [(step, pytest.approx(value)) for step, value in expected]
    assert found["loss/total"][4][1] == pytest.approx(step_record(5, offset=100.0)["loss"])


def test_a_fresh_start_replaces_an_old_runs_events(tmp_path: Path) -> None:
    old = TensorBoardLog(tmp_path, BATCH)
    old.write(step_record(7))
    old.close()
    new = TensorBoardLog(tmp_path, BATCH)
    new.write(step_record(1))
    new.close()
    assert [step for step, _ in scalars(tmp_path)["loss/total"]] == [1]


def test_records_of_other_kinds_and_nonfinite_values_are_left_out(tmp_path: Path) -> None:
    sink = TensorBoardLog(tmp_path, BATCH)
    sink.write({"kind": "text_conditioning", "step": 0, "mean_cosine": 0.5})
    sink.write(step_record(1) | {"loss": float("nan"), "task_loss": float("inf"), "skipped": True})
    sink.close()
    found = scalars(tmp_path)
    assert "loss/total" not in found and "loss/task" not in found and found["loss/vlmkd"] == [(1, 3.0)]


def test_without_tensorboard_the_error_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'vlmkd\[tensorboard\]'"):
        TensorBoardLog(tmp_path, BATCH)


@pytest.mark.slow
def test_training_with_tensorboard_logs_every_record_and_a_resume_continues_the_curves(tiny_dataset, tmp_path) -> None:
    import shutil

    from _cases import make_features, tiny_config

    from vlmkd.cli import run_command
    from vlmkd.train.trainer import train

    features = make_features(tiny_dataset, tmp_path)
    run = tmp_path / "run"
    flags = ["--train", str(tiny_dataset.source), "--output", str(run), "--features", str(features)]
    flags += ["--vlmkd-weight", "1", "--batch-size", "6", "--epochs", "2", "--width", "0.25", "--image-size", "8"]
    flags += ["--num-workers", "0", "--log-every", "1", "--threads", "1", "--no-progress", "--tensorboard"]
    assert run_command("train", flags) == 0
    first = scalars(run / "tensorboard")
    # kill-like restart: the last checkpoint is gone, so the run resumes after epoch 1 and logs steps 3-4 again
    shutil.rmtree(run / "epoch_0002")
    config = tiny_config(
        tiny_dataset, run, features=str(features), vlmkd_weight=1.0, batch_size=6, epochs=2, tensorboard=True
    )
    train(config, resume="auto")
    found = scalars(run / "tensorboard")
    records = read_metrics(run / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and [r["step"] for r in epochs] == [2, 4]
    assert set(found) == STEP_TAGS | EPOCH_TAGS | {"train/images_per_s", "epoch/train/skipped_steps"}  # no KD
    for tag, key in (("loss/total", "loss"), ("loss/vlmkd", "vlmkd_loss"), ("vlmkd/temperature", "temperature")):
        assert found[tag] == [(r["step"], pytest.approx(r[key])) for r in steps], tag
    assert found["epoch/loss/task"] == [(r["step"], pytest.approx(r["task_loss"])) for r in epochs]
    assert found["train/lr"][:2] == first["train/lr"][:2]  # the first epoch's events were kept, not rewritten


def test_each_record_is_on_disk_before_the_log_is_closed(tmp_path: Path) -> None:
    """A run stopped by an error (or killed) keeps the events of every record it logged."""
    sink = TensorBoardLog(tmp_path, BATCH)
    sink.write(step_record(1))
    assert scalars(tmp_path)["loss/total"] == [(1, pytest.approx(step_record(1)["loss"]))]
    sink.close()
