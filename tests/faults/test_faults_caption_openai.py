"""SIGKILL `vlmkd caption --engine openai` mid-run, three times in a row, rerun it, and compare with an uninterrupted
run byte for byte. The server is the loopback stub in a process of its own (it outlives every killed client)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkd.caption import CaptionStore
from vlmkd.errors import InputError
from vlmkd.testing.openai_stub import echo_caption

from ._kill import KillPoint, environment, kill_chain, killed, run_and_kill, tree_bytes, unit_seconds

pytestmark = [pytest.mark.faults, pytest.mark.slow]

NUM_IMAGES = 24  # one image per shard (x 5 prompts)
SHARD = re.compile(r"shard-\d{5}-of-\d{5}\.parquet")
# Units are finished shards (-1 before the manifest): killed as soon as the store exists, then inside later shards.
POINTS = (KillPoint(1), KillPoint(2, 0.5), KillPoint(3, 0.25))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 small JPEGs (sent to the server as they are) in 3 classes, with a list file and class names."""
    work = tmp_path_factory.mktemp("caption-openai-faults")
    rng = np.random.default_rng(0)
    (work / "data" / "img").mkdir(parents=True)
    lines = []
    for k in range(NUM_IMAGES):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(work / "data" / "img" / f"{k}.jpg")
        lines.append(f"img/{k}.jpg {k % 3}")
    (work / "data" / "train.txt").write_text("\n".join(lines) + "\n")
    (work / "data" / "classnames.txt").write_text("zero\none\ntwo\n")
    return work


@pytest.fixture(scope="module")
def server(work: Path):
    """The stub in a subprocess answering after 20 ms (so a kill lands mid-shard); its URL. Killed by PID."""
    command = [sys.executable, "-m", "vlmkd.testing.openai_stub", "--port", "0", "--delay", "0.02"]
    process = subprocess.Popen(command, cwd=work, env=environment(), stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()  # printed once it listens
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        process.kill()
        process.wait(10)


def caption_args(work: Path, url: str, out: Path) -> list:
    return ["caption", work / "data" / "train.txt", "--engine", "openai", "--api-base", url, "--out", out,
            "--max-new-tokens", 4, "--concurrency", 3, "--num-shards", NUM_IMAGES, "--no-progress"]  # fmt: skip


def shards_done(out: Path):
    def count() -> int:
        if not (out / "manifest.json").exists():
            return -1
        return sum(1 for p in out.iterdir() if SHARD.fullmatch(p.name))

    return count


def test_killed_openai_runs_resume_to_the_uninterrupted_store(work: Path, server: str, figures) -> None:
    reference = work / "reference"
    uninterrupted = run_and_kill(caption_args(work, server, reference), work, shards_done(reference), None)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    out = work / "killed"

    def inspect() -> dict:
        shards = [p.name for p in out.iterdir() if SHARD.fullmatch(p.name)] if out.exists() else []
        try:
            CaptionStore.open(out).read_table()
            read = "complete"
        except InputError as error:
            read = str(error)
        wrong = [s for s in shards if (out / s).read_bytes() != (reference / s).read_bytes()]
        return {"shards": len(shards), "read": read, "wrong": wrong}

    chain = kill_chain(caption_args(work, server, out), work, shards_done(out), POINTS,
                       unit_seconds(uninterrupted), inspect)  # fmt: skip
    for run, seen in zip(chain.kills, chain.snapshots, strict=True):
        assert killed(run), run.stderr[-2000:]
        assert seen["read"] != "complete" and seen["wrong"] == []
    assert chain.final.returncode == 0, chain.final.stderr
    assert tree_bytes(out) == tree_bytes(reference)
    store = CaptionStore.open(out)
    table = store.read_table().to_pydict()
    assert len(table["caption"]) == NUM_IMAGES * 5 and store.failed_images() == []
    prompts = {p["id"]: p["template"] for p in store.manifest["prompt_set"]["prompts"]}
    classes = ("zero", "one", "two")
    for index, prompt_id, text in zip(table["image_index"], table["prompt_id"], table["caption"], strict=True):
        image = (work / "data" / "img" / f"{index}.jpg").read_bytes()
        assert text == echo_caption(image, prompts[prompt_id].replace("{label}", classes[index % 3]))
    figures["caption-openai"].append({
        "kill_points": len(chain.kills), "shards_at_each_kill": [s["shards"] for s in chain.snapshots],
        "shards": NUM_IMAGES, "uninterrupted_s": round(uninterrupted.seconds, 1),
        "final_rerun_s": round(chain.final.seconds, 1),
    })  # fmt: skip
