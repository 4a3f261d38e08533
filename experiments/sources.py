"""The MNIST-LT study's data and text sources, each made once under the study's folder and reused.

- `vlm`: captions of a tiny *randomly initialised* BLIP (no real VLM weights exist offline) for the default
  prompts G, T1-T4: one caption for every image, so the text says nothing (the term must then be inert);
- `shapes`: label-relevant captions that name the digit and describe its shape with attributes shared across
  classes (`experiments.shapes`: loops, free ends, strokes, bars, openings), 4 paraphrases;
- `attributes`: the positive control, each digit's slant and stroke thickness (within-class terciles, so the
  label says nothing about them) in 4 long paraphrases (`experiments.attributes`).
All are encoded by all-MiniLM-L6-v2; the non-VLM ones come in through `vlmkd caption import`.
"""

from __future__ import annotations

from pathlib import Path

from vlmkd.data import ImageList
from vlmkd.data.demo import DemoDataset, make_demo_dataset

SOURCES = ("vlm", "shapes", "attributes")
MAX_NEW_TOKENS = 12  # the tiny VLM's captions: enough tokens to show they never vary


def study_data(out: Path, imbalance_factor: float) -> DemoDataset:
    """MNIST-LT at `imbalance_factor` (balanced test split of 100 digits per class) under `out/data`."""
    return make_demo_dataset(out / "data", imbalance_factor=imbalance_factor)


def text_features(out: Path, data: DemoDataset, sources: tuple[str, ...]) -> dict[str, Path]:
    """The feature store of every source in `sources`, made under `out` (reused when present)."""
    from experiments.positive_control import import_attribute_captions
    from experiments.shapes import import_shape_captions
    from vlmkd.encode.runner import encode_captions
    from vlmkd.encode.text_encoder import load_text_encoder

    makers = {
        "vlm": lambda: tiny_vlm_captions(data.train, out),
        "shapes": lambda: import_shape_captions(data.train, out / "captions_shapes"),
        "attributes": lambda: import_attribute_captions(data.train, out / "captions_attributes"),
    }
    encoder = None
    features = {}
    for source in sources:
        store = out / f"features_{source}"
        if not (store / "manifest.json").is_file():
            encoder = encoder or load_text_encoder(None)
            encode_captions(makers[source](), store, encoder=encoder, progress=False)
        features[source] = store
    return features


def tiny_vlm_captions(train: ImageList, out: Path) -> Path:
    """Captions of the tiny random BLIP (`vlmkd models make-tiny blip`) for the default prompts."""
    from vlmkd.caption import CaptionConfig, GenerationSettings, run_captioning
    from vlmkd.testing.tiny_models import make_tiny_vlm

    vlm = out / "tiny_blip"
    if not (vlm / "config.json").is_file():
        make_tiny_vlm("blip", vlm, seed=0, overwrite=True)
    config = CaptionConfig(model=vlm, out=out / "captions_vlm", batch_size=32)
    config.generation = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
    return run_captioning(config, dataset=train).store.path
