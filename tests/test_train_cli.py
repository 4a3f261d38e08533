"""`vlmkd-train` on the command line: given features switch VLM-KD on, paths are checked up front, inert
settings are warned about, and the run's first lines say which terms are on and how many threads it uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from _cases import make_features

from vlmkd.cli import main as vlmkd_main
from vlmkd.threads import default_threads

# the README's training line at test size (the tiny dataset has 12 images of 3 classes)
TINY_FLAGS = ["--epochs", "1", "--image-size", "8", "--width", "0.25", "--batch-size", "6", "--num-workers", "0"]
TINY_FLAGS += ["--warmup-epochs", "0", "--log-every", "1", "--no-progress"]


@pytest.fixture
def features(tiny_dataset, tmp_path_factory) -> Path:
    return make_features(tiny_dataset, tmp_path_factory.mktemp("features"))


def train_argv(dataset, output: Path) -> list[str]:
    return ["train", "--config", "mnist_lt", "--train", str(dataset.source), "--output", str(output), *TINY_FLAGS]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_readme_line_with_features_trains_vlmkd_with_balanced_softmax(tiny_dataset, features, tmp_path, capsys):
    run = tmp_path / "run"
    assert vlmkd_main([*train_argv(tiny_dataset, run), "--features", str(features), "--threads", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("vlmkd-train: resnet32 from scratch on ") and out[0].endswith("1 torch thread)")
    assert out[1] == "  task loss: balanced_softmax"
    assert out[2].startswith(f"  VLM-KD:    on, weight 1.0, features {features} (")
    assert out[3] == "  logit KD:  off (no --teacher)"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["task_loss"], saved["vlmkd_weight"], saved["features"]) == ("balanced_softmax", 1.0, str(features))
    steps = [r for r in records(run) if r["kind"] == "step"]
    assert steps and all(r["vlmkd_loss"] > 0 for r in steps)


def test_without_features_it_is_the_baseline_and_says_so(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert vlmkd_main([*train_argv(tiny_dataset, run), "--threads", "1"]) == 0
    assert "  VLM-KD:    off (no --features)" in capsys.readouterr().out.splitlines()
    assert all(r["vlmkd_loss"] == 0 for r in records(run) if r["kind"] == "step")


@pytest.mark.parametrize("flag", ["--features", "--train", "--teacher"])
def test_a_missing_input_path_is_a_one_line_error_before_any_work(tiny_dataset, tmp_path, capsys, flag):
    argv = train_argv(tiny_dataset, tmp_path / "run")
    missing = str(tmp_path / "nonexistent")
    argv = [a if a != str(tiny_dataset.source) or flag != "--train" else missing for a in argv]
    if flag != "--train":
        argv += [flag, missing]
    assert vlmkd_main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"vlmkd train: error: {flag} {missing}: no such file or directory" + err[err.index(" (expected") :]
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("extra", "warning"),
    [
        (["--prompts", "G"], "--prompts has no effect: the VLM-KD term is off (no --features)"),
        (["--temperature", "0.2"], "--temperature has no effect: the VLM-KD term is off (no --features)"),
        (["--kd-temperature", "2"], "--kd-temperature has no effect: logit KD is off (no --teacher)"),
        (["--no-image-projection"], "--image-projection has no effect: the VLM-KD term is off (no --features)"),
        (["--la-tau", "0.5"], "--la-tau has no effect: the task loss is balanced_softmax, not logit_adjust"),
        (["--momentum", "0.5", "--optimizer", "adamw"], "--momentum has no effect: the optimizer is adamw, not sgd"),
    ],
)
def test_a_setting_made_inert_by_another_is_a_one_line_warning(tiny_dataset, tmp_path, capsys, extra, warning):
    assert vlmkd_main([*train_argv(tiny_dataset, tmp_path / "run"), *extra, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert f"# warning: {warning}\n" in out
    yaml.safe_load(out)  # the warnings are comments: the output still loads as a config


def test_features_with_weight_zero_warn_and_train_the_baseline(tiny_dataset, features, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [*train_argv(tiny_dataset, run), "--features", str(features), "--vlmkd-weight", "0", "--threads", "1"]
    assert vlmkd_main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "vlmkd-train: warning: --features is unused: --vlmkd-weight 0 turns the VLM-KD term off (a baseline run)\n"
    )
    assert "  VLM-KD:    off (--vlmkd-weight 0)" in captured.out.splitlines()


def test_print_config_states_the_terms_and_threads_and_loads_back(tiny_dataset, features, tmp_path, capsys):
    argv = [*train_argv(tiny_dataset, tmp_path / "run"), "--features", str(features), "--print-config"]
    assert vlmkd_main(argv) == 0
    out = capsys.readouterr().out
    header = [line for line in out.splitlines() if line.startswith("#")]
    assert f"torch thread{'s' if default_threads() != 1 else ''})" in header[0]
    assert header[1:] == [
        "#   task loss: balanced_softmax",
        header[2],
        "#   logit KD:  off (no --teacher)",
    ] and header[2].startswith("#   VLM-KD:    on, weight 1.0")
    saved = tmp_path / "printed.yaml"
    saved.write_text(out)
    assert vlmkd_main(["train", "--config", str(saved), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(out)


def test_a_run_uses_and_reports_the_default_thread_count(tiny_dataset, tmp_path, capsys, monkeypatch):
    from vlmkd import threads

    monkeypatch.setattr(threads, "default_threads", lambda: 1)
    before, calls = torch.get_num_threads(), []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert vlmkd_main(train_argv(tiny_dataset, tmp_path / "run")) == 0
    assert calls[0] == 1 and calls[-1] == before  # the run's threads, then the caller's back
    assert capsys.readouterr().out.splitlines()[0].endswith("; cpu, 1 torch thread)")


def test_a_rerun_says_whether_it_trained_resumed_or_reused(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [*train_argv(tiny_dataset, run), "--threads", "1"]
    assert vlmkd_main([*argv, "--resume"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"  start:     from scratch (no checkpoint in {run} to resume)" in lines
    assert lines[-1] == f"model saved to {run}"
    assert vlmkd_main([*argv, "--resume"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{run}: already trained for 1 epochs; reusing its model" in lines
    assert not any(line.startswith(("epoch ", "  start:", "model saved")) for line in lines), lines
    assert lines[-1] == f"model: {run} (reused, nothing trained)"


def test_a_temperature_lr_for_a_fixed_temperature_is_warned_about(tiny_dataset, features, tmp_path, capsys):
    argv = [*train_argv(tiny_dataset, tmp_path / "run"), "--features", str(features), "--temperature-lr", "0.01"]
    assert vlmkd_main([*argv, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "# warning: --temperature-lr has no effect: the temperature is fixed (add --learn-temperature)\n" in out
    assert vlmkd_main([*argv, "--learn-temperature", "--print-config"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_two_value_crop_flags_parse_and_the_mnist_preset_does_not_crop(tiny_dataset, tmp_path, capsys):
    argv = [*train_argv(tiny_dataset, tmp_path / "run"), "--crop-scale", "0.5", "1", "--print-config"]
    assert vlmkd_main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["crop_scale"] == [0.5, 1.0] and printed["crop_ratio"] == [1.0, 1.0]  # the rest: the preset's
    with pytest.raises(SystemExit):
        vlmkd_main([*train_argv(tiny_dataset, tmp_path / "run"), "--crop-scale", "0.5"])
    assert "--crop-scale: expected 2 arguments" in capsys.readouterr().err
