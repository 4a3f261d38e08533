"""Property-based tests of everything that parses files a user (or a crash) may have damaged: the caption- and
feature-store manifest readers, the feature store's progress file and array, caption shards, list files,
class-name files and the long-tail profile. The property is always the same: a valid result or an
`InputError` naming the file, never another exception (which the CLI would print as a traceback).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vlmkd.caption.store import CaptionStore, make_manifest, prompt_set_record
from vlmkd.data.listfile import read_classnames, read_list_file
from vlmkd.data.longtail import longtail_counts
from vlmkd.encode.store import FeatureStore, Progress
from vlmkd.encode.writer import FeatureWriter
from vlmkd.errors import InputError, VlmkdError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def caption_manifest() -> dict:
    prompts = prompt_set_record("p", {"G": "Describe.", "T1": "The {label}."})
    return make_manifest(dataset_fingerprint="d" * 16, num_images=5, prompt_set=prompts, engine="hf",
                         model_id="m", num_shards=2)  # fmt: skip


def feature_manifest() -> dict:
    return {"format": "vlmkd-features", "version": 1, "encoder": "e", "encoder_dtype": "float32", "dim": 3,
            "normalized": True, "dtype": "float16", "prompt_ids": ["G", "T1"], "num_images": 5,
            "dataset_fingerprint": "d" * 16, "caption_store_fingerprint": "c" * 16}  # fmt: skip


def mutated(base: dict):
    """`base` with some fields replaced by arbitrary JSON, some removed, some added."""
    return st.tuples(
        st.dictionaries(st.sampled_from(sorted(base)), json_values, max_size=4),
        st.sets(st.sampled_from(sorted(base)), max_size=3),
        st.dictionaries(st.text(max_size=6), json_values, max_size=2),
    ).map(lambda change: {k: v for k, v in {**base, **change[2], **change[0]}.items() if k not in change[1]})


def use_caption_store(path: Path) -> None:
    """Open a caption store and touch everything a later stage reads before its shards."""
    store = CaptionStore.open(path)
    store.fingerprint()
    assert isinstance(store.prompt_ids, tuple)
    for shard in range(store.num_shards):
        store.shard_range(shard)
    store.missing_shards()
    store.failed_images()


def fresh(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)


# ------------------------------------------------------------------------------------- caption store manifest


@SETTINGS
@given(text=st.text(max_size=60) | json_values.map(json.dumps))
def test_caption_manifest_that_is_not_a_store_manifest_is_an_input_error(tmp_path_factory, text: str) -> None:
    path = fresh(tmp_path_factory, "captions")
    (path / "manifest.json").write_text(text)
    with pytest.raises(InputError, match="manifest"):
        use_caption_store(path)


@SETTINGS
@given(manifest=mutated(caption_manifest()))
@example(manifest={**caption_manifest(), "prompt_set": "default"})
@example(manifest={**caption_manifest(), "num_shards": "2"})
def test_damaged_caption_manifest_opens_or_is_an_input_error(tmp_path_factory, manifest: dict) -> None:
    path = fresh(tmp_path_factory, "captions")
    (path / "manifest.json").write_text(json.dumps(manifest))
    try:
        use_caption_store(path)
    except InputError as error:
        assert str(path) in str(error)


@SETTINGS
@given(data=st.binary(max_size=200))
@example(data=b"")
@example(data=b"PAR1")
def test_damaged_caption_shard_is_an_input_error(tmp_path_factory, data: bytes) -> None:
    path = fresh(tmp_path_factory, "captions")
    store = CaptionStore.create(path, caption_manifest())
    store.write_shard(0, [(i, f"{i}.png", p, "words") for i in store.shard_range(0) for p in store.prompt_ids])
    store.shard_path(1).write_bytes(data)
    with pytest.raises(InputError, match="shard-00001-of-00002.parquet"):
        store.read_table()


# ------------------------------------------------------------------------------------- feature store


@SETTINGS
@given(manifest=mutated(feature_manifest()) | json_values)
def test_damaged_feature_manifest_opens_or_is_an_input_error(tmp_path_factory, manifest) -> None:
    path = fresh(tmp_path_factory, "features")
    np.save(path / "features.npy", np.zeros((5, 2, 3), dtype=np.float16))
    (path / "manifest.json").write_text(json.dumps(manifest))
    try:
        store = FeatureStore.open(path)
    except InputError as error:
        assert str(path) in str(error)
        return
    assert store.features.shape == (store.num_images, len(store.prompt_ids), store.dim)
    store.fingerprint()


@SETTINGS
@given(progress=st.fixed_dictionaries({"manifest": mutated(feature_manifest()), "chunk_size": json_values,
                                       "done": json_values}) | json_values)  # fmt: skip
def test_damaged_progress_file_resumes_or_is_refused_with_a_vlmkd_error(tmp_path_factory, progress) -> None:
    path = fresh(tmp_path_factory, "features")
    (path / "progress.json").write_text(json.dumps(progress))
    try:
        Progress.load(path / "progress.json")
        writer = FeatureWriter(path, feature_manifest(), chunk_size=2)
    except VlmkdError as error:
        assert str(path) in str(error)
        return
    assert set(writer.pending) <= set(range(writer.progress.num_chunks))  # a resumed job keeps its chunk size
    for chunk in writer.pending:
        writer.write(chunk, np.ones((len(writer.chunk_rows(chunk)), 2, 3), dtype=np.float32))
    assert np.array_equal(writer.finish().features, np.ones((5, 2, 3), dtype=np.float16))


@SETTINGS
@given(data=st.binary(max_size=300))
@example(data=b"")
def test_damaged_feature_array_is_an_input_error(tmp_path_factory, data: bytes) -> None:
    path = fresh(tmp_path_factory, "features")
    (path / "manifest.json").write_text(json.dumps(feature_manifest()))
    (path / "features.npy").write_bytes(data)
    with pytest.raises(InputError, match="features.npy"):
        FeatureStore.open(path)


@SETTINGS
@given(data=st.binary(min_size=1, max_size=300))
def test_damaged_nonempty_feature_array_is_an_input_error(tmp_path_factory, data: bytes) -> None:
    path = fresh(tmp_path_factory, "features")
    (path / "manifest.json").write_text(json.dumps(feature_manifest()))
    header = np.lib.format.magic(1, 0)
    for content in (data, header + data):  # random bytes, and random bytes behind a valid .npy magic string
        (path / "features.npy").write_bytes(content)
        with pytest.raises(InputError, match="features.npy"):
            FeatureStore.open(path)


# ------------------------------------------------------------------------------------- list and class-name files

good_line = st.tuples(st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=6),
                      st.integers(0, 9)).map(lambda e: f"{e[0]}.png {e[1]}")  # fmt: skip
bad_line = st.sampled_from(["x.png", "x.png -3", "x.png 1.5", "../x.png 1", "/x.png 1", "x.png 99"])


@SETTINGS
@given(before=st.lists(good_line, max_size=6, unique_by=lambda line: line.split()[0]), bad=bad_line,
       after=st.lists(good_line, max_size=3))  # fmt: skip
def test_first_bad_line_is_reported_with_its_own_line_number(tmp_path_factory, before, bad, after) -> None:
    path = fresh(tmp_path_factory, "list") / "train.txt"
    path.write_text("\n".join([*before, bad, *after]) + "\n")
    with pytest.raises(InputError) as raised:
        read_list_file(path, num_classes=10)
    assert str(raised.value).startswith(f"{path}:{len(before) + 1}: ")


@SETTINGS
@given(name=st.text(string.ascii_letters, min_size=1, max_size=5), spelling=st.sampled_from(
    ["./{n}.png", "{n}/../{n}.png", "{n}\\..\\{n}.png", ".//{n}.png", "{n}.png"]))  # fmt: skip
def test_the_same_file_spelled_differently_is_a_duplicate(tmp_path_factory, name: str, spelling: str) -> None:
    path = fresh(tmp_path_factory, "list") / "train.txt"
    path.write_text(f"{name}.png 0\n{spelling.format(n=name)} 1\n")
    with pytest.raises(InputError, match=rf"train\.txt:2: duplicate entry '{name}\.png' \(first on line 1\)"):
        read_list_file(path)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_any_bytes_as_a_list_file_parse_or_are_an_input_error(tmp_path_factory, data: bytes) -> None:
    path = fresh(tmp_path_factory, "list") / "train.txt"
    path.write_bytes(data)
    try:
        entries = read_list_file(path)
    except InputError as error:
        assert str(error).startswith(f"{path}")
        return
    assert entries and all(label >= 0 and relative not in ("", ".") for relative, label in entries)


@SETTINGS
@given(text=st.text(max_size=80))
def test_any_text_as_a_class_name_file_gives_one_name_per_line_or_an_input_error(tmp_path_factory, text) -> None:
    path = fresh(tmp_path_factory, "names") / "classnames.txt"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        names = read_classnames(path)
    except InputError as error:
        assert str(error).startswith(f"{path}")
        return
    lines = path.read_text().split("\n")  # universal newlines: \r\n and \r read as \n; U+2028 is not a line end
    while lines and not lines[-1].strip():
        lines.pop()
    assert names == [line.strip() for line in lines] and all(names)


# ------------------------------------------------------------------------------------- long-tail profile


@settings(max_examples=300, deadline=None)
@given(max_count=st.integers(-5, 10**8), num_classes=st.integers(-2, 200),
       imbalance=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-3, 10**6))  # fmt: skip
def test_long_tail_profile_of_any_numbers_is_a_valid_profile_or_an_input_error(max_count, num_classes, imbalance):
    try:
        counts = longtail_counts(max_count, num_classes, imbalance)
    except InputError:
        return
    assert len(counts) == num_classes and counts[0] == max_count
    assert all(isinstance(c, int) and 1 <= c <= max_count for c in counts)
    assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))


@pytest.mark.parametrize("max_count", [999_999_858, 2_000_000_000])
def test_head_class_keeps_exactly_max_count_images_however_large(max_count: int) -> None:
    assert longtail_counts(max_count, 2, 1.0) == [max_count, max_count]


# ------------------------------------------------------------------------------------- training config files


def _field_type_ok(value, default) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (str, Path)):
        return isinstance(value, type(default))
    if isinstance(default, list):
        return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return value is None or isinstance(value, (str, list, Path))  # optional settings: features, teacher, prompts


def _optional_field_ok(value, hint) -> bool:
    """An optional setting (default None): None, or a value of the type it is annotated with."""
    import typing

    if value is None:
        return True
    for member in typing.get_args(hint):
        if typing.get_origin(member) is list:
            (item,) = typing.get_args(member)
            if isinstance(value, list) and all(isinstance(v, item) for v in value):
                return True
        elif member in (float, int, str, Path) and _field_type_ok(value, member()):
            return True
    return False


@settings(max_examples=150, deadline=None)
@given(data=st.data())
@example(data=None)
def test_any_value_in_a_training_config_file_is_refused_or_has_the_settings_type(data) -> None:
    import typing

    from vlmkd.train.config import TrainConfig, field_names, resolve_config

    defaults = TrainConfig()
    if data is None:  # the explicit example: a number written as a word
        name, value = "epochs", "ten"
    else:
        name = data.draw(st.sampled_from([n for n in field_names() if n != "train"]))
        value = data.draw(json_values)
    try:
        config = resolve_config({"train": "data/train.txt", name: value}, {})
    except InputError:
        return
    default = getattr(defaults, name)
    if default is None:
        hint = typing.get_type_hints(TrainConfig)[name]
        assert _optional_field_ok(getattr(config, name), hint), (name, value)
    else:
        assert _field_type_ok(getattr(config, name), default), (name, value)


# ------------------------------------------------------------------------------------- prompt-set files

prompt_items = st.lists(
    st.dictionaries(st.sampled_from(["id", "template", "description", "other"]),
                    json_values | st.sampled_from(["G", "T1", "Describe the {label}.", "{label}", "{x}", "{", "}"]),
                    max_size=4),
    max_size=4,
)  # fmt: skip


@SETTINGS
@given(document=st.fixed_dictionaries({"prompts": prompt_items}, optional={"name": json_values}) | json_values)
def test_any_prompt_file_loads_a_renderable_prompt_set_or_is_an_input_error(tmp_path_factory, document) -> None:
    from vlmkd.caption.prompts import load_prompt_set

    for suffix, text in ((".json", json.dumps(document)), (".yaml", json.dumps(document))):  # JSON is valid YAML
        path = fresh(tmp_path_factory, "prompts") / f"p{suffix}"
        path.write_text(text)
        try:
            prompts = load_prompt_set(path)
        except InputError as error:
            assert str(error).startswith(str(path))
            continue
        assert prompts.prompts and len(set(prompts.ids)) == len(prompts.ids)
        for prompt in prompts.prompts:
            assert "cat" in prompt.render("cat") or "{label}" not in prompt.template
