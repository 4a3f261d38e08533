"""`vlmkd-eval --save-features`: the test images' features and the VLM-KD loss module, for probing a model.

Layout of `OUT/features/` (every file written atomically, `features.json` last)::

    image_features.npy        float32 (N, D)  the classifier's pooled image features, test-set order
    labels.npy                int64 (N,)      true labels
    predicted.npy             int64 (N,)      predicted labels
    vlmkd_loss.safetensors    the VLM-KD loss module's state (text adaptor, temperature...), when a
                              training checkpoint of a run with the VLM-KD term is found
    text_conditioning.safetensors  the fixed map the run applied to caption features before the adaptor
                              (`mean` (P, D) per prompt, `scale`, `whitening` when on), with that state
    features.json             what the files are: checkpoint, dataset, shapes, image paths, the run's
                              VLM-KD settings and temperature, the checkpoint it came from

The loss module's state is the `contrastive` part of the objective that `vlmkd-train` stores in each
checkpoint's `train_state.safetensors` (the deployable classifier has none): keys as in
`VlmkdContrastiveLoss.state_dict()` (e.g. `adaptor.weight`, `adaptor.bias`, `logit_scale`). To compare new
text with the saved image features, condition its caption features with the saved map
(`EvalFeatures.text_conditioning.apply`) before `VlmkdContrastiveLoss.embed_text`.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmkd.atomic_files import write_bytes_atomic, write_json_atomic
from vlmkd.bounded_read import read_json_file
from vlmkd.data import ImageList
from vlmkd.encode.conditioning import TextConditioning
from vlmkd.errors import InputError
from vlmkd.evaluate.metrics import Predictions
from vlmkd.losses.contrastive import temperature
from vlmkd.train.text import conditioning_from_tensors, conditioning_tensors, saved_conditioning

FORMAT = "vlmkd-eval-features"
VERSION = 1
DIRECTORY = "features"
MANIFEST = "features.json"
LOSS_STATE = "vlmkd_loss.safetensors"
CONDITIONING_STATE = "text_conditioning.safetensors"
LOSS_PREFIX = "contrastive."  # the VLM-KD loss module inside the objective's state dict
ARRAYS = {"image_features": "image_features.npy", "labels": "labels.npy", "predicted": "predicted.npy"}
LOSS_SETTINGS = ("vlmkd_weight", "positives", "negatives", "temperature", "learn_temperature", "adaptor_hidden",
                 "caption_mix", "prompts", "features")  # fmt: skip


@dataclass(frozen=True)
class EvalFeatures:
    """What `save_eval_features` wrote, read back: arrays in test-set order and the VLM-KD loss state."""

    image_features: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    vlmkd_loss_state: dict[str, torch.Tensor] | None
    manifest: dict[str, Any]
    text_conditioning: TextConditioning | None = None


def save_eval_features(
    out_dir: str | Path, checkpoint: str | Path, dataset: ImageList, predictions: Predictions
) -> Path:
    """Write `out_dir/features/` (layout in the module docstring) and return that directory."""
    directory = Path(out_dir) / DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "image_features": predictions.features.astype(np.float32),
        "labels": predictions.labels.astype(np.int64),
        "predicted": predictions.predicted.astype(np.int64),
    }
    for name, array in arrays.items():
        write_bytes_atomic(directory / ARRAYS[name], _npy_bytes(array), durable=False)
    found, reason = find_training_state(Path(checkpoint))
    vlmkd: dict[str, Any] | None = None
    if found is not None:
        epoch_dir, state, info, conditioning = found
        from safetensors.torch import save

        write_bytes_atomic(directory / LOSS_STATE, save(state), durable=False)
        if conditioning is not None:
            write_bytes_atomic(directory / CONDITIONING_STATE, save(conditioning_tensors(conditioning)), durable=False)
        else:
            (directory / CONDITIONING_STATE).unlink(missing_ok=True)
        config = info.get("config", {})
        scale = next((v for k, v in state.items() if k.rsplit(".", 1)[-1] == "logit_scale"), None)
        vlmkd = {
            "file": LOSS_STATE,
            "checkpoint": str(epoch_dir),
            "epoch": info.get("epoch"),
            "tensors": {key: list(value.shape) for key, value in state.items()},
            "logit_scale": None if scale is None else float(scale),
            "temperature": None if scale is None else temperature(scale),
            "settings": {name: config.get(name) for name in LOSS_SETTINGS if name in config},
            "features_fingerprint": info.get("features_fingerprint"),
            "text_conditioning": None
            if conditioning is None
            else {"file": CONDITIONING_STATE, **conditioning.summary()},
        }
    else:
        for stale in (LOSS_STATE, CONDITIONING_STATE):  # from an earlier save of another checkpoint
            (directory / stale).unlink(missing_ok=True)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": str(checkpoint),
        "dataset": str(dataset.source),
        "dataset_fingerprint": dataset.fingerprint(),
        "num_images": len(dataset),
        "dim": int(arrays["image_features"].shape[1]),
        "files": dict(ARRAYS),
        "image_paths": [sample.path for sample in dataset.samples],
        "vlmkd_loss": vlmkd,
        "vlmkd_loss_missing": reason,
    }
    write_json_atomic(directory / MANIFEST, manifest, ignore_dir_errors=True)
    return directory


def load_eval_features(directory: str | Path) -> EvalFeatures:
    """Read what `save_eval_features` wrote (`OUT/features`, or `OUT` itself)."""
    directory = Path(directory)
    if not (directory / MANIFEST).is_file() and (directory / DIRECTORY / MANIFEST).is_file():
        directory = directory / DIRECTORY
    try:
        manifest = read_json_file(directory / MANIFEST, "saved-features manifest")  # bounded in size
    except InputError as error:
        detail = str(error).removeprefix(str(directory / MANIFEST)).lstrip(":0123456789 ")
        raise InputError(f"{directory / MANIFEST}: unreadable saved-features manifest ({detail})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{directory / MANIFEST}: not a vlmkd-eval features manifest")
    try:
        arrays = {name: np.load(directory / file, allow_pickle=False) for name, file in manifest["files"].items()}
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"{directory}: unreadable saved features ({error})") from None
    state = conditioning = None
    loss = manifest.get("vlmkd_loss")
    if loss:
        from safetensors.torch import load_file

        state = load_file(str(directory / loss["file"]))
        if loss.get("text_conditioning"):
            conditioning = conditioning_from_tensors(
                load_file(str(directory / CONDITIONING_STATE)), loss["text_conditioning"]
            )
    return EvalFeatures(arrays["image_features"], arrays["labels"], arrays["predicted"], state, manifest, conditioning)


def find_training_state(
    checkpoint: Path,
) -> tuple[tuple[Path, dict[str, torch.Tensor], dict[str, Any], TextConditioning | None] | None, str | None]:
    """The VLM-KD loss state (and text conditioning) of the training checkpoint behind `checkpoint`, or None
    and why not.

    An `epoch_NNNN` directory is used as is; for a run directory, its latest epoch checkpoint, provided
    that checkpoint holds the same classifier weights as the run's final model.
    """
    from vlmkd.train.checkpoint import MODEL_WEIGHTS, STATE_META, latest_checkpoint, load_checkpoint

    directory = checkpoint.parent if checkpoint.is_file() else checkpoint
    if (directory / STATE_META).is_file():
        epoch_dir = directory
    else:
        epoch_dir = latest_checkpoint(directory)
        if epoch_dir is None:
            return None, f"{directory} holds no training checkpoint (epoch_NNNN directory)"
        if _digest(epoch_dir / MODEL_WEIGHTS) != _digest(directory / MODEL_WEIGHTS):
            return None, f"{epoch_dir.name}'s weights are not the run's final model (training unfinished?)"
    _, train_state, info = load_checkpoint(epoch_dir)
    objective = train_state.get("objective", {})
    state = {k.removeprefix(LOSS_PREFIX): v for k, v in objective.items() if k.startswith(LOSS_PREFIX)}
    if not state:
        return None, f"{epoch_dir.name} was trained without the VLM-KD term (no loss module state)"
    return (epoch_dir, state, info, saved_conditioning(train_state, info)), None


def _digest(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
