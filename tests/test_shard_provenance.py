"""Caption shards carry what made them and every reader checks it; answers are checked before they are stored;
hand-edited shards are normalised or refused in one line naming the shard (docs/reliability.md, rules 2 and 3)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _scripted import PROMPTS, ScriptedEngine, plain

import vlmkd
from vlmkd.caption.runner import UNUSABLE_PREFIX
from vlmkd.caption.shard_file import MAX_CAPTION_CHARS
from vlmkd.caption.store import CaptionStore
from vlmkd.cli import main as vlmkd_main


def caption(dataset, out: Path, answer=plain, model_id: str = "scripted", **settings):
    engine = ScriptedEngine(answer, model_id)
    return vlmkd.caption(dataset=dataset, prompts=PROMPTS, engine=engine, out=out, num_shards=3, progress=False,
                         **settings)  # fmt: skip


def one_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"vlmkd {command}: error: "), err[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------------------------- rule 2
def test_every_shard_records_what_made_it_in_its_own_metadata(tiny_dataset, tmp_path: Path) -> None:
    store = caption(tiny_dataset, tmp_path / "s").store
    manifest = json.loads((store.path / "manifest.json").read_text())
    expected = {
        "dataset_fingerprint": tiny_dataset.fingerprint(),
        "num_images": len(tiny_dataset),
        "prompt_set": {"name": "two", "fingerprint": manifest["prompt_set"]["fingerprint"]},
        "engine": "hf",
        "model_fingerprint": "scripted",
        "generation": manifest["generation"],
        "num_shards": 3,
    }
    for shard in range(3):
        found = pq.read_schema(store.shard_path(shard)).metadata
        assert json.loads(found[b"vlmkd.made_by"]) == expected
        assert found[b"vlmkd.shard"] == str(shard).encode()


def test_a_shard_made_by_another_run_is_refused_by_readers_and_captioned_again(tiny_dataset, tmp_path: Path, capsys):
    """A shard copied in from a store of another model (same dataset and sharding, so it fits by name and rows)
    once read as this store's: encode now refuses it naming the shard, and a caption rerun captions it again."""
    mine = caption(tiny_dataset, tmp_path / "mine").store
    other = caption(tiny_dataset, tmp_path / "other", answer=lambda n, p: f"OTHER {p} {n}", model_id="other").store
    reference = mine.read_table()
    shutil.copyfile(other.shard_path(1), mine.shard_path(1))
    assert vlmkd_main(["encode", str(mine.path), "--out", str(tmp_path / "f"), "--quiet"]) == 2
    line = one_line(capsys, "encode")
    assert str(mine.shard_path(1)) in line and "made by another run" in line and "model_fingerprint" in line
    assert not (tmp_path / "f").exists()
    report = caption(tiny_dataset, mine.path)
    assert report.shards_written == [1] and "made by another run" in capsys.readouterr().err
    assert report.store.read_table().equals(reference)


def legacy_shards(store: CaptionStore) -> None:
    """Rewrite every shard as vlmkd wrote them before provenance: no `vlmkd.made_by` (same rows and failures)."""
    for shard in range(store.num_shards):
        table = pq.read_table(store.shard_path(shard))
        kept = {k: v for k, v in table.schema.metadata.items() if k in (b"vlmkd.shard", b"vlmkd.failed")}
        pq.write_table(table.replace_schema_metadata(kept), store.shard_path(shard), compression="zstd")


def test_a_store_written_before_provenance_reads_and_resumes_unchanged(tiny_dataset, tmp_path: Path) -> None:
    store = caption(tiny_dataset, tmp_path / "s").store
    reference = store.read_table()
    legacy_shards(store)
    before = {k: store.shard_path(k).read_bytes() for k in range(3)}
    store.shard_path(2).unlink()
    report = caption(tiny_dataset, store.path)
    assert report.shards_written == [2] and report.shards_already_done == [0, 1]
    assert {k: store.shard_path(k).read_bytes() for k in (0, 1)} == {k: before[k] for k in (0, 1)}
    assert report.store.read_table().equals(reference)


# ------------------------------------------------------------------------------------------------- rule 3
def test_empty_whitespace_and_oversized_answers_are_failures_not_captions(tiny_dataset, tmp_path: Path, capsys):
    """A server that answered "   " for every caption once had them stored and the store reported complete."""
    bad = {"0.png": "", "1.png": "   \n\t", "2.png": "w" * (MAX_CAPTION_CHARS + 1)}

    def answer(name: str, prompt: str) -> str:
        return bad[name] if name in bad and prompt.startswith("Describe the") else plain(name, prompt)

    report = caption(tiny_dataset, tmp_path / "s", answer=answer)
    failed = {index: reason for index, _, reason in report.store.failed_images()}
    broken = [i for i, s in enumerate(tiny_dataset.samples) if Path(s.path).name in bad]
    assert sorted(failed) == broken and all(reason.startswith(UNUSABLE_PREFIX) for reason in failed.values())
    reasons = " | ".join(failed.values())
    assert all(kind in reasons for kind in ("empty answer", "whitespace only", "more than a caption may hold"))
    table = report.store.read_table()
    assert set(table.column("image_index").to_pylist()) == set(range(len(tiny_dataset))) - set(broken)
    assert all(c.strip() and len(c) <= MAX_CAPTION_CHARS for c in table.column("caption").to_pylist())
    from vlmkd.caption.cli import summary

    assert f"{len(broken)} with empty or oversized answers" in summary(report)


def test_a_store_with_an_empty_caption_from_before_the_rule_is_refused_by_encode(tiny_dataset, tmp_path, capsys):
    store = caption(tiny_dataset, tmp_path / "s").store
    path = store.shard_path(0)
    table = pq.read_table(path)
    captions = table.column("caption").to_pylist()
    captions[3] = "  "
    edited = table.set_column(3, "caption", pa.array(captions, pa.string()))
    pq.write_table(edited.replace_schema_metadata(table.schema.metadata), path)
    assert vlmkd_main(["encode", str(store.path), "--out", str(tmp_path / "f"), "--quiet"]) == 2
    line = one_line(capsys, "encode")
    assert f"{path}: image 1, prompt 'T2' has an empty caption" in line and "delete this shard file" in line


# ---------------------------------------------------------------------------------- hand-edited shards
def edit(path: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    """Rewrite a shard as a user editing it with pyarrow would: new columns or types, metadata kept."""
    table = pq.read_table(path)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), path)


def retype(name: str, values: Callable[[list], pa.Array]) -> Callable[[pa.Table], pa.Table]:
    def change(table: pa.Table) -> pa.Table:
        index = table.column_names.index(name)
        return table.set_column(index, name, values(table.column(name).to_pylist()))

    return change


NORMALISED = {
    "extra column": lambda t: t.append_column("note", pa.array(["checked"] * t.num_rows)),
    "large_string as polars writes it": retype("caption", lambda v: pa.array(v, pa.large_string())),
    "large_string everywhere and int32 indices": lambda t: pa.table(
        {
            "image_index": t.column("image_index").cast(pa.int32()),
            **{n: t.column(n).cast(pa.large_string()) for n in ("image_path", "prompt_id", "caption")},
        }
    ),  # fmt: skip
    "columns in another order": lambda t: t.select(["caption", "prompt_id", "image_index", "image_path"]),
}
REFUSED = {
    "binary caption": (retype("caption", lambda v: pa.array([x.encode() for x in v], pa.binary())), "column is binary"),
    "integer caption": (retype("caption", lambda v: pa.array(range(len(v)), pa.int64())), "caption column is int64"),
    "no caption column": (lambda t: t.drop_columns(["caption"]), "it has no caption column"),
    "metadata dropped": (lambda t: t, "lacks vlmkd's shard metadata"),
}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A caption store of the tiny dataset and its features (all-MiniLM-L6-v2), made once."""
    from _cases import write_tiny_dataset

    root = tmp_path_factory.mktemp("hand-edited")
    dataset = write_tiny_dataset(root / "data")
    store = caption(dataset, root / "captions").store
    assert vlmkd_main(["encode", str(store.path), "--out", str(root / "features"), "--quiet"]) == 0
    return store.path, np.load(root / "features" / "features.npy")


@pytest.mark.parametrize("case", NORMALISED)
def test_a_hand_edited_shard_of_another_schema_is_normalised_by_encode_and_caption_info(encoded, tmp_path, case):
    """Once pyarrow's "Schema at index 1 was different" traceback in vlmkd-encode and caption-info --html."""
    source, features = encoded
    store = Path(shutil.copytree(source, tmp_path / "captions"))
    edit(store / "shard-00001-of-00003.parquet", NORMALISED[case])
    assert vlmkd_main(["encode", str(store), "--out", str(tmp_path / "f"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "f" / "features.npy"), features)
    assert vlmkd_main(["caption-info", str(store), "--html", str(tmp_path / "g.html")]) == 0
    assert (tmp_path / "g.html").stat().st_size > 1000


@pytest.mark.parametrize("case", REFUSED)
@pytest.mark.parametrize("command", ["encode", "caption-info --html", "caption-info"])
def test_a_hand_edited_shard_vlmkd_cannot_read_is_one_line_naming_it(encoded, tmp_path, capsys, case, command):
    source, _ = encoded
    store = Path(shutil.copytree(source, tmp_path / "captions"))
    shard = store / "shard-00001-of-00003.parquet"
    change, message = REFUSED[case]
    if case == "metadata dropped":
        pq.write_table(pq.read_table(shard).replace_schema_metadata(None), shard)
    else:
        edit(shard, change)
    argv = {
        "encode": ["encode", str(store), "--out", str(tmp_path / "f"), "--quiet"],
        "caption-info --html": ["caption-info", str(store), "--html", str(tmp_path / "g.html")],
        "caption-info": ["caption-info", str(store)],
    }[command]
    assert vlmkd_main(argv) == 2
    line = one_line(capsys, argv[0])
    assert f"{shard}: caption shard refused: " in line and message in line, line
    assert not (tmp_path / "f").exists() and not (tmp_path / "g.html").exists()


# ------------------------------------------------------------------------------------------------- rule 5
def test_a_small_shard_that_expands_beyond_the_caption_cap_is_refused_from_its_footer(tiny_dataset, tmp_path, capsys):
    """A 50 MB answer per caption once made a 6 KB shard that expanded to 1.3 GB in every reader: captions are
    checked against the cap from the column chunks' sizes before any is decompressed."""
    store = caption(tiny_dataset, tmp_path / "s").store
    path = store.shard_path(0)
    table = pq.read_table(path)
    bomb = table.set_column(3, "caption", pa.array(["z" * 5_000_000] * table.num_rows, pa.string()))
    pq.write_table(bomb.replace_schema_metadata(table.schema.metadata), path, compression="zstd")
    assert path.stat().st_size < 100_000
    assert vlmkd_main(["encode", str(store.path), "--out", str(tmp_path / "f"), "--quiet"]) == 2
    line = one_line(capsys, "encode")
    assert f"{path}: caption shard refused: its caption column takes " in line and "8,192 characters" in line
