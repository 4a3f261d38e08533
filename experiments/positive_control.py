"""The positive control: captions that state what the labels do not, and whether the encoder learnt it.

Captions of each training digit's slant and stroke thickness (`experiments.attributes`) are written as a
JSONL file and brought in with `vlmkd caption import` (the public bring-your-own-text path), then encoded by
all-MiniLM-L6-v2 like any caption store. After training, `measure` reports for one seed: retrieval of each
test image's attribute levels through the run's adaptor vs the null (the same adaptor on the baseline's
features), and linear-probe accuracy per attribute of frozen features (pixels, untrained net, baseline,
VLM-KD).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from experiments.attributes import (
    ATTRIBUTES,
    CLASS_TEMPLATES,
    TEMPLATES,
    attribute_captions,
    attribute_levels,
    load_pixels,
)
from experiments.probes import TextAdaptor, encoder_features, linear_probe, run_features
from vlmkd.data import ImageList

PROMPT_IDS = tuple(f"A{k + 1}" for k in range(len(TEMPLATES)))


def write_caption_file(dataset: ImageList, path: Path, with_class: bool = False) -> Path:
    """A JSONL caption file (image_index, prompt_id, caption) of every image under every template; with
    `with_class` the captions also name the digit ("a ... handwritten digit three ...")."""
    if with_class:
        digits = [dataset.classnames[label] for label in dataset.labels().tolist()]
        captions = attribute_captions(attribute_levels(dataset), CLASS_TEMPLATES, digits)
    else:
        captions = attribute_captions(attribute_levels(dataset), TEMPLATES)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for index, texts in enumerate(captions):
            for prompt_id, text in zip(PROMPT_IDS, texts, strict=True):
                handle.write(json.dumps({"image_index": index, "prompt_id": prompt_id, "caption": text}) + "\n")
    return path


def import_attribute_captions(dataset: ImageList, out: Path, with_class: bool = False) -> Path:
    """The positive control's caption store at `out` (made once; a rerun reuses it)."""
    from vlmkd.caption.transfer import import_captions

    source = write_caption_file(dataset, out.with_name(out.name + ".jsonl"), with_class)
    return import_captions(source, dataset, out, progress=False).store.path


def text_variance_shares(features: Path, dataset: ImageList) -> dict[str, float]:
    """Share (%) of the conditioned caption features' variance that each grouping explains: the class and each
    attribute's level (between-group over total sum of squares, per prompt, pooled), conditioned as training
    conditions them by default. Where the text's differences are is what the contrast can learn first."""
    from vlmkd.encode.conditioning import text_conditioning
    from vlmkd.encode.store import FeatureStore
    from vlmkd.train.config import TrainConfig

    raw = np.asarray(FeatureStore.open(features).features, dtype=np.float32)  # (N, P, D)
    conditioning = text_conditioning(raw, TrainConfig().text_center)
    num_images, num_prompts, _ = raw.shape
    groupings = {"class": dataset.labels(), **attribute_levels(dataset)}
    total, between = 0.0, dict.fromkeys(groupings, 0.0)
    for prompt in range(num_prompts):
        x = conditioning.apply(raw[:, prompt], np.full(num_images, prompt)).astype(np.float64)
        x -= x.mean(axis=0)
        total += float((x**2).sum())
        for name, groups in groupings.items():
            for group in np.unique(groups):
                members = groups == group
                between[name] += float(members.sum() * (x[members].mean(axis=0) ** 2).sum())
    return {name: 100.0 * value / total for name, value in between.items()}


class AttributeProbe:
    """Attribute levels of both splits and the probes that do not depend on a run (pixels), computed once."""

    def __init__(self, train: ImageList, test: ImageList) -> None:
        self.train, self.test = train, test
        self.train_levels, self.test_levels = attribute_levels(train), attribute_levels(test)
        train_pixels, test_pixels = load_pixels(train), load_pixels(test)
        self.pixel_probe = {
            name: linear_probe(train_pixels, self.train_levels[name], test_pixels, self.test_levels[name])
            for name in ATTRIBUTES
        }

    def probe(self, train_features: np.ndarray, test_features: np.ndarray) -> dict[str, float]:
        return {
            name: linear_probe(train_features, self.train_levels[name], test_features, self.test_levels[name])
            for name in ATTRIBUTES
        }

    def measure(self, run: Path, baseline: Path, seed: int) -> dict:
        """Retrieval vs null and linear probes (pixels, untrained net of `seed`, baseline, VLM-KD) for one seed."""
        adaptor = TextAdaptor(run)
        vlmkd_test, baseline_test = run_features(run, self.test), run_features(baseline, self.test)
        retrieval = {
            name: adaptor.retrieval(vlmkd_test, self.test_levels[name], self.train_levels[name]) for name in ATTRIBUTES
        }
        null = {
            name: adaptor.retrieval(baseline_test, self.test_levels[name], self.train_levels[name])
            for name in ATTRIBUTES
        }
        untrained = _untrained_features(adaptor.config, self.train, self.test, seed)
        return {
            "retrieval": retrieval,
            "retrieval_null": null,
            "probe": {
                "pixels": self.pixel_probe,
                "untrained": self.probe(*untrained),
                "baseline": self.probe(run_features(baseline, self.train), baseline_test),
                "vlmkd": self.probe(run_features(run, self.train), vlmkd_test),
            },
        }


def _untrained_features(config: dict, train: ImageList, test: ImageList, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of both splits under the run's architecture, randomly initialised as `seed` trains it."""
    from vlmkd.models import ModelSpec, build_model

    torch.manual_seed(seed)
    model = build_model(ModelSpec(config["arch"], train.num_classes, config["width"], config["norm"]))
    return encoder_features(model, train, config), encoder_features(model, test, config)
