"""vlmkd-train: config layering, checkpoints, AMP, the non-finite policy, KD, exact resume after SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _cases import TINY, make_features, tiny_config, write_store
from safetensors.torch import load_file

from vlmkd.data import ImageList
from vlmkd.errors import InputError
from vlmkd.train.checkpoint import flatten_state, latest_checkpoint, load_checkpoint, unflatten_state
from vlmkd.train.config import TrainConfig, read_config_file, resolve_config
from vlmkd.train.metrics_log import read_metrics
from vlmkd.train.trainer import NonFiniteLossError, train


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def test_flags_override_the_config_file_and_the_resolved_config_is_saved(tiny_dataset, tmp_path) -> None:
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"epochs": 5, "lr": 0.5, "task_loss": "balanced_softmax", **TINY}))
    config = resolve_config(
        read_config_file(str(config_file)),
        {"lr": 0.01, "epochs": 1, "batch_size": 4, "train": str(tiny_dataset.source), "output": str(tmp_path / "run")},
    )
    assert (config.lr, config.epochs, config.task_loss) == (0.01, 1, "balanced_softmax")
    train(config)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved == config.to_dict()


def test_presets_load_and_unknown_settings_are_refused(tmp_path) -> None:
    assert read_config_file("mnist_lt")["flip"] is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(InputError, match="learning_rate"):
        read_config_file(str(bad))
    with pytest.raises(InputError, match="needs --features"):
        resolve_config({}, {"train": "x.txt", "vlmkd_weight": 1.0})


def test_checkpoint_state_round_trips_optimizer_state_without_pickle() -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state({"optimizer": optimizer.state_dict()}, tensors)
    restored = unflatten_state(yaml.safe_load(yaml.safe_dump(skeleton)), tensors)["optimizer"]
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    fresh.load_state_dict(restored)
    for before, after in zip(optimizer.state.values(), fresh.state.values(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(before[key], after[key], rtol=0, atol=0)


def test_saved_classifier_excludes_the_adaptor_and_the_checkpoint_keeps_it(tiny_dataset, tmp_path) -> None:
    features = make_features(tiny_dataset, tmp_path)
    config = tiny_config(tiny_dataset, tmp_path / "run", features=str(features), vlmkd_weight=1.0, batch_size=4)
    result = train(config)
    assert result.steps == config.epochs * 3
    assert not any("adaptor" in key or "logit_scale" in key for key in weights(tmp_path / "run"))
    _, train_state, info = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert {"contrastive.adaptor.weight", "contrastive.logit_scale"} <= set(train_state["objective"])
    assert info["epoch"] == config.epochs
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) == result.steps
    assert all({"loss", "task_loss", "vlmkd_loss", "kd_loss", "temperature"} <= set(r) for r in steps)
    assert all(r["vlmkd_loss"] > 0 and r["kd_loss"] == 0 for r in steps)
    for step in steps:  # the weight follows its schedule (a warm-up, then a cosine decay, by default)
        expected = step["task_loss"] + step["vlmkd_weight"] * step["vlmkd_loss"]
        assert step["loss"] == pytest.approx(expected, rel=1e-5)
    assert 0 < steps[0]["vlmkd_weight"] < 1


def test_amp_bf16_step_runs_in_bfloat16_on_cpu(tiny_dataset, tmp_path, monkeypatch) -> None:
    from vlmkd.train import trainer

    seen: list[torch.dtype] = []
    build = trainer.build_model

    def recording_build(spec):
        model = build(spec)
        model.head.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
        return model

    monkeypatch.setattr(trainer, "build_model", recording_build)
    train(tiny_config(tiny_dataset, tmp_path / "run", amp="bf16", batch_size=6, epochs=1))
    assert seen and set(seen) == {torch.bfloat16}
    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "step"]
    assert all(np.isfinite(r["loss"]) for r in steps)


def _poison(features: Path, index: int) -> None:
    array = np.load(features / "features.npy", mmap_mode="r+")
    array[index] = np.nan
    array.flush()


def test_nonfinite_loss_stops_with_a_message_naming_the_step(tiny_dataset, tmp_path) -> None:
    features = make_features(tiny_dataset, tmp_path)
    _poison(features, 0)
    config = tiny_config(tiny_dataset, tmp_path / "run", features=str(features), vlmkd_weight=1.0, batch_size=12)
    with pytest.raises(NonFiniteLossError, match=r"step 0 \(epoch 1\).*vlmkd_loss=nan"):
        train(config)


def test_nonfinite_loss_skip_counts_the_steps_and_leaves_weights_untouched(tiny_dataset, tmp_path) -> None:
    features = make_features(tiny_dataset, tmp_path)
    _poison(features, 0)  # batch_size = dataset size: every step sees image 0
    config = tiny_config(
        tiny_dataset, tmp_path / "run", features=str(features), vlmkd_weight=1.0, batch_size=12, epochs=2,
        on_nonfinite="skip",
    )  # fmt: skip
    result = train(config)
    assert (result.steps, result.skipped_steps) == (2, 2)
    first = load_file(str(latest_checkpoint(tmp_path / "run").parent / "epoch_0001" / "model.safetensors"))
    untouched = {k: v for k, v in weights(tmp_path / "run").items() if "running" not in k and "num_batches" not in k}
    for key, value in untouched.items():
        torch.testing.assert_close(value, first[key], rtol=0, atol=0)
    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "step"]
    assert [r["skipped"] for r in steps] == [True, True]


def test_logit_kd_from_a_frozen_teacher_is_logged(tiny_dataset, tmp_path) -> None:
    train(tiny_config(tiny_dataset, tmp_path / "teacher", batch_size=6, epochs=1))
    teacher_weights = weights(tmp_path / "teacher")
    config = tiny_config(
        tiny_dataset, tmp_path / "student", batch_size=6, epochs=1, teacher=str(tmp_path / "teacher"), kd_weight=0.5
    )
    train(config)
    steps = [r for r in read_metrics(tmp_path / "student" / "metrics.jsonl") if r["kind"] == "step"]
    assert all(r["kd_loss"] > 0 for r in steps)
    assert all(r["loss"] == pytest.approx(r["task_loss"] + 0.5 * r["kd_loss"], rel=1e-5) for r in steps)
    for key, value in weights(tmp_path / "teacher").items():
        torch.testing.assert_close(value, teacher_weights[key], rtol=0, atol=0)


def _train_command(dataset: ImageList, output: Path, features: Path, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "vlmkd", "train", "--train", str(dataset.source), "--output", str(output),
        "--features", str(features), "--vlmkd-weight", "0.5", "--caption-mix", "sample", "--optimizer", "sgd",
        "--arch", "resnet32", "--width", "0.25", "--image-size", "8", "--batch-size", "4", "--epochs", str(epochs),
        "--num-workers", "0", "--no-progress", "--log-every", "1", "--task-loss", "balanced_softmax", "--threads", "1",
    ]  # fmt: skip


@pytest.mark.faults
def test_resume_after_sigkill_reaches_the_same_weights_as_an_uninterrupted_run(tiny_dataset, tmp_path) -> None:
    features = make_features(tiny_dataset, tmp_path)
    epochs = 4
    subprocess.run(_train_command(tiny_dataset, tmp_path / "full", features, epochs), check=True, timeout=300)

    run = tmp_path / "killed"
    process = subprocess.Popen(_train_command(tiny_dataset, run, features, epochs), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run / "epoch_0001").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = latest_checkpoint(run)
    assert process.returncode == -signal.SIGKILL and not (run / "model.safetensors").exists()
    assert killed_at is not None and killed_at.name < f"epoch_{epochs:04d}"

    resume = [*_train_command(tiny_dataset, run, features, epochs), "--resume"]
    subprocess.run(resume, check=True, timeout=300, stdout=subprocess.DEVNULL)
    full, resumed = weights(tmp_path / "full"), weights(run)
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    losses = [
        [r["loss"] for r in read_metrics(d / "metrics.jsonl") if r["kind"] == "step"] for d in (tmp_path / "full", run)
    ]
    assert losses[0] == losses[1]


def test_resume_refuses_changed_settings(tiny_dataset, tmp_path) -> None:
    train(tiny_config(tiny_dataset, tmp_path / "run", batch_size=6, epochs=1))
    with pytest.raises(InputError, match=r"lr \(0\.1 -> 0\.2\)"):
        train(tiny_config(tiny_dataset, tmp_path / "run", batch_size=6, epochs=1, lr=0.2), resume="auto")


def test_a_checkpoint_saved_before_a_setting_existed_resumes_as_it_trained_and_says_how_otherwise(
    tiny_dataset, tmp_path
) -> None:
    """A run saved by a vlmkd without the tail options (their keys absent from state.json) resumes when they have
    the values it trained with; with today's defaults (a warm-up and a cosine decay) the refusal names the flags
    that resume it as it started."""
    import json

    from vlmkd.train.config import ADDED_SETTINGS

    old = {"vlmkd_warmup_epochs": 0.0, "vlmkd_decay": "none"}
    train(tiny_config(tiny_dataset, tmp_path / "run", batch_size=6, epochs=2, **old))
    first = tmp_path / "run" / "epoch_0001"
    state = json.loads((first / "state.json").read_text())
    for key in ADDED_SETTINGS:
        del state["config"][key]
    (first / "state.json").write_text(json.dumps(state))
    shutil.rmtree(tmp_path / "run" / "epoch_0002")
    (tmp_path / "run" / "model.safetensors").unlink()
    with pytest.raises(InputError, match=r"vlmkd_decay \('none' -> 'cosine'\).*--vlmkd-decay none"):
        train(tiny_config(tiny_dataset, tmp_path / "run", batch_size=6, epochs=2), resume="auto")
    result = train(tiny_config(tiny_dataset, tmp_path / "run", batch_size=6, epochs=2, **old), resume="auto")
    assert (result.output / "epoch_0002").is_dir()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: ten\n", "epochs must be an integer, got 'ten'"),
        ("lr: fast\n", "lr must be a number"),
        ("batch_size: 2.5\n", "batch_size must be an integer"),
        ("mean: 3\n", "mean must be a list of 3 numbers"),
        ("flip: 1\n", "flip must be true or false"),
        ("prompts: G\n", "prompts must be a list of strings or null"),
        ("epochs: [1\n", r"c\.yaml:2:1: not valid YAML"),
    ],
)
def test_config_file_errors_are_one_line_naming_file_and_setting(tmp_path, text: str, message: str) -> None:
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(InputError, match=message) as caught:
        read_config_file(str(tmp_path / "c.yaml"))
    assert "\n" not in str(caught.value)


def test_corrupt_classifier_files_are_refused_naming_the_file(tiny_dataset, tmp_path) -> None:
    from vlmkd.train.checkpoint import load_classifier

    train(tiny_config(tiny_dataset, tmp_path / "run", batch_size=6, epochs=1))
    (tmp_path / "run" / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match=r"model\.safetensors: unreadable or corrupt"):
        load_classifier(tmp_path / "run")
    (tmp_path / "run" / "model.json").write_text("{not json")
    with pytest.raises(InputError, match=r"model\.json: unreadable or corrupt JSON"):
        load_classifier(tmp_path / "run")


def test_resume_refuses_a_relabelled_dataset_and_sweeps_debris_of_a_killed_save(tiny_dataset, tmp_path) -> None:
    from vlmkd.errors import StoreMismatchError

    config = tiny_config(tiny_dataset, tmp_path / "run", batch_size=6, epochs=2)
    train(config)
    debris = tmp_path / "run" / ".tmp_epoch_0002_99999"
    debris.mkdir()
    train(config, resume="auto")
    assert not debris.exists()
    lines = Path(tiny_dataset.source).read_text().splitlines()
    Path(tiny_dataset.source).write_text("\n".join([lines[-1].replace(" 2", " 1"), *lines[:-1]]) + "\n")
    with pytest.raises(StoreMismatchError, match=r"the training dataset \(--train\) changed since this run started"):
        train(config, resume="auto")


def test_text_term_logs_its_fraction_of_chance_and_temperature(tiny_dataset, tmp_path) -> None:
    features = make_features(tiny_dataset, tmp_path)
    config = tiny_config(tiny_dataset, tmp_path / "run", features=str(features), vlmkd_weight=1.0, batch_size=4)
    train(config)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[0]["kind"] == "text_conditioning" and records[0]["text_center"] == "prompt"
    assert records[0]["text_cosine_before"] > records[0]["text_cosine_after"]
    for record in (r for r in records if r["kind"] in ("step", "epoch")):
        assert record["vlmkd_fraction"] == pytest.approx(record["vlmkd_loss"] / np.log(4), rel=1e-5)
        assert record["temperature"] == pytest.approx(TrainConfig().temperature)  # fixed by default


def test_a_text_term_stuck_at_chance_is_reported_in_one_line(tiny_dataset, tmp_path, capsys) -> None:
    """One caption for every image: nothing to learn. Image -> text rows are exactly at chance and text -> image
    columns cannot beat it (Jensen), so the loss never drops below log(batch), and the trainer says so."""
    values = np.broadcast_to(np.linspace(-1, 1, 8, dtype=np.float32), (len(tiny_dataset), 2, 8)).copy()
    write_store(tmp_path / "features", values, dataset_fingerprint=tiny_dataset.fingerprint())
    config = tiny_config(tiny_dataset, tmp_path / "run", features=str(tmp_path / "features"), vlmkd_weight=1.0)
    train(resolve_config({}, {**config.to_dict(), "batch_size": 4, "epochs": 4}))
    warnings = [line for line in capsys.readouterr().out.splitlines() if "text term is not learning" in line]
    assert len(warnings) == 1 and "x its chance level 1.386 (log batch)" in warnings[0]
    epochs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert all(r["vlmkd_fraction"] >= 1.0 - 1e-6 for r in epochs)


def test_negatives_within_the_class_train_and_log_the_fraction_of_their_own_chance(tiny_dataset, tmp_path) -> None:
    features = make_features(tiny_dataset, tmp_path)
    batch = len(tiny_dataset)  # one step per epoch over the whole dataset: the batch's classes are known
    config = tiny_config(
        tiny_dataset, tmp_path / "run", features=str(features), vlmkd_weight=1.0, batch_size=batch, negatives="class"
    )
    train(config)
    counts = np.bincount(tiny_dataset.labels())
    chance = float((counts * np.log(counts)).sum() / counts.sum())  # every class here has >= 2 images
    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "step"]
    assert steps and all(r["vlmkd_fraction"] == pytest.approx(r["vlmkd_loss"] / chance, rel=1e-5) for r in steps)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["negatives"] == "class"
