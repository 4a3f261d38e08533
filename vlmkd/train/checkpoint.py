"""Checkpoints without pickle: tensors in safetensors files, everything else in JSON.

A training checkpoint is a directory `epoch_NNNN/` holding `model.safetensors` + `model.json` (the
deployable classifier, without the text adaptor), `train_state.safetensors` (optimizer, adaptor,
random-number state) and `state.json` (epoch, step, counters and the structure of the nested states).
Directories appear atomically (written under a temporary name, then renamed), so a killed run leaves
either a complete checkpoint or none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save, save_file

from vlmkd.atomic_files import write_bytes_atomic, write_text_atomic
from vlmkd.bounded_read import read_json_file
from vlmkd.errors import InputError
from vlmkd.models import Classifier, ModelSpec, build_model

MODEL_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"
TRAIN_STATE = "train_state.safetensors"
STATE_META = "state.json"
_EPOCH_DIR = re.compile(r"^epoch_(\d{4,})$")


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """JSON-able skeleton of `obj` with every tensor moved into `tensors` under a path-like key.

    Dicts with non-string keys (optimizer state is keyed by parameter index) keep their key types.
    """
    if isinstance(obj, torch.Tensor):
        key = prefix.rstrip(".")
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        items = [[k, flatten_state(v, tensors, f"{prefix}{k}.")] for k, v in obj.items()]
        if all(isinstance(k, str) for k in obj):
            return dict(items)
        return {"__items__": items}
    if isinstance(obj, (list, tuple)):
        return [flatten_state(v, tensors, f"{prefix}{i}.") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix.rstrip('.')!r} in a checkpoint")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__items__" in skeleton:
            return {k: unflatten_state(v, tensors) for k, v in skeleton["__items__"]}
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def save_classifier(directory: Path, model: Classifier, spec: ModelSpec, meta: dict[str, Any]) -> None:
    """Write the deployable classifier: weights plus its spec and `meta` (class names, training counts).

    Each file is written under a temporary name and renamed, `model.json` last, so a kill mid-save never
    leaves a truncated file that a reader would take for a classifier. (Renamed only, not fsynced.)
    """
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save(state)
    meta_text = json.dumps({"spec": spec.to_dict(), **meta}, indent=2)
    write_bytes_atomic(directory / MODEL_WEIGHTS, weights, durable=False)
    write_text_atomic(directory / MODEL_META, meta_text, durable=False)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """A classifier saved by `save_classifier` (a directory, or its `model.safetensors`), in eval mode."""
    path = Path(path)
    directory = path.parent if path.is_file() else path
    if not (directory / MODEL_WEIGHTS).is_file() or not (directory / MODEL_META).is_file():
        raise InputError(f"{path}: not a vlmkd classifier (expected {MODEL_WEIGHTS} and {MODEL_META})")
    meta = _read_json(directory / MODEL_META)
    spec = model_spec(meta, directory / MODEL_META)
    model = build_model(spec)
    state = _read_tensors(directory / MODEL_WEIGHTS)
    check_finite_weights(state, directory / MODEL_WEIGHTS)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:300]
        raise InputError(f"{directory / MODEL_WEIGHTS}: weights do not fit {spec} ({reason})") from None
    return model.to(device).eval(), meta


def model_spec(meta: dict[str, Any], file: Path) -> ModelSpec:
    """The model's spec from `model.json`, with its class names and training counts checked against it.

    Evaluation splits classes by `train_counts` and names them by `classnames`: one per class, or the
    Many/Medium/Few figures would be computed over the wrong classes.
    """
    raw = meta.get("spec")
    if not isinstance(raw, dict):
        raise InputError(f"{file}: not a vlmkd model description (no 'spec' object)")
    try:
        spec = ModelSpec(**raw)
    except TypeError as error:
        raise InputError(f"{file}: not a vlmkd model description ({error})") from None
    if not isinstance(spec.arch, str) or not _is_int(spec.num_classes) or spec.num_classes < 1:
        raise InputError(f"{file}: spec needs a string 'arch' and an integer 'num_classes' >= 1")
    width_ok = isinstance(spec.width, (int, float)) and not isinstance(spec.width, bool) and spec.width > 0
    if not width_ok or not isinstance(spec.norm, str):
        raise InputError(f"{file}: spec needs a positive number 'width' and a string 'norm'")
    names, counts = meta.get("classnames"), meta.get("train_counts")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise InputError(f"{file}: 'classnames' must be a list of non-empty strings")
    if len(set(names)) != len(names):
        raise InputError(f"{file}: 'classnames' has duplicate names")
    if not isinstance(counts, list) or not all(_is_int(c) and c >= 0 for c in counts):
        raise InputError(f"{file}: 'train_counts' must be a list of non-negative integers")
    if not len(names) == len(counts) == spec.num_classes:
        raise InputError(
            f"{file}: {len(names)} class names and {len(counts)} training counts for a model of "
            f"{spec.num_classes} classes; they must agree"
        )
    if "config" in meta and not isinstance(meta["config"], dict):
        raise InputError(f"{file}: 'config' must be an object")
    return spec


def check_finite_weights(state: dict[str, torch.Tensor], file: Path) -> None:
    """Refuse NaN/inf weights (a diverged run): they would give a chance-level score without a word."""
    bad = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise InputError(
            f"{file}: {len(bad)} of {len(state)} tensors hold NaN or infinite values (first: {bad[0]}); the "
            "training diverged: retrain with a lower --lr, or resume from an earlier epoch_NNNN checkpoint"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = read_json_file(file, "checkpoint JSON")
    except InputError as error:
        detail = str(error).removeprefix(str(file)).lstrip(":0123456789 ")
        raise InputError(f"{file}: unreadable or corrupt JSON ({detail})") from None
    if not isinstance(data, dict):
        raise InputError(f"{file}: expected a JSON object")
    return data


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as error:
        raise InputError(f"{file}: unreadable or corrupt safetensors file ({error})") from None


def save_checkpoint(
    run_dir: Path,
    epoch: int,
    *,
    model: Classifier,
    spec: ModelSpec,
    model_meta: dict[str, Any],
    train_state: dict[str, Any],
    info: dict[str, Any],
) -> Path:
    """Write `run_dir/epoch_NNNN/` atomically; `train_state` is any nest of dicts/lists/tensors/scalars."""
    final = run_dir / f"epoch_{epoch:04d}"
    tmp = run_dir / f".tmp_epoch_{epoch:04d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_classifier(tmp, model, spec, model_meta)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(train_state, tensors)
    save_file(tensors, str(tmp / TRAIN_STATE))
    (tmp / STATE_META).write_text(json.dumps({**info, "epoch": epoch, "train_state": skeleton}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def load_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(model state dict, train state, info) of a checkpoint directory written by `save_checkpoint`."""
    if not (directory / STATE_META).is_file():
        raise InputError(f"{directory}: not a vlmkd training checkpoint (no {STATE_META})")
    info = _read_json(directory / STATE_META)
    try:
        train_state = unflatten_state(info.pop("train_state"), _read_tensors(directory / TRAIN_STATE))
    except KeyError as error:
        raise InputError(f"{directory}: checkpoint state and tensors do not match (missing {error})") from None
    return _read_tensors(directory / MODEL_WEIGHTS), train_state, info


def sweep_temporary(run_dir: Path) -> None:
    """Remove what a run killed inside a save left behind: `.tmp_epoch_*` directories and `.model.*.tmp` files."""
    if not run_dir.is_dir():
        return
    for debris in run_dir.glob(".tmp_epoch_*"):
        shutil.rmtree(debris, ignore_errors=True)
    for debris in run_dir.glob(".model.*.tmp"):
        debris.unlink(missing_ok=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint of the highest epoch in `run_dir`, if any."""
    if not run_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _EPOCH_DIR.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None
