"""`vlmkd experiment`: baseline vs VLM-KD over seeds on the embedded MNIST-LT, a class-text control and a
prompt-count ablation, with a mean/std table and a plot."""

from __future__ import annotations

from pathlib import Path

from vlmkd.data import ImageList

# Short class descriptions for the control text source: each image gets one, chosen by its index, so the
# text carries the class and nothing about the particular image.
CONTROL_TEMPLATES = (
    "a handwritten {label}",
    "a photo of the {label}",
    "an image of a {label}",
    "the {label}, written by hand",
)


def build_control_captions(dataset: ImageList, out: Path, templates: tuple[str, ...] = CONTROL_TEMPLATES) -> Path:
    """A caption store whose one "caption" per image is a short description of its class (the control).

    It goes through the same encoder as the VLM's captions, so the two text sources differ only in content.
    """
    from vlmkd.caption.store import CaptionStore, make_manifest, prompt_set_record

    labels = dataset.labels()
    rows = [
        (i, dataset.samples[i].path, "D", templates[i % len(templates)].format(label=dataset.classnames[label]))
        for i, label in enumerate(labels.tolist())
    ]
    manifest = make_manifest(
        dataset_fingerprint=dataset.fingerprint(),
        num_images=len(dataset),
        prompt_set=prompt_set_record("class-descriptions", {"D": " | ".join(templates)}),
        engine="control",
        model_id="class-descriptions",
    )
    store = CaptionStore.create(out, manifest)
    if store.missing_shards():
        store.write_shard(0, rows)
    return out
