"""What a trained encoder knows about per-image attributes: retrieval through the adaptor and linear probes.

- Retrieval: each test image's features are compared, through a run's text adaptor, with the mean (conditioned)
  training caption feature of every level of an attribute; the closest level is the prediction. The null is
  the same adaptor applied to the baseline's features (same seed, trained without the text term).
- Linear probe: a logistic regression on frozen features (training split) predicting an attribute's level
  of the test split's images; run on pixels, an untrained network, the baseline and VLM-KD.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vlmkd.data import ImageList
from vlmkd.encode.store import FeatureStore
from vlmkd.evaluate.metrics import predict
from vlmkd.models import Classifier
from vlmkd.train.checkpoint import latest_checkpoint, load_checkpoint, load_classifier
from vlmkd.train.config import TrainConfig


def encoder_features(model: Classifier, dataset: ImageList, config: dict) -> np.ndarray:
    """(N, D) frozen features of `dataset` in order, with the run's evaluation transform."""
    return predict(
        model,
        dataset,
        image_size=config["image_size"],
        mean=config["mean"],
        std=config["std"],
        num_workers=0,
    ).features


def run_features(run: Path, dataset: ImageList) -> np.ndarray:
    """Features of `dataset` under the final model of training run `run`."""
    model, meta = load_classifier(run)
    return encoder_features(model, dataset, meta["config"])


class TextAdaptor:
    """A run's learnt text side, rebuilt from its last checkpoint: conditioning and the VLM-KD loss module."""

    def __init__(self, run: Path) -> None:
        from vlmkd.train.text import build_contrastive, saved_conditioning

        checkpoint = latest_checkpoint(run)
        if checkpoint is None:
            raise FileNotFoundError(f"{run}: no checkpoint")
        _, train_state, info = load_checkpoint(checkpoint)
        self.config = info["config"]
        state = {k.removeprefix("contrastive."): v for k, v in train_state["objective"].items()}
        self.store = FeatureStore.open(self.config["features"])
        counts = load_classifier(checkpoint)[1]["train_counts"]  # class-balanced contrasts weigh anchors by them
        self.loss = build_contrastive(
            TrainConfig(**self.config), self.store.dim, state["adaptor.weight"].shape[0], class_counts=counts
        )
        self.loss.load_state_dict({k: v for k, v in state.items()})
        self.loss.eval()
        conditioning = saved_conditioning(train_state, info)  # the map the adaptor was trained behind
        if conditioning is None:
            raise FileNotFoundError(f"{checkpoint}: no text conditioning (trained without it, or by an older vlmkd)")
        self.conditioning = conditioning

    @torch.no_grad()
    def level_prototypes(self, levels: np.ndarray) -> torch.Tensor:
        """(L, Dv) adapted mean (conditioned) caption feature of the training images at each level."""
        features = self.store.features.astype(np.float32)
        num_images, num_prompts, dim = features.shape
        columns = np.tile(np.arange(num_prompts), num_images)
        conditioned = self.conditioning.apply(features.reshape(-1, dim), columns).reshape(features.shape)
        means = np.stack([conditioned[levels == k].mean(axis=(0, 1)) for k in range(int(levels.max()) + 1)])
        return self.loss.embed_text(torch.from_numpy(means))

    @torch.no_grad()
    def retrieval(self, features: np.ndarray, levels: np.ndarray, train_levels: np.ndarray) -> float:
        """Accuracy (%) of picking each image's level by its closest adapted level prototype."""
        images = self.loss.embed_images(torch.from_numpy(np.asarray(features, dtype=np.float32)))
        scores = images @ self.level_prototypes(train_levels).T
        return 100.0 * float((scores.argmax(dim=1).numpy() == levels).mean())


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Test accuracy (%) of a standardised multinomial logistic regression fitted on the training split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    probe.fit(train_x.reshape(len(train_x), -1), train_y)
    return 100.0 * float(probe.score(test_x.reshape(len(test_x), -1), test_y))
