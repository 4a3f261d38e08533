"""Batches of whole images sized by a token budget (`batch_tokens`, `--batch-tokens`): each batch is the longest
run of whole images whose estimated tokens fit, the store does not depend on how it was batched (so a store
resumes under other batch settings), and the hf engine's estimate is what its rows really hold."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import vlmkd
from vlmkd.caption.engines import GenerationSettings, ImageRequest, load_engine
from vlmkd.data import load_image_list
from vlmkd.testing import build_tiny_llava_next

NEW_TOKENS = 4
SHAPES = [(40, 40), (70, 30), (20, 90), (50, 50), (90, 25), (30, 30), (60, 20), (45, 80), (35, 35)]  # (w, h)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_llava_next(tmp_path_factory.mktemp("llava_next") / "model")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Images whose anyres grids, so token counts, differ."""
    root = tmp_path_factory.mktemp("varied")
    rng = np.random.default_rng(5)
    lines = []
    for k, (w, h) in enumerate(SHAPES):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{k}.png")
        lines.append(f"{k}.png {k % 2}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "classnames.txt").write_text("zero\none\n")
    return load_image_list(root / "train.txt")


@pytest.fixture(scope="module")
def engine(model):
    return load_engine("hf", model, GenerationSettings(max_new_tokens=NEW_TOKENS))


def recorded_batches(engine, monkeypatch) -> list[list[ImageRequest]]:
    batches = []
    caption = engine.caption

    def recording(requests):
        batches.append(list(requests))
        return caption(requests)

    monkeypatch.setattr(engine, "caption", recording)
    return batches


def test_the_hf_estimate_is_the_tokens_its_rows_hold(engine, dataset):
    from vlmkd.data import load_rgb

    prompts = ("Describe this image in detail.", "What is the main object in this image?")
    counts = set()
    for k in range(len(dataset)):
        image = load_rgb(dataset.path(k))
        texts = [engine.model_text(prompt) for prompt in prompts]
        rows = [len(engine.processor(images=[[image]], text=[text])["input_ids"][0]) for text in texts]
        assert engine.estimated_tokens(ImageRequest(image, prompts)) == sum(rows) + len(prompts) * NEW_TOKENS
        counts.add(rows[0])
    assert len(counts) >= 3  # the images really differ in token counts


def test_batches_are_the_longest_runs_of_whole_images_that_fit(engine, dataset, tmp_path, monkeypatch):
    batches = recorded_batches(engine, monkeypatch)
    one_image = engine.estimated_tokens(ImageRequest(Image.new("RGB", (40, 40)), ("x",) * 5))
    budget = 3 * one_image
    report = vlmkd.caption(dataset=dataset, engine=engine, out=tmp_path / "s", num_shards=2, batch_tokens=budget,
                           progress=False)  # fmt: skip
    assert report.store.missing_shards() == []
    shards = [list(report.store.shard_range(k)) for k in range(2)]
    indices = [[dataset.samples.index(next(s for s in dataset.samples if s.path == r.path.name)) for r in batch]
               for batch in batches]  # fmt: skip
    assert [i for batch in indices for i in batch] == shards[0] + shards[1]  # whole images, in order
    assert all(set(batch) <= set(shards[0]) or set(batch) <= set(shards[1]) for batch in indices)
    costs = [[engine.estimated_tokens(request) for request in batch] for batch in batches]
    assert max(len(batch) for batch in batches) > 1
    for k, cost in enumerate(costs):
        assert sum(cost) <= budget or len(cost) == 1
        following = indices[k + 1][0] if k + 1 < len(indices) else None
        if following is not None and any(following in shard and indices[k][0] in shard for shard in shards):
            assert sum(cost) + costs[k + 1][0] > budget  # the next image of the shard did not fit


def test_the_store_does_not_depend_on_the_batching_and_resumes_under_other_batch_settings(engine, dataset, tmp_path):
    common = {"dataset": dataset, "engine": engine, "num_shards": 3, "progress": False}
    one_image = engine.estimated_tokens(ImageRequest(Image.new("RGB", (40, 40)), ("x",) * 5))
    stores = [
        vlmkd.caption(out=tmp_path / name, **common, **batching).store
        for name, batching in {
            "one": {"batch_size": 1},
            "default": {},
            "tokens": {"batch_tokens": 2 * one_image},
            "all": {"batch_tokens": 100 * one_image},
        }.items()
    ]
    reference = stores[0].read_table()
    for store in stores[1:]:
        assert store.read_table().equals(reference)
        assert store.manifest == stores[0].manifest
    stores[2].shard_path(1).unlink()
    resumed = vlmkd.caption(out=tmp_path / "tokens", **common, batch_size=16)
    assert resumed.shards_written == [1] and resumed.store.read_table().equals(reference)


def test_a_token_budget_below_one_is_refused_in_one_line(dataset, model, tmp_path, capsys):
    from vlmkd.cli import main

    out = tmp_path / "s"
    argv = ["caption", str(dataset.source), "--model", str(model), "--out", str(out), "--batch-tokens", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch_tokens must be at least 1" in err[0] and not out.exists()
