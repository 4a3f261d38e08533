"""`vlmkd caption merge OUT STORE...`: the parts of a store captioned on several machines gather into the store one
machine would have written, after every part and shard has been checked; nothing is written when a check fails."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _scripted import PROMPTS, ScriptedEngine, plain

import vlmkd
from vlmkd.caption import Assignment
from vlmkd.caption.merge import merge_stores
from vlmkd.caption.store import CaptionStore
from vlmkd.cli import main as vlmkd_main
from vlmkd.errors import InputError, StoreMismatchError

NUM_SHARDS = 5


def caption_part(dataset, out: Path, *, answer=plain, model_id: str = "scripted", **split) -> CaptionStore:
    """One machine's part: `shard_index=K`, or `assignment=Assignment(rank, world)` (RANK/WORLD_SIZE)."""
    engine = ScriptedEngine(answer, model_id)
    return vlmkd.caption(dataset=dataset, prompts=PROMPTS, engine=engine, out=out, num_shards=NUM_SHARDS,
                         progress=False, **split).store  # fmt: skip


def unreadable_third(dataset) -> None:
    dataset.path(3).write_bytes(b"not an image")  # a failure recorded in shard 1's metadata, to carry over


@pytest.fixture
def parts(tiny_dataset, tmp_path) -> dict[str, CaptionStore]:
    """Three machines: A = rank 0 of 2 (shards 0, 2, 4), B = shard 1, C = shard 3; and the one-machine store."""
    unreadable_third(tiny_dataset)
    return {
        "A": caption_part(tiny_dataset, tmp_path / "A", assignment=Assignment(0, 2)),
        "B": caption_part(tiny_dataset, tmp_path / "B", shard_index=1),
        "C": caption_part(tiny_dataset, tmp_path / "C", shard_index=3),
        "whole": caption_part(tiny_dataset, tmp_path / "whole"),
    }


def shard_bytes(store: CaptionStore) -> dict[int, bytes]:
    return {k: store.shard_path(k).read_bytes() for k in range(store.num_shards) if store.shard_path(k).exists()}


def test_parts_from_several_machines_merge_into_the_store_one_machine_writes(parts, tmp_path, capsys) -> None:
    argv = ["caption", "merge", str(tmp_path / "out"), *(str(parts[k].path) for k in "ABC")]
    assert vlmkd_main(argv) == 0
    out = capsys.readouterr().out
    assert "5 shards copied, 0 already there, 0 of 5 missing" in out and "store complete" in out
    merged = CaptionStore.open(tmp_path / "out")
    whole = parts["whole"]
    assert shard_bytes(merged) == shard_bytes(whole)  # byte for byte, provenance and failures included
    assert merged.read_table().equals(whole.read_table())
    assert merged.failed_images() == whole.failed_images() and [i for i, _, _ in merged.failed_images()] == [3]
    assert merged.manifest == parts["A"].manifest


def test_a_merge_reports_what_is_missing_and_a_later_merge_completes_it(parts, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    report = merge_stores(out, [parts["A"].path, parts["B"].path])
    assert sorted(report.copied) == [0, 1, 2, 4] and report.missing == [3]
    assert vlmkd_main(["caption", "merge", str(out), str(parts["C"].path)]) == 0
    printed = capsys.readouterr().out
    assert "1 shards copied, 4 already there, 0 of 5 missing" in printed
    assert shard_bytes(CaptionStore.open(out)) == shard_bytes(parts["whole"])


def test_a_part_can_be_the_merged_store(parts) -> None:
    before = shard_bytes(parts["A"])
    report = merge_stores(parts["A"].path, [parts["B"].path, parts["C"].path])
    assert sorted(report.copied) == [1, 3] and report.already == [0, 2, 4] and not report.missing
    assert {k: v for k, v in shard_bytes(parts["A"]).items() if k in before} == before


def test_incomplete_merges_print_the_missing_shards(parts, tmp_path, capsys) -> None:
    assert vlmkd_main(["caption", "merge", str(tmp_path / "out"), str(parts["B"].path)]) == 0
    printed = capsys.readouterr().out
    assert "store incomplete: shards 0, 2, 3, 4 are in no part" in printed
    assert "--num-shards 5 --shard-index K" in printed


def tree(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def test_a_part_made_with_other_settings_is_refused_and_nothing_is_written(tiny_dataset, parts, tmp_path, capsys):
    other = caption_part(tiny_dataset, tmp_path / "other", model_id="another-vlm", shard_index=3)
    argv = ["caption", "merge", str(tmp_path / "out"), str(parts["A"].path), str(other.path)]
    assert vlmkd_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{other.path}: was captioned with other settings than {parts['A'].path}" in err
    assert "model_fingerprint: 'scripted' in the store, 'another-vlm' now" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(StoreMismatchError):  # nor into an existing store of other settings
        merge_stores(other.path, [parts["A"].path])


def test_two_copies_of_a_shard_that_differ_are_refused(tiny_dataset, parts, tmp_path) -> None:
    """Same settings, other captions (sampling, other hardware): neither copy is chosen silently."""
    drifted = caption_part(tiny_dataset, tmp_path / "drifted", answer=lambda n, p: f"{p} of {n}, drifted",
                           shard_index=1)  # fmt: skip
    before = tree(parts["A"].path)
    with pytest.raises(InputError, match=rf"^{drifted.shard_path(1)}: shard 1 differs from {parts['B'].shard_path(1)}"):
        merge_stores(parts["A"].path, [parts["B"].path, drifted.path])
    assert tree(parts["A"].path) == before
    same = Path(shutil.copytree(parts["B"].path, tmp_path / "B-copy"))  # an identical copy merges
    assert sorted(merge_stores(tmp_path / "out", [parts["B"].path, same]).copied) == [1]


def test_a_damaged_or_foreign_shard_in_a_part_is_refused_naming_it(parts, tmp_path) -> None:
    truncated = parts["B"].shard_path(1)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(InputError, match=rf"^{truncated}: not a whole shard of {parts['B'].path}"):
        merge_stores(tmp_path / "out", [parts["A"].path, parts["B"].path])
    shutil.copyfile(parts["whole"].shard_path(0), parts["C"].shard_path(1))  # shard 0's file under shard 1's name
    with pytest.raises(InputError, match=r"not a whole shard .*the file holds shard 0"):
        merge_stores(tmp_path / "out", [parts["C"].path])
    assert not (tmp_path / "out").exists()
