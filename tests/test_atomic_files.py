from pathlib import Path

import pytest

from vlmkd.atomic_files import (
    atomic_write,
    fsync_dir,
    remove_stale_temporaries,
    temporary_path,
    write_json_atomic,
    write_text_atomic,
)


def test_json_is_sorted_indented_and_ends_with_a_newline(tmp_path: Path):
    write_json_atomic(tmp_path / "a.json", {"b": 1, "a": [2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_replace_false_keeps_the_file_published_first(tmp_path: Path):
    write_text_atomic(tmp_path / "m", "first", replace=False)
    write_text_atomic(tmp_path / "m", "second", replace=False)
    assert (tmp_path / "m").read_text() == "first"
    write_text_atomic(tmp_path / "m", "third")
    assert (tmp_path / "m").read_text() == "third"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    write_text_atomic(tmp_path / "f", "old")
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "f") as handle:
        handle.write(b"half")
        raise RuntimeError("killed mid-write")
    assert (tmp_path / "f").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_stale_temporaries_of_one_file_are_swept_and_others_kept(tmp_path: Path):
    target = tmp_path / "progress.json"
    assert temporary_path(target).name.startswith(".progress.json.")
    (tmp_path / ".progress.json.4242.tmp").write_text("{half")
    (tmp_path / ".manifest.json.4242.tmp").write_text("{half")
    remove_stale_temporaries(target)
    assert [p.name for p in tmp_path.iterdir()] == [".manifest.json.4242.tmp"]


def test_directory_fsync_errors_raise_unless_ignored(tmp_path: Path):
    fsync_dir(tmp_path)
    with pytest.raises(OSError):
        fsync_dir(tmp_path / "missing")
    fsync_dir(tmp_path / "missing", ignore_errors=True)
