"""`vlmkd plot RUN`: PNG curves drawn from metrics.jsonl, checked against the log's own values."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _cases import make_features, tiny_config, write_tiny_dataset
from PIL import Image

from vlmkd.cli import run_command
from vlmkd.errors import InputError
from vlmkd.reporting.training_curves import DPI, draw_figures, read_records, read_run

BATCH = 6


@pytest.fixture(scope="module")
def vlmkd_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-epoch VLM-KD run (learnable temperature) on 12 tiny images, one record per step."""
    from vlmkd.train.config import resolve_config
    from vlmkd.train.trainer import train

    root = tmp_path_factory.mktemp("curves")
    dataset = write_tiny_dataset(root, size=8)
    features = make_features(dataset, root)
    config = tiny_config(dataset, root / "run", features=str(features), vlmkd_weight=1.0, batch_size=BATCH, epochs=2)
    train(resolve_config({}, {**config.to_dict(), "learn_temperature": True}))  # fixed by default
    return root / "run"


def log_records(run: Path, kind: str) -> list[dict]:
    """The metrics log read independently of the module under test."""
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def plotted(figure) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The data of every line in a figure that names its record field (gid `KEY:step` / `KEY:epoch`)."""
    lines = [line for axes in figure.axes for line in axes.get_lines() if line.get_gid()]
    return {line.get_gid(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata())) for line in lines}


@pytest.mark.slow
def test_plotted_curves_match_the_metrics_log_at_every_logged_step(vlmkd_run: Path) -> None:
    figures = draw_figures(read_run(vlmkd_run))
    assert set(figures) == {"losses", "vlmkd_fraction", "temperature", "lr", "throughput"}
    steps, epochs = log_records(vlmkd_run, "step"), log_records(vlmkd_run, "epoch")
    assert len(steps) == 2 * (12 // BATCH) and len(epochs) == 2
    expected = {
        ("losses", "task_loss:step"): [(r["step"], r["task_loss"]) for r in steps],
        ("losses", "vlmkd_loss:step"): [(r["step"], r["vlmkd_loss"]) for r in steps],
        ("losses", "loss:epoch"): [(r["step"], r["loss"]) for r in epochs],
        ("vlmkd_fraction", "vlmkd_fraction:step"): [(r["step"], r["vlmkd_loss"] / math.log(BATCH)) for r in steps],
        ("temperature", "temperature:step"): [(r["step"], r["temperature"]) for r in steps],
        ("lr", "lr:step"): [(r["step"], r["lr"]) for r in steps],
        ("throughput", "images_per_s:epoch"): [(r["step"], r["images_per_s"]) for r in epochs],
    }
    for (stem, gid), points in expected.items():
        x, y = plotted(figures[stem])[gid]
        np.testing.assert_array_equal(x, [p[0] for p in points], err_msg=gid)
        np.testing.assert_allclose(y, [p[1] for p in points], rtol=1e-12, err_msg=gid)
    # the KD term is switched off (exact zeros): not drawn; the temperature moved (it is learnt)
    assert not any(gid.startswith("kd_loss") for gid in plotted(figures["losses"]))
    assert len({r["temperature"] for r in steps}) > 1


@pytest.mark.slow
def test_plot_command_writes_readable_pngs_next_to_the_run(vlmkd_run: Path, capsys) -> None:
    assert run_command("plot", [str(vlmkd_run)]) == 0
    printed = capsys.readouterr().out.split()
    names = {"losses", "vlmkd_fraction", "temperature", "lr", "throughput"}
    assert sorted(printed) == sorted(str(vlmkd_run / "plots" / f"{n}.png") for n in names)
    for name in names:
        with Image.open(vlmkd_run / "plots" / f"{name}.png") as image:
            assert image.format == "PNG"
            assert image.size == (int(8.5 * DPI), int(4.2 * DPI))
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert pixels.std() > 10 and (pixels < 100).mean() > 0.005  # drawn on, not a blank canvas


def test_switched_off_vlmkd_term_draws_no_fraction_or_temperature(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("batch_size: 32\nvlmkd_weight: 0.0\n")
    records = [
        {"kind": "step", "epoch": 1, "step": s, "lr": 0.1, "loss": 2.0 / s, "task_loss": 2.0 / s, "vlmkd_loss": 0.0,
         "kd_loss": 0.0, "skipped": False}
        for s in (1, 2, 3)
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    figures = draw_figures(read_run(tmp_path))
    assert set(figures) == {"losses", "lr"}
    assert set(plotted(figures["losses"])) == {"loss:step", "task_loss:step"}


def test_a_torn_last_line_is_dropped_and_a_bad_line_elsewhere_is_named(tmp_path: Path) -> None:
    good = json.dumps({"kind": "step", "step": 1, "loss": 1.0})
    (tmp_path / "metrics.jsonl").write_text(good + "\n" + '{"kind": "step", "st')
    assert read_records(tmp_path / "metrics.jsonl") == [json.loads(good)]
    (tmp_path / "metrics.jsonl").write_text("not json\n" + good + "\n")
    with pytest.raises(InputError, match=r"metrics\.jsonl:1: not a metrics record"):
        read_records(tmp_path / "metrics.jsonl")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(InputError, match="no such metrics log"):
        read_run(tmp_path / "empty-run")
    assert run_command("plot", [str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_importing_the_plot_module_leaves_matplotlibs_backend_alone() -> None:
    code = "import matplotlib, vlmkd.reporting.training_curves; print(matplotlib.get_backend())"
    env = {**os.environ, "MPLBACKEND": "svg"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "svg"


def test_a_fraction_logged_by_the_trainer_is_drawn_as_logged(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("batch_size: 32\n")
    records = [{"kind": "step", "step": s, "loss": 4.0, "vlmkd_loss": 3.0, "vlmkd_frac": 0.5 / s} for s in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    figure = draw_figures(read_run(tmp_path))["vlmkd_fraction"]
    x, y = plotted(figure)["vlmkd_fraction:step"]
    assert x.tolist() == [1, 2] and y.tolist() == [0.5, 0.25]  # not 3 / log(32)
    assert figure.axes[0].get_ylabel() == "VLM-KD loss / chance"
