"""`vlmkd plot RUN`: a run's training curves from its metrics.jsonl, as PNG figures written next to it.

The same quantities as the TensorBoard sink (`vlmkd.train.tensorboard_log`), without TensorBoard: each loss
term per step with its epoch means, the VLM-KD loss as a fraction of chance, the temperature, the learning
rate and the throughput. Figures are built on `matplotlib.figure.Figure` with the Agg canvas, so importing
this module never changes matplotlib's global backend.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vlmkd.arguments import ArgumentParser
from vlmkd.atomic_files import write_bytes_atomic
from vlmkd.bounded_read import read_yaml_file
from vlmkd.errors import InputError
from vlmkd.folder_kind import entries, refuse_unless
from vlmkd.train.record_fields import (
    FRACTION,
    FRACTION_FIELDS,
    IMAGES_PER_S,
    LEARNING_RATE,
    LOSS_TERMS,
    TEMPERATURE,
    vlmkd_fraction,
)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
PLOTS_DIR = "plots"
FIGURE_STEMS = frozenset({"losses", FRACTION, "temperature", "lr", "throughput"})  # `draw_figures`' file stems
MIN_TEMPERATURE = 0.01  # the logit scale is clamped at 100
DPI = 120
SPARSE_POINTS = 40


@dataclass(frozen=True)
class Series:
    """One curve: `values` at training `steps` (an epoch's value sits at its last step)."""

    steps: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class RunCurves:
    """Every curve of a run, keyed by record field (plus `vlmkd_fraction`), per step and per epoch."""

    per_step: dict[str, Series]
    per_epoch: dict[str, Series]
    epoch_ends: list[tuple[int, int]]  # (epoch, its last step)
    batch_size: int | None = None
    fraction_logged: bool = False  # the trainer logged the fraction (of its own chance level); else loss/log(B)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a torn last line (a killed run) is dropped, a bad line elsewhere is
    an `InputError` naming it. Records are returned by step, one per (kind, step), the last one kept."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such metrics log (is {path.parent} a vlmkd-train output directory?)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: unreadable metrics log ({error})") from None
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = (str(record["kind"]), int(record["step"]))
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break  # torn by a kill mid-write
            raise InputError(f"{path}:{number}: not a metrics record (JSON with kind and step)") from None
        records[key] = record
    return [records[key] for key in sorted(records, key=lambda k: (k[1], k[0] == "epoch"))]


def read_run(run: Path) -> RunCurves:
    """The curves of the run directory `run` (its metrics.jsonl and, for the batch size, its config.yaml)."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"{run}: no such run directory")
    records = read_records(run / METRICS_FILE)
    if not records:
        raise InputError(f"{run / METRICS_FILE}: no records yet (the first is written after --log-every steps)")
    settings = _read_settings(run / CONFIG_FILE)
    batch_size = settings.get("batch_size") if isinstance(settings.get("batch_size"), int) else None
    return curves_from_records(records, batch_size)


def curves_from_records(records: Sequence[Mapping[str, Any]], batch_size: int | None) -> RunCurves:
    """Series of every loss term, the VLM-KD fraction of chance, temperature, lr and images/s.

    A term that is an exact zero throughout (switched off) gets no series; non-finite values (skipped
    steps) are left out of their series.
    """
    per_step = _collect([r for r in records if r.get("kind") == "step"], batch_size)
    per_epoch = _collect([r for r in records if r.get("kind") == "epoch"], batch_size)
    epoch_ends = [(int(r["epoch"]), int(r["step"])) for r in records if r.get("kind") == "epoch" and "epoch" in r]
    logged = any(isinstance(r.get(name), (int, float)) for r in records for name in FRACTION_FIELDS)
    return RunCurves(per_step, per_epoch, epoch_ends, batch_size, logged)


def _collect(records: Sequence[Mapping[str, Any]], batch_size: int | None) -> dict[str, Series]:
    columns: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        values = {key: record.get(key) for key in (*LOSS_TERMS, TEMPERATURE, LEARNING_RATE, IMAGES_PER_S)}
        values[FRACTION] = vlmkd_fraction(record, batch_size)
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                columns.setdefault(key, []).append((int(record["step"]), float(value)))
    series = {}
    for key, points in columns.items():
        if key in LOSS_TERMS and key != "loss" and all(v == 0.0 for _, v in points):
            continue  # a switched-off term
        steps, values = zip(*points, strict=True)
        series[key] = Series(np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64))
    return series


def _read_settings(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        settings = read_yaml_file(path, "run config")  # bounded: size, aliases, UTF-8
    except InputError as error:
        raise InputError(f"{path}: unreadable run config ({str(error).removeprefix(str(path)).lstrip(': ')})") from None
    return settings if isinstance(settings, dict) else {}


# ----------------------------------------------------------------------------------------------- figures
def draw_figures(curves: RunCurves) -> dict[str, Figure]:
    """One figure per quantity the run logged, by file stem: losses, vlmkd_fraction, temperature, lr,
    throughput. Every drawn line has a gid `KEY:step` or `KEY:epoch` naming the record field it shows."""
    figures = {"losses": _losses_figure(curves)}
    if FRACTION in curves.per_step or FRACTION in curves.per_epoch:
        figures[FRACTION] = _fraction_figure(curves)
    if TEMPERATURE in curves.per_step or TEMPERATURE in curves.per_epoch:
        figures["temperature"] = _temperature_figure(curves)
    if LEARNING_RATE in curves.per_step:
        figures["lr"] = _single_figure(curves, LEARNING_RATE, "learning rate", "Learning rate")
    if IMAGES_PER_S in curves.per_epoch:
        figures["throughput"] = _throughput_figure(curves)
    return figures


def _new_axes(title: str) -> tuple[Figure, Any]:
    figure = Figure(figsize=(8.5, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel("training step")
    axes.grid(True, alpha=0.3)
    return figure, axes


def _epoch_axis(axes: Any, curves: RunCurves) -> None:
    """Faint lines at epoch ends and the epoch numbers along the top."""
    if not curves.epoch_ends:
        return
    ends = [step for _, step in curves.epoch_ends]
    for step in ends:
        axes.axvline(step, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
    top = axes.secondary_xaxis("top")
    shown = curves.epoch_ends[:: max(1, len(ends) // 12)]  # at most ~12 labels
    top.set_xticks([step for _, step in shown], [str(epoch) for epoch, _ in shown])
    top.set_xlabel("end of epoch", fontsize=9)
    top.tick_params(labelsize=8)


def _plot_pair(axes: Any, curves: RunCurves, key: str, label: str, colour: str) -> None:
    """A key's per-step line and its per-epoch means (circles on a dashed line), in one colour."""
    if key in curves.per_step:
        s = curves.per_step[key]
        marker = "." if len(s.steps) <= SPARSE_POINTS else None  # few logged steps: show where they are
        axes.plot(
            s.steps, s.values, color=colour, linewidth=1.2, alpha=0.85, marker=marker, label=label, gid=f"{key}:step",
            zorder=3,
        )  # fmt: skip
    if key in curves.per_epoch:
        e = curves.per_epoch[key]
        axes.plot(
            e.steps, e.values, color=colour, marker="o", markersize=5, linestyle="--", linewidth=0.8,
            label=None if key in curves.per_step else f"{label} (epoch mean)", gid=f"{key}:epoch",
        )  # fmt: skip


def _epoch_legend_entry(curves: RunCurves) -> list[Line2D]:
    if not curves.per_epoch:
        return []
    return [Line2D([], [], color="0.35", marker="o", linestyle="--", linewidth=0.8, label="epoch mean")]


def _finish_legend(axes: Any, curves: RunCurves) -> None:
    handles = axes.get_legend_handles_labels()[0] + _epoch_legend_entry(curves)
    if handles:
        axes.legend(handles=handles, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def _losses_figure(curves: RunCurves) -> Figure:
    figure, axes = _new_axes("Loss terms (VLM-KD and KD before their weights)")
    for index, (key, label) in enumerate(LOSS_TERMS.items()):
        _plot_pair(axes, curves, key, label, f"C{index}")
    axes.set_ylabel("loss")
    _epoch_axis(axes, curves)
    _finish_legend(axes, curves)
    return figure


def _fraction_figure(curves: RunCurves) -> Figure:
    if curves.fraction_logged:
        title, ylabel = "VLM-KD loss as a fraction of its chance level", "VLM-KD loss / chance"
    else:
        batch = f"log({curves.batch_size}) = {math.log(curves.batch_size):.2f}" if curves.batch_size else "log(batch)"
        title, ylabel = f"VLM-KD loss as a fraction of chance ({batch})", "VLM-KD loss / log(batch)"
    figure, axes = _new_axes(title)
    _plot_pair(axes, curves, FRACTION, ylabel, "C2")
    axes.axhline(
        1.0, color="0.25", linestyle=(0, (6, 3)), linewidth=1.0, label="chance (captions not matched)", zorder=1
    )
    axes.set_ylabel(ylabel)
    values = np.concatenate([s.values for k, s in (*curves.per_step.items(), *curves.per_epoch.items())
                             if k == FRACTION])  # fmt: skip
    axes.set_ylim(0.0, max(1.1, float(values.max()) * 1.05))
    _epoch_axis(axes, curves)
    _finish_legend(axes, curves)
    return figure


def _temperature_figure(curves: RunCurves) -> Figure:
    values = np.concatenate([s.values for k, s in (*curves.per_step.items(), *curves.per_epoch.items())
                             if k == TEMPERATURE])  # fmt: skip
    fixed = f" (fixed at {values[0]:.3g})" if np.allclose(values, values[0], rtol=1e-6) else ""
    figure, axes = _new_axes(f"Contrastive temperature{fixed}")
    _plot_pair(axes, curves, TEMPERATURE, "temperature", "C4")
    if values.max() / max(values.min(), 1e-12) > 10:
        axes.set_yscale("log")
    if values.min() < 2 * MIN_TEMPERATURE:
        axes.axhline(MIN_TEMPERATURE, color="0.25", linestyle=(0, (6, 3)), linewidth=1.0, label="clamp (scale 100)")
    axes.set_ylabel("temperature τ")
    _epoch_axis(axes, curves)
    _finish_legend(axes, curves)
    return figure


def _single_figure(curves: RunCurves, key: str, ylabel: str, title: str) -> Figure:
    figure, axes = _new_axes(title)
    _plot_pair(axes, curves, key, ylabel, "C0")
    axes.set_ylabel(ylabel)
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    _epoch_axis(axes, curves)
    return figure


def _throughput_figure(curves: RunCurves) -> Figure:
    figure, axes = _new_axes("Training throughput per epoch")
    _plot_pair(axes, curves, IMAGES_PER_S, "images/s", "C5")
    axes.set_ylabel("images / s")
    axes.set_ylim(bottom=0)
    _epoch_axis(axes, curves)
    return figure


def plot_run(run: Path, out: Path | None = None) -> dict[str, Path]:
    """Write the run's figures as PNGs into `out` (default RUN/plots); returns their paths by stem."""
    run = Path(run)
    out = Path(out) if out is not None else run / PLOTS_DIR
    refuse_unless(out, set(), stage="folder of vlmkd plot figures", own=_holds_figures_only)
    figures = draw_figures(read_run(run))
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for stem, figure in figures.items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=DPI)
        path = out / f"{stem}.png"
        write_bytes_atomic(path, buffer.getvalue(), durable=False)
        written[stem] = path
    return written


def _holds_figures_only(folder: Path) -> bool:
    """Whether `folder` holds nothing but figures `plot_run` writes (its own earlier output)."""
    return all(name.endswith(".png") and name.removesuffix(".png") in FIGURE_STEMS for name in entries(folder))


def main(argv: list[str] | None = None) -> int:
    """`vlmkd plot RUN [--out DIR]`."""
    parser = ArgumentParser(
        prog="vlmkd plot",
        description="Draw a training run's curves from its metrics.jsonl into PNGs: loss terms, the VLM-KD "
        "loss as a fraction of chance (log batch), temperature, learning rate, throughput. Works while the "
        "run is still going.",
    )
    parser.add_argument("run", type=Path, help="vlmkd-train --output directory")
    parser.add_argument("--out", type=Path, default=None, help=f"where the PNGs go (default: RUN/{PLOTS_DIR})")
    args = parser.parse_args(argv)
    for path in plot_run(args.run, args.out).values():
        print(path)
    return 0
