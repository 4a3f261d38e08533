"""Positive control, reduced: captions that state what the labels do not must reach the encoder.

Each digit's slant and stroke thickness (within-class terciles, measured from its pixels) are worded with
long shared templates (raw caption cosine ~0.98: the hard case), imported with `import_captions`, encoded
by the real all-MiniLM-L6-v2, and trained with the library's VLM-KD defaults. The test fails if the term is
inert: its loss must end below 0.85 x chance (log batch) and the adaptor must retrieve the stroke thickness of
held-out digits by more than 20 points above the same adaptor applied to a baseline's features. 400 digits,
20 epochs, no random crops (a zoom changes stroke widths).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vlmkd.data.demo import make_demo_dataset
from vlmkd.encode.runner import encode_captions
from vlmkd.train.config import resolve_config
from vlmkd.train.metrics_log import read_metrics
from vlmkd.train.trainer import train

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the checkout's experiments/, never installed
from experiments.positive_control import AttributeProbe, import_attribute_captions  # noqa: E402

SMALL = {
    "arch": "resnet32", "width": 0.5, "image_size": 16, "epochs": 20, "batch_size": 32, "num_workers": 0,
    "threads": 1, "progress": False, "flip": False, "crop_scale": [1, 1], "crop_ratio": [1, 1],
    "task_loss": "balanced_softmax", "log_every": 5,
    "mean": [0.1307] * 3, "std": [0.3081] * 3,
}  # fmt: skip


@pytest.mark.slow
def test_attribute_captions_reach_the_encoder_through_the_text_term(tmp_path) -> None:
    data = make_demo_dataset(tmp_path / "data", imbalance_factor=1.0, max_train_per_class=40, test_per_class=20)
    captions = import_attribute_captions(data.train, tmp_path / "captions")
    features = encode_captions(captions, tmp_path / "features", progress=False).path
    common = {**SMALL, "train": str(data.train_list), "seed": 0}
    train(resolve_config({}, {**common, "output": str(tmp_path / "baseline")}))
    run = tmp_path / "vlmkd"
    train(resolve_config({}, {**common, "output": str(run), "features": str(features), "vlmkd_weight": 1.0}))

    last = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "epoch"][-1]
    # An inert term cannot end below chance (with identical captions it is exactly at it); measured here: 0.753.
    assert last["vlmkd_fraction"] < 0.85, f"the text term did not learn: {last['vlmkd_fraction']:.3f} x chance"
    measured = AttributeProbe(data.train, data.test).measure(run, tmp_path / "baseline", seed=0)
    found, null = measured["retrieval"]["thickness"], measured["retrieval_null"]["thickness"]
    # Measured: 71.5% vs a 33.5% null (chance 33%). Slant reaches the encoder at the experiment's 28 px and 16
    # epochs (experiments/RESULTS.md) but barely at this test's 16 px (39.5% vs 32.0%), so it is not asserted.
    assert found - null > 20, f"thickness: retrieval {found:.1f}% through the adaptor vs {null:.1f}% null"
