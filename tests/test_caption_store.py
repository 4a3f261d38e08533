"""The caption store: atomic shards, manifest checks, resume rules, failures recorded for later stages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vlmkd.caption import CaptionStore, make_manifest, prompt_set_record
from vlmkd.errors import InputError, StoreMismatchError

PROMPTS = {"G": "Describe this image.", "T2": "Describe the {label}."}


def manifest_for(dataset, num_shards=3, **changes):
    settings = {
        "dataset_fingerprint": dataset.fingerprint(),
        "num_images": len(dataset),
        "prompt_set": prompt_set_record("test", PROMPTS),
        "engine": "hf",
        "model_id": "tiny",
        "generation": {"max_new_tokens": 4},
        "num_shards": num_shards,
    }
    return make_manifest(**{**settings, **changes})


def fill_shard(store, dataset, shard, failed=()):
    skip = {f[0] for f in failed}
    rows = [
        (i, dataset.samples[i].path, p, f"caption {i} {p}")
        for i in store.shard_range(shard)
        if i not in skip
        for p in store.prompt_ids
    ]
    store.write_shard(shard, rows, failed)


def test_shards_partition_the_images_in_order(tiny_dataset, tmp_path):
    for num_shards in (1, 5, 12):
        store = CaptionStore.create(tmp_path / str(num_shards), manifest_for(tiny_dataset, num_shards))
        covered = [i for k in range(num_shards) for i in store.shard_range(k)]
        assert covered == list(range(len(tiny_dataset)))


def test_write_then_read_back_all_rows_and_failures(tiny_dataset, tmp_path):
    store = CaptionStore.create(tmp_path / "s", manifest_for(tiny_dataset))
    assert store.missing_shards() == [0, 1, 2]
    failure = (5, tiny_dataset.samples[5].path, "corrupt")
    for shard in range(3):
        fill_shard(store, tiny_dataset, shard, [failure] if shard == 1 else [])
    reopened = CaptionStore.open(tmp_path / "s")
    table = reopened.read_table()
    assert table.column_names == ["image_index", "image_path", "prompt_id", "caption"]
    assert table.num_rows == (len(tiny_dataset) - 1) * len(PROMPTS)
    assert 5 not in table.column("image_index").to_pylist()
    assert reopened.failed_images() == [failure]
    assert reopened.prompt_ids == ("G", "T2")
    assert not list((tmp_path / "s").glob(".*tmp"))
    reopened.check_dataset(tiny_dataset)


def test_incomplete_store_names_missing_shards(tiny_dataset, tmp_path):
    store = CaptionStore.create(tmp_path / "s", manifest_for(tiny_dataset))
    fill_shard(store, tiny_dataset, 1)
    assert store.missing_shards() == [0, 2]
    with pytest.raises(InputError, match=r"2 of 3 shards missing \(0, 2\)"):
        store.read_table()


def test_shard_rows_must_cover_every_image_and_prompt(tiny_dataset, tmp_path):
    store = CaptionStore.create(tmp_path / "s", manifest_for(tiny_dataset))
    with pytest.raises(ValueError, match="shard 0"):
        store.write_shard(0, [(0, "x", "G", "c")])
    assert store.missing_shards() == [0, 1, 2]


def test_same_settings_resume_other_settings_refused_unless_overwrite(tiny_dataset, tmp_path):
    store = CaptionStore.create(tmp_path / "s", manifest_for(tiny_dataset))
    fill_shard(store, tiny_dataset, 0)
    again = CaptionStore.create(tmp_path / "s", manifest_for(tiny_dataset))
    assert again.missing_shards() == [1, 2]
    other = manifest_for(tiny_dataset, generation={"max_new_tokens": 8})
    with pytest.raises(StoreMismatchError, match="generation"):
        CaptionStore.create(tmp_path / "s", other)
    replaced = CaptionStore.create(tmp_path / "s", other, overwrite=True)
    assert replaced.missing_shards() == [0, 1, 2]
    assert replaced.manifest["generation"] == {"max_new_tokens": 8}


def test_fingerprint_ignores_sharding_but_not_generation(tiny_dataset, tmp_path):
    a = CaptionStore.create(tmp_path / "a", manifest_for(tiny_dataset, 3))
    b = CaptionStore.create(tmp_path / "b", manifest_for(tiny_dataset, 4))
    c = CaptionStore.create(tmp_path / "c", manifest_for(tiny_dataset, 3, generation={"max_new_tokens": 5}))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_open_rejects_non_stores_naming_the_path(tmp_path):
    with pytest.raises(InputError, match=str(tmp_path)):
        CaptionStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="not a caption-store manifest"):
        CaptionStore.open(tmp_path)


def test_create_refuses_a_foreign_non_empty_directory(tiny_dataset, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a caption store"):
        CaptionStore.create(tmp_path, manifest_for(tiny_dataset))


def test_check_dataset_detects_another_dataset(tiny_dataset, tmp_path):
    store = CaptionStore.create(tmp_path / "s", manifest_for(tiny_dataset, dataset_fingerprint="0" * 16))
    with pytest.raises(StoreMismatchError, match="another dataset"):
        store.check_dataset(tiny_dataset)


@pytest.mark.parametrize("damage", [b"", b"PAR1" + bytes(64) + b"PAR1"])
def test_corrupt_shard_is_an_input_error_naming_it_on_one_line(tiny_dataset, tmp_path, damage):
    store = CaptionStore.create(tmp_path / "s", manifest_for(tiny_dataset))
    for shard in range(3):
        fill_shard(store, tiny_dataset, shard)
    store.shard_path(1).write_bytes(damage)
    for read in (store.read_table, store.failed_images, lambda: store.shard_rows(1)):
        with pytest.raises(InputError, match="unreadable caption shard") as caught:
            read()
        assert str(store.shard_path(1)) in str(caught.value) and "\n" not in str(caught.value)


def test_overwrite_replaces_a_store_with_an_unreadable_manifest(tiny_dataset, tmp_path):
    store = CaptionStore.create(tmp_path / "s", manifest_for(tiny_dataset))
    fill_shard(store, tiny_dataset, 0)
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable caption-store manifest"):
        CaptionStore.create(tmp_path / "s", manifest_for(tiny_dataset))
    replaced = CaptionStore.create(tmp_path / "s", manifest_for(tiny_dataset), overwrite=True)
    assert replaced.missing_shards() == [0, 1, 2]


def test_another_process_temporary_files_do_not_make_a_directory_foreign(tiny_dataset, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / ".manifest.json.123.tmp").write_text("{}")  # another rank about to publish
    store = CaptionStore.create(tmp_path / "s", manifest_for(tiny_dataset))
    assert store.missing_shards() == [0, 1, 2]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"num_shards": "2"}, "num_shards"),
        ({"num_shards": 99}, "num_shards <= num_images"),
        ({"prompt_set": "default"}, "prompt_set.prompts"),
        ({"prompt_set": {"prompts": [{"id": 1, "template": "x"}]}}, "{id, template} strings"),
        ({"generation": []}, "generation"),
        ({"engine": None}, "engine is not a string"),
    ],
)
def test_manifest_with_wrong_typed_fields_is_an_input_error(tiny_dataset, tmp_path, change, problem):
    manifest = {**manifest_for(tiny_dataset), **change}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=f"damaged caption-store manifest: .*{re.escape(problem)}"):
        CaptionStore.open(tmp_path)


# --------------------------------------------------------------------------------------------- shard locks


def _dead_pid() -> int:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_shard_locked_by_a_live_process_is_skipped_and_a_dead_ones_lock_is_taken_over(tmp_path: Path) -> None:
    import os
    import socket

    from vlmkd.caption.shard_locks import lock_path

    prompts = prompt_set_record("p", {"G": "Describe."})
    manifest = make_manifest(dataset_fingerprint="d", num_images=4, num_shards=4, prompt_set=prompts, engine="e",
                             model_id="m")  # fmt: skip
    store = CaptionStore.create(tmp_path / "s", manifest)
    host = socket.gethostname()
    lock = lock_path(store.shard_path(0))
    lock.write_text(f"1 {host}\n")  # PID 1 always runs
    assert not store.claim_shard(0) and lock.read_text() == f"1 {host}\n"
    lock.write_text(f"{_dead_pid()} {host}\n")
    assert store.claim_shard(0) and lock.read_text() == f"{os.getpid()} {host}\n"
    lock_path(store.shard_path(1)).write_text("7 another-host\n")  # cannot be checked from here: left alone
    assert not store.claim_shard(1)
    store.release_shard(0)
    assert not lock.exists()
    store.write_shard(2, [(2, "2.png", "G", "c")])
    assert not store.claim_shard(2)  # written already: nothing to lock
    lock_path(store.shard_path(2)).write_text(f"{_dead_pid()} {host}\n")  # killed between publish and release
    CaptionStore.create(tmp_path / "s", store.manifest)  # reopening sweeps it
    assert not lock_path(store.shard_path(2)).exists()
