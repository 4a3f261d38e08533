"""What one `vlmkd-caption --engine openai` process can feed: captions/s against stub servers that answer at once.

A GPU server running LLaVA-7B is estimated near 100 captions/s, so the client must sustain >= 1,000 captions/s
from one process to keep a 10-GPU fleet busy, with the store's share of wall time <= 3%. The servers here are
the loopback stub (`python -m vlmkd.testing.openai_stub --instant TEXT`) in a process of its own: it answers
every request at once without reading its JSON, so what is measured is the client: reading and base64-encoding
224 px JPEGs, building requests, HTTP, spreading, collecting captions in order and writing shards.

Rows: the whole `run_captioning` stage at concurrency 1/8/64/256, against 1 and against 4 stub servers (the
4 share one stub process: a 2-core machine has no room for more), 5 prompts per image, shards of 256 images.
Reported per row: captions/s (best and median of interleaved rounds), the client process's CPU per caption
(all its threads), and shard writing as a share of wall time: in all (on its own thread, mostly waiting for
fsync), its CPU time, and the time captioning waited for it (at least the last shard, written after the last
caption). Shares are medians over rounds. A second table compares HTTP clients on
bare chat requests (same payloads, concurrency 64): vlmkd's own, httpx, and the openai SDK where installed.

    python benchmarks/bench_openai_captioning.py            # writes benchmarks/results/openai_captioning.md
    python benchmarks/bench_openai_captioning.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from _common import (
    Series,
    benchmark_parser,
    interleave,
    load_average,
    machine,
    rate_series,
    write_image_dataset,
    write_report,
)
from PIL import Image

import vlmkd
from vlmkd.caption import GenerationSettings
from vlmkd.caption.engines.openai.dispatch import Dispatcher, RetryPolicy
from vlmkd.caption.engines.openai.engine import request_body_parts
from vlmkd.caption.engines.openai.transport import Endpoint, Transport, ssl_context
from vlmkd.data import ImageList

RESULTS = Path(__file__).parent / "results" / "openai_captioning.md"
TARGET_RATE, TARGET_STORE_SHARE = 1000.0, 0.03
IMAGE_SIZE = 224
SHARD_IMAGES = 256
CAPTION = "a small dark object on a bright background, with a thin curved line along its left side"


@dataclass(frozen=True)
class Row:
    servers: int
    concurrency: int


@dataclass
class Result:
    row: Row
    rates: Series = field(default_factory=rate_series)  # captions/s
    cpu_us: list[float] = field(default_factory=list)  # client CPU per caption, all threads
    store_shares: list[float] = field(default_factory=list)  # shard writing (its own thread), share of wall
    wait_shares: list[float] = field(default_factory=list)  # the part of it captioning waited for
    cpu_shares: list[float] = field(default_factory=list)  # CPU time of the writing, share of wall


def smooth_shapes(rng: np.random.Generator, index: int, size: int) -> np.ndarray:
    """Smooth random shapes with a little noise: JPEGs of photo-like sizes (~10-20 KB at 224 px)."""
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    noise = rng.normal(0, 6, (size, size, 3))
    return np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)


def make_images(folder: Path, count: int) -> ImageList:
    """`count` 224 px JPEGs of smooth random shapes, in two classes (cat, dog)."""
    return write_image_dataset(
        folder, count, size=IMAGE_SIZE, suffix="jpg", classes=2, pixels=smooth_shapes, classnames=("cat", "dog")
    )


def start_stubs(count: int) -> tuple[subprocess.Popen, list[str]]:
    """One stub process serving `count` ports; returns it and the servers' base URLs."""
    ports = [arg for _ in range(count) for arg in ("--port", "0")]
    command = [sys.executable, "-m", "vlmkd.testing.openai_stub", *ports, "--instant", CAPTION]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    urls = [process.stdout.readline().strip() for _ in range(count)]
    if not all(url.startswith("http://") for url in urls):
        process.kill()
        raise RuntimeError(f"stub servers did not start: {urls}")
    return process, urls


def caption_once(dataset: ImageList, urls: list[str], concurrency: int, out: Path) -> tuple[float, ...]:
    """(captions/s, client CPU µs per caption, shard-writing share of wall, waited-for share of wall) of one
    whole run into a fresh store."""
    shutil.rmtree(out, ignore_errors=True)
    options = {"api_bases": urls, "concurrency": concurrency, "policy": RetryPolicy(), "log": lambda m: None}
    start, cpu = time.perf_counter(), time.process_time()
    report = vlmkd.caption(dataset=dataset, out=out, engine="openai", progress=False, engine_options=options,
                           num_shards=max(1, len(dataset) // SHARD_IMAGES), batch_size=16)  # fmt: skip
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    shares = (report.store_seconds / report.seconds, report.store_wait_seconds / report.seconds,
              report.store_cpu_seconds / report.seconds)  # fmt: skip
    return report.captions / wall, 1e6 * used / report.captions, *shares


def run_stage(dataset: ImageList, rounds: int, concurrencies: tuple[int, ...], work: Path) -> list[Result]:
    stubs = {count: start_stubs(count) for count in (1, 4)}
    try:
        rows = [Row(count, c) for count in (1, 4) for c in concurrencies]
        caption_once(dataset, stubs[1][1], 64, work / "warm-up")  # imports, first shard write (pyarrow, pandas)
        measured = interleave(
            {
                row: partial(caption_once, dataset, stubs[row.servers][1], row.concurrency, work / "store")
                for row in rows
            },
            rounds=rounds,
        )
        results = []
        for row, values in measured.items():
            rates, cpu_us, shares, waits, cpu_shares = zip(*values, strict=True)
            results.append(Result(row, rate_series(rates), list(cpu_us), list(shares), list(waits), list(cpu_shares)))
        return results
    finally:
        for process, _ in stubs.values():
            process.kill()
            process.wait(10)


# ------------------------------------------------------------------------------------ HTTP clients


def payloads(dataset: ImageList, count: int) -> list[bytes]:
    head, middle, tail = request_body_parts("stub-model", GenerationSettings())
    bodies = []
    for k in range(count):
        data = dataset.path(k % len(dataset)).read_bytes()
        url = b"data:image/jpeg;base64," + base64.b64encode(data)
        bodies.append(b"".join((head, url, middle, json.dumps(f"prompt {k}").encode(), tail)))
    return bodies


async def with_vlmkd(url: str, bodies: list[bytes], concurrency: int) -> None:
    policy = RetryPolicy()
    transport = Transport(headers={"content-type": "application/json"}, ssl_context=ssl_context(None),
                          request_timeout_s=policy.request_timeout_s,
                          connect_timeout_s=policy.connect_timeout_s)  # fmt: skip
    dispatcher = Dispatcher([Endpoint.parse(url)], transport=transport, concurrency=concurrency, policy=policy,
                            log=lambda m: None, redact=str)  # fmt: skip
    outcomes = await asyncio.gather(*(dispatcher.post("/chat/completions", body) for body in bodies))
    assert all(o.body["choices"][0]["message"]["content"] == CAPTION for o in outcomes)
    await dispatcher.close()


async def with_httpx(url: str, bodies: list[bytes], concurrency: int) -> None:
    import httpx2 as httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one(body: bytes) -> str:
            async with slots:
                answer = await client.post("/chat/completions", content=body,
                                           headers={"content-type": "application/json"})  # fmt: skip
                return answer.json()["choices"][0]["message"]["content"]

        assert set(await asyncio.gather(*(one(b) for b in bodies))) == {CAPTION}


async def with_openai_sdk(url: str, bodies: list[bytes], concurrency: int) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
    slots = asyncio.Semaphore(concurrency)

    async def one(body: bytes) -> str:
        async with slots:
            answer = await client.chat.completions.create(**json.loads(body))
            return answer.choices[0].message.content

    assert set(await asyncio.gather(*(one(b) for b in bodies))) == {CAPTION}
    await client.close()


def run_clients(dataset: ImageList, rounds: int, count: int) -> dict[str, tuple[Series, list[float]]]:
    clients = {"vlmkd (aiohttp)": with_vlmkd}
    for module, name, function in (("httpx2", "httpx2 AsyncClient", with_httpx),
                                   ("openai", "openai AsyncOpenAI (SDK)", with_openai_sdk)):  # fmt: skip
        try:
            __import__(module)
            clients[name] = function
        except ImportError:
            pass
    bodies = payloads(dataset, count)
    process, (url,) = start_stubs(1)
    try:
        for function in clients.values():
            asyncio.run(function(url, bodies[:200], 64))  # warm-up

        def requests_once(function: Callable) -> tuple[float, float]:
            """(requests/s, client CPU µs per request) of sending every body."""
            start, cpu = time.perf_counter(), time.process_time()
            asyncio.run(function(url, bodies, 64))
            return count / (time.perf_counter() - start), 1e6 * (time.process_time() - cpu) / count

        measured = interleave({name: partial(requests_once, function) for name, function in clients.items()},
                              rounds=rounds)  # fmt: skip
        return {name: (rate_series(r for r, _ in v), [c for _, c in v]) for name, v in measured.items()}
    finally:
        process.kill()
        process.wait(10)


# ------------------------------------------------------------------------------------------- report


def stage_table(results: list[Result]) -> str:
    lines = ["| stub servers | concurrency | captions/s best | captions/s median | client CPU µs/caption (median) "
             "| shard writing, share of wall | its CPU | captioning waited for it |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        store, wait = statistics.median(r.store_shares), statistics.median(r.wait_shares)
        lines.append(f"| {r.row.servers} | {r.row.concurrency} | {r.rates.best:,.0f} | {r.rates.median:,.0f} | "
                     f"{statistics.median(r.cpu_us):.0f} | {100 * store:.2f}% | "
                     f"{100 * statistics.median(r.cpu_shares):.2f}% | {100 * wait:.2f}% |")  # fmt: skip
    return "\n".join(lines)


def client_table(results: dict[str, tuple[Series, list[float]]]) -> str:
    lines = ["| HTTP client | requests/s best | requests/s median | client CPU µs/request (median) |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for name, (rates, cpu) in results.items():
        lines.append(f"| {name} | {rates.best:,.0f} | {rates.median:,.0f} | {statistics.median(cpu):.0f} |")
    return "\n".join(lines)


def verdict(results: list[Result]) -> str:
    best = max(results, key=lambda r: r.rates.median)
    slowest = min(results, key=lambda r: r.rates.median)
    share = max(statistics.median(r.store_shares) for r in results)
    wait = max(statistics.median(r.wait_shares) for r in results)
    met = best.rates.median >= TARGET_RATE
    return (
        f"Best row: {best.row.servers} server(s) at concurrency {best.row.concurrency}, "
        f"{best.rates.median:,.0f} captions/s by median; slowest row {slowest.rates.median:,.0f} "
        f"(target >= {TARGET_RATE:,.0f}: {'met' if met else 'NOT met'}). Writing shards, on a thread of its own, "
        f"took at most {100 * share:.2f}% of wall time in any row, and captioning waited for at most "
        f"{100 * wait:.2f}% (target <= {100 * TARGET_STORE_SHARE:.0f}%: "
        f"{'met' if wait <= TARGET_STORE_SHARE else 'NOT met'} for the wait, "
        f"{'met' if share <= TARGET_STORE_SHARE else 'NOT met'} for the writing itself)."
    )


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    images, rounds = (64, 1) if args.quick else (args.images, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="vlmkd-bench-openai-"))
    try:
        dataset = make_images(work / "data", images)
        mean_kb = statistics.mean(dataset.path(k).stat().st_size for k in range(len(dataset))) / 1024
        stage = run_stage(dataset, rounds, (1, 8, 64, 256), work)
        clients = run_clients(dataset, rounds, 400 if args.quick else 2000)
        load = load_average()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = "\n".join([
        "# Captioning through OpenAI-compatible servers: what one client process sustains",
        "",
        f"{images} random {IMAGE_SIZE} px JPEGs (mean {mean_kb:.1f} KB, sent as they are) x 5 prompts = "
        f"{images * 5} captions per run, shards of {SHARD_IMAGES} images, `--batch-size 16`; the servers are "
        "the loopback stub in its own process, answering at once. "
        f"{rounds} interleaved rounds after a warm-up. {machine()}; load average {load} at the end "
        "(the machine is shared with other jobs: rates are lower and noisier than on a quiet one).",
        "",
        "## The whole stage (`run_captioning`, engine `openai`)",
        "",
        stage_table(stage),
        "",
        verdict(stage),
        "",
        "## HTTP clients on bare chat requests (1 stub server, concurrency 64, the same JSON bodies)",
        "",
        client_table(clients),
        "",
        "Reproduce: `python benchmarks/bench_openai_captioning.py`.",
    ])  # fmt: skip
    print(report)
    if not args.quick:
        write_report(RESULTS, report)


if __name__ == "__main__":
    main()
