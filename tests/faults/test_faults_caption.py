"""SIGKILL `vlmkd caption` at six points in a row, rerun it, and compare with an uninterrupted run byte for byte."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmkd.caption import CaptionStore
from vlmkd.errors import InputError
from vlmkd.testing import build_tiny_blip

from ._kill import KillPoint, kill_chain, killed, run_and_kill, tree_bytes, unit_seconds

pytestmark = pytest.mark.faults

NUM_IMAGES = 24  # one image per shard (x 5 prompts): 24 shards, the unit of resuming
SHARD = re.compile(r"shard-\d{5}-of-\d{5}\.parquet")
TMP = re.compile(r"\.shard-\d{5}-of-\d{5}\.parquet\.\d+\.tmp")
# Units are finished shard files, -1 before the manifest exists. The first run dies while Python starts (nothing
# on disk), the second as soon as the empty store is created, the others after or inside later shards.
POINTS = (KillPoint(0), KillPoint(1), KillPoint(1), KillPoint(1, 0.5), KillPoint(2, 0.9), KillPoint(1, 0.25))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 small RGB PNGs in 3 classes with a list file and class names, and a tiny random-init BLIP."""
    work = tmp_path_factory.mktemp("caption-faults")
    rng = np.random.default_rng(0)
    lines = []
    for k in range(NUM_IMAGES):
        (work / "data" / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(work / "data" / "img" / f"{k}.png")
        lines.append(f"img/{k}.png {k % 3}")
    (work / "data" / "train.txt").write_text("\n".join(lines) + "\n")
    (work / "data" / "classnames.txt").write_text("zero\none\ntwo\n")
    build_tiny_blip(work / "blip")
    return work


def caption_args(work: Path, out: Path) -> list:
    return ["caption", work / "data" / "train.txt", "--model", work / "blip", "--out", out, "--max-new-tokens", 4,
            "--batch-size", 5, "--num-shards", NUM_IMAGES, "--no-progress"]  # fmt: skip


def shards_done(out: Path):
    def count() -> int:
        if not (out / "manifest.json").exists():
            return -1
        return sum(1 for name in _names(out) if SHARD.fullmatch(name))

    return count


def _names(directory: Path) -> list[str]:
    try:
        return [p.name for p in directory.iterdir()]
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def reference(work: Path):
    out = work / "reference"
    run = run_and_kill(caption_args(work, out), work, shards_done(out), None)
    assert run.returncode == 0, run.stderr
    return out, run


@pytest.fixture(scope="module")
def chain(work: Path, reference):
    ref_out, ref_run = reference
    out = work / "killed"

    def inspect() -> dict:
        """What a reader sees in the killed store, and whether each shard it holds is the final one."""
        seen: dict = {"names": sorted(_names(out))}
        try:
            CaptionStore.open(out).read_table()
            seen["read"] = "complete"
        except InputError as error:
            seen["read"] = str(error)
        shards = [name for name in seen["names"] if SHARD.fullmatch(name)]
        seen["shards"] = len(shards)
        seen["wrong_shards"] = [s for s in shards if (out / s).read_bytes() != (ref_out / s).read_bytes()]
        return seen

    return kill_chain(caption_args(work, out), work, shards_done(out), POINTS, unit_seconds(ref_run), inspect)


@pytest.mark.parametrize("k", range(len(POINTS)), ids=[f"{k}-{p.id}" for k, p in enumerate(POINTS)])
def test_killed_caption_run_leaves_a_store_no_reader_takes_as_complete(chain, k: int) -> None:
    run, seen = chain.kills[k], chain.snapshots[k]
    assert killed(run), f"run {k} ended on its own (rc {run.returncode}) before its kill point: {run.stderr[-2000:]}"
    assert seen["read"] != "complete"
    assert "not a caption store" in seen["read"] or "caption store is incomplete" in seen["read"]


@pytest.mark.parametrize("k", range(len(POINTS)), ids=[f"{k}-{p.id}" for k, p in enumerate(POINTS)])
def test_every_shard_file_present_at_a_kill_is_the_finished_shard(chain, k: int) -> None:
    assert chain.snapshots[k]["wrong_shards"] == []


def test_caption_rerun_after_six_kills_equals_the_uninterrupted_run_byte_for_byte(work, chain, reference, figures):
    ref_out, ref_run = reference
    final = chain.final
    assert final.returncode == 0, final.stderr
    # Same shards and manifest, and no temporary file left: a rerun sweeps those of finished shards.
    ours = tree_bytes(work / "killed")
    leftovers = sorted(name for name in ours if TMP.fullmatch(name))
    assert ours == tree_bytes(ref_out)
    whole, resumed = CaptionStore.open(ref_out).read_table(), CaptionStore.open(work / "killed").read_table()
    assert resumed.equals(whole)
    reference_rows = set(zip(*(whole.column(c).to_pylist() for c in whole.column_names), strict=True))
    resumed_rows = set(zip(*(resumed.column(c).to_pylist() for c in resumed.column_names), strict=True))
    lost = len(reference_rows - resumed_rows)
    assert lost == 0 and whole.num_rows == NUM_IMAGES * 5
    assert all(pq.read_metadata(ref_out / name).num_rows == 5 for name in _names(ref_out) if SHARD.fullmatch(name))
    figures["caption"].append({
        "kill_points": len(chain.kills), "shards_at_each_kill": [s["shards"] for s in chain.snapshots],
        "shards": NUM_IMAGES, "captions": whole.num_rows, "captions_lost": lost,
        "temporary_files_seen_at_kills": sum(1 for s in chain.snapshots for n in s["names"] if n.endswith(".tmp")),
        "temporary_files_left_at_the_end": len(leftovers),
        "uninterrupted_s": round(ref_run.seconds, 1), "final_rerun_s": round(final.seconds, 1),
    })  # fmt: skip


def test_two_ranks_sharing_a_store_one_killed_and_rerun_equal_the_uninterrupted_run(work, reference, tmp_path):
    """torchrun-style sharing (RANK/WORLD_SIZE): rank 1 is killed after two of its shards while rank 0 goes on;
    rerunning rank 1 completes the store, identical to a single uninterrupted process."""
    import subprocess

    from ._kill import command, environment, run_cli

    ref_out, ref_run = reference
    out = tmp_path / "shared"
    args = caption_args(work, out)

    def rank_one_shards() -> int:
        names = [n for n in _names(out) if SHARD.fullmatch(n)]
        return sum(1 for n in names if int(n[6:11]) % 2 == 1) if (out / "manifest.json").exists() else -1

    with open(tmp_path / "rank0.err", "w") as err:
        rank0 = subprocess.Popen(command(args), cwd=tmp_path, env=environment({"RANK": "0", "WORLD_SIZE": "2"}),
                                 stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
        try:
            rank1 = run_and_kill(args, tmp_path, rank_one_shards, KillPoint(3, 0.5), unit_seconds(ref_run),
                                 env={"RANK": "1", "WORLD_SIZE": "2"})  # fmt: skip
        finally:
            assert rank0.wait(timeout=300) == 0, (tmp_path / "rank0.err").read_text()[-2000:]
    assert killed(rank1)
    with pytest.raises(InputError, match="caption store is incomplete"):
        CaptionStore.open(out).read_table()
    rerun = run_cli(args, tmp_path, env={"RANK": "1", "WORLD_SIZE": "2"})
    assert rerun.returncode == 0, rerun.stderr
    assert tree_bytes(out) == tree_bytes(ref_out)


def test_rerun_sweeps_temporaries_of_finished_shards(work, reference, tmp_path) -> None:
    """Recreates a kill between the rename of shard 4 and the sweep of the temporary an earlier kill left."""
    import shutil

    from vlmkd.cli import main as vlmkd_main

    ref_out, _ = reference
    out = Path(shutil.copytree(ref_out, tmp_path / "captions"))
    stale = out / ".shard-00004-of-00024.parquet.424242.tmp"
    stale.write_bytes(b"")
    assert vlmkd_main([str(a) for a in caption_args(work, out)]) == 0  # every shard done: nothing to caption
    assert not stale.exists()


def test_two_processes_on_one_store_without_torchrun_split_the_shards_and_equal_the_uninterrupted_run(
    work, reference, tmp_path, figures
) -> None:
    """Two plain `vlmkd caption` processes on one --out (no RANK/WORLD_SIZE): each shard is captioned once, by
    whichever process locks it first; nobody dies on the other's temporary files; the store equals the reference."""
    import subprocess

    from ._kill import command, environment

    ref_out, _ = reference
    out = tmp_path / "together"
    args = caption_args(work, out)
    processes = [subprocess.Popen(command(args), cwd=tmp_path, env=environment(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    results = [process.communicate(timeout=300) for process in processes]
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]
    written = [int(m.group(1)) if (m := re.search(r"shards: (\d+) written", stdout)) else 0 for stdout, _ in results]
    assert sum(written) == NUM_IMAGES, [stdout for stdout, _ in results]  # no shard captioned twice
    assert tree_bytes(out) == tree_bytes(ref_out)  # complete, identical, no lock or temporary file left
    figures["caption"].append({"concurrent_processes": 2, "shards_written_by_each": written, "shards": NUM_IMAGES})
