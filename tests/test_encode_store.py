"""The feature store on disk: chunked writing, resuming, sealing, and refusing stores that are not complete."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from _cases import make_manifest, random_values, write_store

from vlmkd.encode.store import FEATURES_FILE, MANIFEST_FILE, PROGRESS_FILE, FeatureStore
from vlmkd.encode.writer import FeatureWriter
from vlmkd.errors import InputError, StoreMismatchError


def test_written_store_reads_back_as_float16_of_the_values(tmp_path: Path) -> None:
    values = random_values()
    store = write_store(tmp_path / "features", values)
    reopened = FeatureStore.open(tmp_path / "features")
    assert reopened.manifest == store.manifest
    assert reopened.features.dtype == np.float16 and not reopened.features.flags.writeable
    np.testing.assert_array_equal(reopened.features, values.astype(np.float16))
    assert reopened.prompt_ids == ("P0", "P1", "P2") and reopened.dim == 5 and reopened.num_images == 7
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == [FEATURES_FILE, MANIFEST_FILE]


def test_pickled_store_reopens_the_file_instead_of_copying_it(tmp_path: Path) -> None:
    store = write_store(tmp_path / "features", random_values())
    clone = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 1000 and isinstance(clone.features, np.memmap)
    assert clone.manifest == store.manifest and clone.path == store.path
    np.testing.assert_array_equal(clone.features, store.features)


def test_chunks_cover_every_image_once(tmp_path: Path) -> None:
    writer = FeatureWriter(tmp_path / "f", make_manifest(num_images=7), chunk_size=3)
    rows = [list(writer.chunk_rows(chunk)) for chunk in writer.pending]
    assert rows == [[0, 1, 2], [3, 4, 5], [6]]


def test_unfinished_store_is_refused_and_resumes_from_its_finished_chunks(tmp_path: Path) -> None:
    values = random_values()
    path = tmp_path / "features"
    first = FeatureWriter(path, make_manifest(), chunk_size=3)
    first.write(0, values[0:3])
    first.write(2, values[6:7])
    with pytest.raises(InputError, match=r"unfinished feature store \(2/3 chunks encoded\)"):
        FeatureStore.open(path)

    second = FeatureWriter(path, make_manifest(), chunk_size=100)  # the recorded chunk size wins
    assert second.pending == [1]
    second.write(1, values[3:6])
    np.testing.assert_array_equal(second.finish().features, values.astype(np.float16))
    assert not (path / PROGRESS_FILE).exists()


def test_progress_of_another_job_is_refused_unless_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "features"
    FeatureWriter(path, make_manifest(), chunk_size=3).write(0, random_values()[0:3])
    other = make_manifest(encoder="another-encoder")
    with pytest.raises(StoreMismatchError, match=r"another job \(encoder: \"test-encoder\" on disk"):
        FeatureWriter(path, other)
    assert FeatureWriter(path, other, overwrite=True).pending == [0]


def test_complete_store_of_the_same_job_is_reused_and_of_another_job_refused(tmp_path: Path) -> None:
    values = random_values()
    path = tmp_path / "features"
    write_store(path, values)
    manifest = FeatureStore.open(path).manifest
    again = FeatureWriter(path, manifest)
    assert again.pending == []
    np.testing.assert_array_equal(again.finish().features, values.astype(np.float16))

    other = manifest | {"caption_store_fingerprint": "e" * 16}
    with pytest.raises(StoreMismatchError, match="caption_store_fingerprint"):
        FeatureWriter(path, other)
    replaced = FeatureWriter(path, other, chunk_size=3, overwrite=True)
    assert replaced.pending == [0, 1, 2] and not (path / MANIFEST_FILE).exists()


@pytest.mark.parametrize("name", [MANIFEST_FILE, PROGRESS_FILE])
def test_unreadable_store_files_are_refused_but_can_be_overwritten(tmp_path: Path, name: str) -> None:
    path = tmp_path / "features"
    if name == MANIFEST_FILE:
        write_store(path, random_values())  # a complete store
    else:
        FeatureWriter(path, make_manifest())  # an unfinished one
    (path / name).write_text("{torn")
    with pytest.raises(InputError, match=f"{name}: unreadable JSON"):
        FeatureWriter(path, make_manifest())
    assert FeatureWriter(path, make_manifest(), chunk_size=3, overwrite=True).pending == [0, 1, 2]


def test_temporary_files_of_a_crashed_commit_are_cleaned_up(tmp_path: Path) -> None:
    path = tmp_path / "features"
    path.mkdir()
    (path / f".{PROGRESS_FILE}.4242.tmp").write_text("{half a")
    writer = FeatureWriter(path, make_manifest(), chunk_size=3)
    assert writer.pending == [0, 1, 2]
    assert sorted(p.name for p in path.iterdir()) == [FEATURES_FILE, PROGRESS_FILE]


def test_directory_with_other_files_is_not_taken_over(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and is not a feature store"):
        FeatureWriter(tmp_path, make_manifest())


def test_crash_while_creating_the_array_restarts_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "features"
    FeatureWriter(path, make_manifest(), chunk_size=3).write(0, random_values()[0:3])
    (path / FEATURES_FILE).write_bytes(b"\x93NUMPY truncated")
    assert FeatureWriter(path, make_manifest()).pending == [0, 1, 2]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: (p / MANIFEST_FILE).write_text("{not json"), "unreadable JSON"),
        (lambda p: (p / MANIFEST_FILE).write_text(json.dumps({"format": "other"})), "not a vlmkd feature-store"),
        (lambda p: _edit_manifest(p, version=99), "feature-store version 99"),
        (lambda p: _edit_manifest(p, dim="5"), "'dim' is missing or not of type int"),
        (lambda p: _edit_manifest(p, num_images=8), r"expected float16 \(8, 3, 5\)"),
        (lambda p: _truncate(p / FEATURES_FILE), "unreadable feature array"),
        (lambda p: (p / FEATURES_FILE).unlink(), "unreadable feature array"),
    ],
)
def test_corrupt_store_is_refused_with_the_file_named(tmp_path: Path, damage, message: str) -> None:
    path = tmp_path / "features"
    write_store(path, random_values())
    damage(path)
    with pytest.raises(InputError, match=message) as error:
        FeatureStore.open(path)
    assert str(path) in str(error.value)


def test_missing_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a feature store"):
        FeatureStore.open(tmp_path / "nowhere")


def _edit_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    (path / MANIFEST_FILE).write_text(json.dumps(manifest | changes))


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
