"""Captioning a dataset into a store: coverage, determinism, unreadable images, resume, sharding across ranks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import vlmkd
from vlmkd.caption import Assignment
from vlmkd.errors import InputError, StoreMismatchError
from vlmkd.testing import build_tiny_blip, build_tiny_llava

PROMPT_IDS = ["G", "T1", "T2", "T3", "T4"]
TWO_PROMPTS = "prompts:\n  - {id: G, template: Describe this image.}\n  - {id: T2, template: 'Describe the {label}.'}\n"


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return build_tiny_blip(tmp_path_factory.mktemp("blip") / "model")


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "model")


@pytest.fixture(scope="module")
def fast(tmp_path_factory, llava):
    """Quick settings for most tests: tiny LLaVA, two prompts, 4 new tokens, batches of 3 (straddling images)."""
    prompts = tmp_path_factory.mktemp("prompts") / "two.yaml"
    prompts.write_text(TWO_PROMPTS)
    return {"model": llava, "prompts": prompts, "max_new_tokens": 4, "batch_size": 3, "progress": False}


@pytest.mark.parametrize("arch", ["blip", "llava"])
def test_every_image_and_prompt_gets_a_caption_in_order(request, tiny_dataset, tmp_path, arch):
    model = request.getfixturevalue(arch)
    store = vlmkd.caption(
        dataset=tiny_dataset, model=model, out=tmp_path / "s", num_shards=3, max_new_tokens=4, batch_size=7
    ).store
    table = store.read_table().to_pydict()
    n = len(tiny_dataset)
    assert table["image_index"] == [i for i in range(n) for _ in PROMPT_IDS]
    assert table["prompt_id"] == PROMPT_IDS * n
    assert table["image_path"] == [s.path for s in tiny_dataset.samples for _ in PROMPT_IDS]
    assert all(isinstance(caption, str) for caption in table["caption"])
    assert store.failed_images() == []
    store.check_dataset(tiny_dataset)
    assert store.manifest["model_id"] == str(model) and store.manifest["engine"] == "hf"


def test_reruns_from_scratch_give_identical_stores(tiny_dataset, tmp_path, fast):
    first = vlmkd.caption(dataset=tiny_dataset, out=tmp_path / "a", num_shards=2, **fast).store
    second = vlmkd.caption(dataset=tiny_dataset, out=tmp_path / "b", num_shards=2, **fast).store
    assert first.read_table().equals(second.read_table())
    assert first.fingerprint() == second.fingerprint()


def test_unreadable_images_are_skipped_listed_and_recorded(tiny_dataset, tmp_path, fast):
    tiny_dataset.path(3).write_bytes(b"not a png")
    tiny_dataset.path(7).unlink()
    report = vlmkd.caption(dataset=tiny_dataset, out=tmp_path / "s", num_shards=2, **fast)
    failed = report.store.failed_images()
    assert [(i, path) for i, path, _ in failed] == [(i, tiny_dataset.samples[i].path) for i in (3, 7)]
    assert str(tiny_dataset.path(3)) in failed[0][2] and "not found" in failed[1][2]
    assert report.failed == failed and report.images == len(tiny_dataset)
    indices = set(report.store.read_table().column("image_index").to_pylist())
    assert indices == set(range(len(tiny_dataset))) - {3, 7}
    assert report.captions == (len(tiny_dataset) - 2) * 2


def test_rerun_writes_only_missing_shards(tiny_dataset, tmp_path, fast):
    out = tmp_path / "s"
    store = vlmkd.caption(dataset=tiny_dataset, out=out, num_shards=3, **fast).store
    reference = store.read_table()
    kept = store.shard_path(0).stat().st_mtime_ns
    store.shard_path(1).unlink()
    report = vlmkd.caption(dataset=tiny_dataset, out=out, **fast)  # the shard count comes from the store
    assert report.shards_written == [1] and report.shards_already_done == [0, 2]
    assert store.shard_path(0).stat().st_mtime_ns == kept
    assert store.read_table().equals(reference)


def test_other_settings_are_refused_unless_overwrite(tiny_dataset, tmp_path, fast):
    out = tmp_path / "s"
    vlmkd.caption(dataset=tiny_dataset, out=out, num_shards=2, **fast)
    changed = {**fast, "max_new_tokens": 5}
    with pytest.raises(StoreMismatchError, match="generation.max_new_tokens: 4 in the store, 5 now"):
        vlmkd.caption(dataset=tiny_dataset, out=out, **changed)
    store = vlmkd.caption(dataset=tiny_dataset, out=out, overwrite=True, **changed).store
    assert store.manifest["generation"]["max_new_tokens"] == 5 and store.missing_shards() == []


def test_nothing_is_written_before_the_model_loads_and_a_finished_store_never_loads_it(
    tiny_dataset, tmp_path, fast, monkeypatch
):
    out = tmp_path / "s"
    with pytest.raises(InputError, match="not a model folder"):
        vlmkd.caption(dataset=tiny_dataset, out=out, **{**fast, "model": tmp_path})
    assert not out.exists()
    vlmkd.caption(dataset=tiny_dataset, out=out, num_shards=2, **fast)
    with pytest.raises(StoreMismatchError):  # refused before trying to load the (missing) model
        vlmkd.caption(dataset=tiny_dataset, out=out, **{**fast, "model": tmp_path / "nowhere"})

    from vlmkd.caption import runner

    monkeypatch.setattr(runner, "load_engine", lambda *args, **kwargs: pytest.fail("model loaded for nothing"))
    assert vlmkd.caption(dataset=tiny_dataset, out=out, **fast).shards_already_done == [0, 1]


def test_ranks_split_the_shards_and_cover_every_image_once(tiny_dataset, tmp_path, fast):
    reference = vlmkd.caption(dataset=tiny_dataset, out=tmp_path / "single", num_shards=5, **fast).store.read_table()
    out = tmp_path / "ranked"
    written = []
    for rank in range(3):
        report = vlmkd.caption(dataset=tiny_dataset, out=out, num_shards=5, assignment=Assignment(rank, 3), **fast)
        written.append(report.shards_written)
    assert written == [[0, 3], [1, 4], [2]]
    table = report.store.read_table()
    assert table.equals(reference)
    assert sorted(table.column("image_index").to_pylist()) == sorted(list(range(len(tiny_dataset))) * 2)


def test_shard_index_writes_just_that_shard(tiny_dataset, tmp_path, fast):
    report = vlmkd.caption(dataset=tiny_dataset, out=tmp_path / "s", num_shards=4, shard_index=2, **fast)
    assert report.shards_written == [2] and report.store.missing_shards() == [0, 1, 3]
    assert report.images == len(report.store.shard_range(2))
    with pytest.raises(InputError, match="out of range"):
        vlmkd.caption(dataset=tiny_dataset, out=tmp_path / "s", shard_index=4, **fast)


def test_rank_and_world_size_come_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert Assignment.from_env() == Assignment(1, 2)
    assert Assignment.from_env().shards(5) == [1, 3]
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(InputError, match="out of range"):
        Assignment.from_env()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert Assignment.from_env() == Assignment(0, 1)


@pytest.mark.faults
def test_resume_after_sigkill_gives_the_uninterrupted_store(tiny_dataset, tmp_path, fast):
    settings = {**fast, "max_new_tokens": 16, "batch_size": 2}
    shards = len(tiny_dataset)  # one image per shard: many chances to be killed mid-run
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "vlmkd", "caption", str(tiny_dataset.source), "--model", str(fast["model"]),
               "--out", str(out), "--prompts", str(fast["prompts"]), "--num-shards", str(shards),
               "--batch-size", "2", "--max-new-tokens", "16", "--no-progress"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while not list(out.glob("shard-*.parquet")):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard written in time"
            time.sleep(0.005)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    finished = len(list(out.glob("shard-*.parquet")))
    assert 0 < finished < shards, "the run was not interrupted mid-way"

    resumed = vlmkd.caption(dataset=tiny_dataset, out=out, **settings)
    assert len(resumed.shards_already_done) == finished and resumed.store.missing_shards() == []
    assert not list(out.glob(".*.tmp"))
    reference = vlmkd.caption(dataset=tiny_dataset, out=tmp_path / "whole", num_shards=shards, **settings).store
    assert resumed.store.read_table().equals(reference.read_table())
    assert resumed.store.manifest == reference.manifest


def test_a_captioning_run_opens_its_store_once(tiny_dataset, tmp_path, fast, monkeypatch):
    from vlmkd.caption.store import CaptionStore

    opened = []
    original = CaptionStore.open.__func__

    def counting(cls, path):
        store = original(cls, path)  # counts stores opened, not the look for one that is not there yet
        opened.append(path)
        return store

    monkeypatch.setattr(CaptionStore, "open", classmethod(counting))
    vlmkd.caption(dataset=tiny_dataset, out=tmp_path / "s", num_shards=2, shard_index=0, **fast)
    assert len(opened) == 1, opened
    opened.clear()
    report = vlmkd.caption(dataset=tiny_dataset, out=tmp_path / "s", **fast)  # resumes: shard 1 only
    assert report.shards_written == [1] and len(opened) == 1, opened
