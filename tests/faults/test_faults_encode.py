"""SIGKILL `vlmkd encode` at six points in a row, rerun it, and compare with an uninterrupted run byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlmkd.caption.store import CaptionStore, make_manifest, prompt_set_record
from vlmkd.encode.store import FEATURES_FILE, MANIFEST_FILE, PROGRESS_FILE, FeatureStore
from vlmkd.errors import InputError

from ._kill import KillPoint, kill_chain, killed, run_and_kill, unit_seconds

pytestmark = pytest.mark.faults

NUM_IMAGES = 48
CHUNK = 2  # images per committed chunk: 24 chunks, so every kill point lands well before the end
NUM_CHUNKS = NUM_IMAGES // CHUNK
PROMPTS = {"G": "Describe this image.", "T1": "What is the main object?", "T2": "Describe the {label}."}
# Units are chunks recorded in progress.json, -1 before the store exists: the first point kills the run as soon
# as the (empty) store is created, the last one while the resumed run is still starting up.
POINTS = (KillPoint(1), KillPoint(1), KillPoint(1, 0.5), KillPoint(2, 0.25), KillPoint(1, 0.9), KillPoint(0))


def caption(index: int, prompt: str) -> str:
    return f"image {index} answers {prompt}: a digit" + " drawn with a thick dark stroke" * (index % 5)


def encode_args(captions: Path, out: Path) -> list:
    return ["encode", captions, "--out", out, "--chunk-size", CHUNK, "--batch-size", 4, "--quiet"]


def chunks_done(out: Path):
    """Chunks on disk: -1 before the store exists, then those recorded in progress.json, all once sealed."""

    def count() -> int:
        if (out / MANIFEST_FILE).exists():
            return NUM_CHUNKS
        try:
            return len(json.loads((out / PROGRESS_FILE).read_text())["done"])
        except (OSError, ValueError, KeyError):
            return -1

    return count


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete caption store of 48 images x 3 prompts, written through the store's own writer."""
    work = tmp_path_factory.mktemp("encode-faults")
    manifest = make_manifest(dataset_fingerprint="f" * 16, num_images=NUM_IMAGES,
                             prompt_set=prompt_set_record("faults", PROMPTS), engine="fake", model_id="fake-vlm",
                             num_shards=3)  # fmt: skip
    store = CaptionStore.create(work / "captions", manifest)
    for shard in range(store.num_shards):
        rows = [(i, f"img/{i}.png", p, caption(i, p)) for i in store.shard_range(shard) for p in PROMPTS]
        store.write_shard(shard, rows)
    return work


@pytest.fixture(scope="module")
def reference(work: Path):
    """One uninterrupted run, watched: its store and the time one chunk takes."""
    out = work / "reference"
    run = run_and_kill(encode_args(work / "captions", out), work, chunks_done(out), None)
    assert run.returncode == 0, run.stderr
    return out, run


@pytest.fixture(scope="module")
def chain(work: Path, reference):
    """The same job killed at every point in turn, then rerun to the end."""
    ref_out, ref_run = reference
    whole = np.load(ref_out / FEATURES_FILE)
    out = work / "killed"

    def inspect() -> dict:
        """What a reader of the killed store sees, and whether every chunk it calls done is right."""
        seen: dict = {"sealed": (out / MANIFEST_FILE).exists()}
        try:
            FeatureStore.open(out)
            seen["open"] = "opened"
        except InputError as error:
            seen["open"] = str(error)
        if (out / PROGRESS_FILE).exists():
            done = seen["done"] = json.loads((out / PROGRESS_FILE).read_text())["done"]
            if not done or not (out / FEATURES_FILE).exists():  # nothing done yet, or killed before the array
                seen["wrong_chunks"] = done  # the array may be mid-creation (even 0 bytes): nothing to compare
                return seen
            features = np.load(out / FEATURES_FILE, mmap_mode="r")
            rows = {c: slice(c * CHUNK, (c + 1) * CHUNK) for c in done}
            seen["wrong_chunks"] = [c for c, r in rows.items() if not np.array_equal(features[r], whole[r])]
        return seen

    return kill_chain(encode_args(work / "captions", out), work, chunks_done(out), POINTS, unit_seconds(ref_run),
                      inspect)  # fmt: skip


@pytest.mark.parametrize("k", range(len(POINTS)), ids=[f"{k}-{p.id}" for k, p in enumerate(POINTS)])
def test_killed_encode_leaves_a_store_no_reader_takes_as_complete(chain, k: int) -> None:
    run, seen = chain.kills[k], chain.snapshots[k]
    assert killed(run), f"run {k} ended on its own (rc {run.returncode}) before its kill point: {run.stderr[-2000:]}"
    assert not seen["sealed"]
    assert seen["open"] != "opened"
    assert "unfinished feature store" in seen["open"] or "not a feature store" in seen["open"]


@pytest.mark.parametrize("k", range(len(POINTS)), ids=[f"{k}-{p.id}" for k, p in enumerate(POINTS)])
def test_every_chunk_recorded_done_at_a_kill_holds_its_final_features(chain, k: int) -> None:
    assert chain.snapshots[k].get("wrong_chunks", []) == []


def test_encode_rerun_after_six_kills_equals_the_uninterrupted_run_byte_for_byte(chain, reference, figures) -> None:
    ref_out, ref_run = reference
    final = chain.final
    assert final.returncode == 0, final.stderr
    killed_out = ref_out.parent / "killed"
    assert sorted(p.name for p in killed_out.iterdir()) == [FEATURES_FILE, MANIFEST_FILE]
    for name in (FEATURES_FILE, MANIFEST_FILE):
        assert (killed_out / name).read_bytes() == (ref_out / name).read_bytes(), name
    resumed, whole = FeatureStore.open(killed_out).features, FeatureStore.open(ref_out).features
    lost = int((resumed != whole).any(axis=-1).sum())
    assert lost == 0
    figures["encode"].append({
        "kill_points": len(chain.kills), "chunks_at_each_kill": [len(s.get("done", [])) for s in chain.snapshots],
        "chunks": NUM_CHUNKS, "features": int(np.prod(whole.shape[:2])), "features_lost": lost,
        "uninterrupted_s": round(ref_run.seconds, 1), "final_rerun_s": round(final.seconds, 1),
    })  # fmt: skip
