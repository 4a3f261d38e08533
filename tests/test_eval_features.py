"""`vlmkd-eval --save-features`: test-image features and the VLM-KD loss module on disk, checked against the model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _cases import make_features, tiny_config
from safetensors.torch import load_file

from vlmkd.cli import main
from vlmkd.data.loaders import build_loader
from vlmkd.evaluate import load_eval_features
from vlmkd.train.checkpoint import load_classifier
from vlmkd.train.trainer import train

pytestmark = pytest.mark.slow  # each test trains a tiny model (~5-10 s)


@pytest.fixture
def vlmkd_run(tiny_dataset, tmp_path):
    features = make_features(tiny_dataset, tmp_path)
    config = tiny_config(
        tiny_dataset, tmp_path / "run", features=str(features), vlmkd_weight=1.0, batch_size=6, epochs=2
    )
    train(config)
    return tmp_path / "run"


def reference_features(run, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Features and logits from the saved classifier, batch by batch, outside the eval code."""
    model, meta = load_classifier(run)
    config = meta["config"]
    loader = build_loader(dataset, train=False, batch_size=5, image_size=config["image_size"], num_workers=0,
                          mean=tuple(config["mean"]), std=tuple(config["std"]), flip=False)  # fmt: skip
    features, logits = [], []
    with torch.no_grad():
        for images, _, _ in loader:
            batch_logits, batch_features = model(images, return_features=True)
            features.append(batch_features)
            logits.append(batch_logits)
    return torch.cat(features).numpy(), torch.cat(logits).numpy()


def test_save_features_writes_image_features_and_the_final_vlmkd_loss_module(vlmkd_run, tiny_dataset, tmp_path):
    out = tmp_path / "eval"
    argv = ["eval", str(vlmkd_run), str(tiny_dataset.source), "--out", str(out), "--no-plots", "--num-workers", "0"]
    assert main([*argv, "--save-features"]) == 0
    saved = out / "features"
    manifest = json.loads((saved / "features.json").read_text())
    features, logits = reference_features(vlmkd_run, tiny_dataset)
    on_disk = np.load(saved / "image_features.npy")
    assert on_disk.dtype == np.float32 and on_disk.shape == (len(tiny_dataset), manifest["dim"])
    np.testing.assert_allclose(on_disk, features, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.load(saved / "labels.npy"), tiny_dataset.labels())
    np.testing.assert_array_equal(np.load(saved / "predicted.npy"), logits.argmax(axis=1))
    assert manifest["image_paths"] == [s.path for s in tiny_dataset.samples]
    assert manifest["dataset_fingerprint"] == tiny_dataset.fingerprint()

    # The loss module is the last epoch's, read here straight from the checkpoint's tensor file.
    head = manifest["vlmkd_loss"]
    assert head["checkpoint"] == str(vlmkd_run / "epoch_0002") and head["epoch"] == 2
    train_state = load_file(str(vlmkd_run / "epoch_0002" / "train_state.safetensors"))
    expected = {
        k.split("objective.contrastive.", 1)[1]: v for k, v in train_state.items() if "objective.contrastive." in k
    }
    state = load_file(str(saved / "vlmkd_loss.safetensors"))
    saved_keys = {"adaptor.weight", "logit_scale", "image_norm.running_mean", "image_projection.weight"}
    assert set(state) == set(expected) and saved_keys <= set(state)  # the default adaptor has no bias
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    assert head["temperature"] == pytest.approx(math.exp(-float(expected["logit_scale"])))
    assert head["settings"]["vlmkd_weight"] == 1.0 and head["tensors"]["adaptor.weight"] == list(
        state["adaptor.weight"].shape
    )
    loaded = load_eval_features(out)  # the Python reader finds OUT/features itself
    np.testing.assert_array_equal(loaded.image_features, on_disk)
    torch.testing.assert_close(loaded.vlmkd_loss_state["adaptor.weight"], expected["adaptor.weight"], rtol=0, atol=0)


def test_an_epoch_checkpoint_gives_that_epochs_loss_module_and_a_baseline_none(vlmkd_run, tiny_dataset, tmp_path):
    from vlmkd.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(vlmkd_run / "epoch_0001", tiny_dataset.source, tmp_path / "e1", plots=False,
                                  num_workers=0, save_features=True)  # fmt: skip
    saved = load_eval_features(results["features"])
    assert saved.manifest["vlmkd_loss"]["epoch"] == 1
    first = load_file(str(vlmkd_run / "epoch_0001" / "train_state.safetensors"))
    last = load_file(str(vlmkd_run / "epoch_0002" / "train_state.safetensors"))
    key = "objective.contrastive.adaptor.weight"
    torch.testing.assert_close(saved.vlmkd_loss_state["adaptor.weight"], first[key], rtol=0, atol=0)
    assert not torch.equal(first[key], last[key])  # the adaptor trained: epoch 1 and 2 really differ

    train(tiny_config(tiny_dataset, tmp_path / "baseline", batch_size=6, epochs=1))
    results = evaluate_checkpoint(tmp_path / "baseline", tiny_dataset.source, tmp_path / "e0", plots=False,
                                  num_workers=0, save_features=True)  # fmt: skip
    saved = load_eval_features(tmp_path / "e0" / "features")
    assert saved.vlmkd_loss_state is None and saved.manifest["vlmkd_loss"] is None
    assert "without the VLM-KD term" in saved.manifest["vlmkd_loss_missing"]
    assert not (tmp_path / "e0" / "features" / "vlmkd_loss.safetensors").exists()
    assert saved.image_features.shape[0] == len(tiny_dataset)


def test_the_text_conditioning_travels_with_the_checkpoint_and_the_saved_features(vlmkd_run, tiny_dataset, tmp_path):
    """The adaptor only means something behind the map it was trained with: both are saved, and the saved map
    is the one computed from the feature store (recomputed here, in float64 numpy, outside vlmkd)."""
    from vlmkd.encode.store import FeatureStore
    from vlmkd.evaluate import evaluate_checkpoint

    features = np.asarray(FeatureStore.open(vlmkd_run.parent / "features").features, dtype=np.float64)  # (N, P, D)
    mean = features.mean(axis=0)  # each prompt's own mean
    scale = 1.0 / np.sqrt(((features - mean) ** 2).sum(axis=2).mean())
    results = evaluate_checkpoint(vlmkd_run, tiny_dataset.source, tmp_path / "e", plots=False, num_workers=0,
                                  save_features=True)  # fmt: skip
    saved = load_eval_features(results["features"])
    conditioning = saved.text_conditioning
    assert conditioning is not None and conditioning.center == "prompt" and conditioning.whitening is None
    np.testing.assert_allclose(conditioning.mean, mean, rtol=0, atol=1e-6)
    assert conditioning.scale == pytest.approx(scale, rel=1e-6)
    assert saved.manifest["vlmkd_loss"]["text_conditioning"]["file"] == "text_conditioning.safetensors"
    # Applying it gives what training fed the adaptor: centred per prompt, root-mean-square norm 1.
    last = features.shape[1] - 1
    columns = np.full(len(features), last, dtype=np.int64)
    conditioned = conditioning.apply(features[:, last].astype(np.float32), columns)
    np.testing.assert_allclose(conditioned, (features[:, last] - mean[last]) * scale, rtol=0, atol=1e-5)
