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
    try:
        model = build_model(ModelSpec(**meta["spec"]))
    except (KeyError, TypeError) as error:
        raise InputError(f"{directory / MODEL_META}: not a vlmkd model description ({error})") from None
    try:
        model.load_state_dict(_read_tensors(directory / MODEL_WEIGHTS))
    except RuntimeError as error:
        raise InputError(f"{directory / MODEL_WEIGHTS}: weights do not fit {meta['spec']} ({error})") from None
    return model.to(device).eval(), meta


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{file}: unreadable or corrupt JSON ({error})") from None
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
