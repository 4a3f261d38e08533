"""What one `vlmkd-caption --engine openai` process can feed: captions/s against stub servers that answer at once,
before and after the transport moved to aiohttp, with uvloop and without, in one run.

A GPU server running LLaVA-7B is estimated near 100 captions/s, so the client must sustain >= 1,000 captions/s
from one process to keep a 10-GPU fleet busy. The servers here are the loopback stub
(`python -m vlmkd.testing.openai_stub --instant TEXT`) in a process of its own: it answers every request at once
without reading its JSON, so what is measured is the client: reading and base64-encoding 224 px JPEGs, building
requests, HTTP, spreading, collecting captions in order and writing shards.

Clients compared, each row in a fresh worker process, rounds interleaved (`_common.interleave`,
rotating which row goes first):
- `http11`: the hand-written asyncio HTTP/1.1 client the engine had before, taken from git revision `BEFORE`
  (the last one with it) into a temporary folder, requests spread one by one to the least busy server;
- `aiohttp`: this tree's engine, all prompts of an image on one server (the first prompt first);
- `aiohttp, per request` (4 servers, uvloop): this tree's transport with the old spreading, the baseline of the
  routing by image: same throughput, and how many servers each image touched;
each with asyncio's event loop and with uvloop's.

Rows: the whole `run_captioning` stage at concurrency 1/64/256 against 1 and against 4 stub servers (the 4 share
one stub process: a 2-core machine has no room for more), 5 prompts per image, shards of 256 images. Reported per
row: captions/s (best and median of the rounds), the client process's CPU per caption (all its threads, median),
the servers per image where known. A second table compares the HTTP clients alone on bare chat requests.

    python benchmarks/bench_openai_captioning.py            # writes benchmarks/results/openai_captioning.md
    python benchmarks/bench_openai_captioning.py --quick    # small smoke run, prints only
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from _common import (
    Series,
    benchmark_parser,
    interleave,
    load_average,
    machine,
    markdown_table,
    rate_series,
    write_image_dataset,
    write_report,
)
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "openai_captioning.md"
BEFORE = "09e96a44e75a3391728123a6281be6255bfb20f4"  # main before the transport moved to aiohttp (http11.py)
TARGET_RATE = 1000.0
IMAGE_SIZE = 224
SHARD_IMAGES = 256
CAPTION = "a small dark object on a bright background, with a thin curved line along its left side"
INATURALIST_CAPTIONS = 2_200_000  # iNaturalist 2018: 438k images x 5 prompts


@dataclass(frozen=True)
class Variant:
    """A client: `transport` http11 (the BEFORE tree) or aiohttp (this one), its event loop, its spreading."""

    transport: str
    loop: str
    spreading: str = "image"

    @property
    def name(self) -> str:
        spread = ", per request" if self.spreading == "request" else ""
        return f"{self.transport}{spread}, {self.loop}"


@dataclass(frozen=True)
class Row:
    variant: Variant
    servers: int
    concurrency: int


@dataclass
class Result:
    row: Row
    rates: Series = field(default_factory=rate_series)  # captions/s
    cpu_us: list[float] = field(default_factory=list)  # client CPU per caption, all threads
    servers_per_image: list[float] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- setup


def smooth_shapes(rng: np.random.Generator, index: int, size: int) -> Image.Image:
    """A photo-like picture (smooth random shapes with a little noise): ~10-20 KB as a 224 px JPEG."""
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    noise = rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def make_images(folder: Path, count: int) -> Path:
    """`count` 224 px JPEGs in two classes; the list file."""
    write_image_dataset(folder, count, size=IMAGE_SIZE, suffix="jpg", classes=2, pixels=smooth_shapes,
                        classnames=("cat", "dog"))  # fmt: skip
    return folder / "train.txt"


def extract_before(folder: Path) -> Path:
    """The `vlmkd` package of revision BEFORE, extracted under `folder` (pure Python; no native modules needed)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "vlmkd"], capture_output=True, check=True)
    folder.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


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


def run_worker(job: dict, before: Path) -> dict:
    """One measurement in a fresh process (its imports, its event loop, its tree of vlmkd)."""
    command = [sys.executable, __file__, "--worker", json.dumps(job), "--before-tree", str(before)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"worker {job} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ worker


def worker(job: dict, before: Path) -> dict:
    """Import vlmkd from the tree the variant names, set the event loop, measure, and return the figures."""
    variant = Variant(**job["variant"])
    if variant.transport == "http11":
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
        sys.path.insert(0, str(before))
    import vlmkd

    if variant.transport == "http11":
        assert Path(vlmkd.__file__).is_relative_to(before), vlmkd.__file__
        if variant.loop == "uvloop":  # the old engine made its loop with asyncio.new_event_loop()
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if job["kind"] == "client":
        return measure_client(variant, job)
    return measure_stage(variant, job)


def engine_for(variant: Variant, urls: list[str], concurrency: int):
    from vlmkd.caption import GenerationSettings
    from vlmkd.caption.engines.openai.engine import OpenAIEngine

    options = {"api_bases": urls, "concurrency": concurrency, "log": lambda message: None}
    if variant.transport == "http11":
        return OpenAIEngine(None, GenerationSettings(), **options)
    options["uvloop"] = variant.loop == "uvloop"
    if variant.spreading == "image":
        return OpenAIEngine(None, GenerationSettings(), **options)
    return per_request_engine()(None, GenerationSettings(), **options)


def per_request_engine() -> type:
    """This tree's engine with the spreading it had before: every prompt sent at once, each request to the least
    busy server; it counts the servers each image touched."""
    from vlmkd.caption.engines.base import RequestFailure
    from vlmkd.caption.engines.openai.dispatch import Refused
    from vlmkd.caption.engines.openai.engine import CHAT_PATH, OpenAIEngine

    class PerRequestEngine(OpenAIEngine):
        async def _caption_image(self, key: bytes, bodies: list[bytes]) -> list:
            servers: set[str] = set()

            def read(answer: dict, server: str) -> str:
                servers.add(server)
                return self._read_caption(answer, server)

            outcomes = await asyncio.gather(*(self.dispatcher.post(CHAT_PATH, body, None, read) for body in bodies))
            self.servers_per_image[len(servers)] += 1
            return [RequestFailure(o.reason) if isinstance(o, Refused) else o for o in outcomes]

    return PerRequestEngine


def measure_stage(variant: Variant, job: dict) -> dict:
    from vlmkd.caption.config import CaptionConfig
    from vlmkd.caption.runner import run_captioning
    from vlmkd.data import load_image_list

    def caption(dataset: Path, out: str, shards: int) -> object:
        config = CaptionConfig(out=Path(job["out"]) / out, engine="openai", num_shards=shards, progress=False)
        return run_captioning(config, dataset=load_image_list(dataset), engine=engine)

    engine = engine_for(variant, job["urls"], job["concurrency"])
    try:
        caption(job["warm_up"], "warm-up", 1)  # imports, connections, a first shard write
        spread = getattr(engine, "servers_per_image", None)
        if spread is not None:
            spread.clear()
        dataset = load_image_list(job["dataset"])
        start, cpu = time.perf_counter(), time.process_time()
        report = run_captioning(CaptionConfig(out=Path(job["out"]) / "store", engine="openai", progress=False,
                                              num_shards=max(1, len(dataset) // SHARD_IMAGES)),
                                dataset=dataset, engine=engine)  # fmt: skip
        wall, used = time.perf_counter() - start, time.process_time() - cpu
        mean = sum(n * c for n, c in spread.items()) / sum(spread.values()) if spread else None
        return {"rate": report.captions / wall, "cpu_us": 1e6 * used / report.captions, "servers_per_image": mean}
    finally:
        engine.close()


def measure_client(variant: Variant, job: dict) -> dict:
    """Bare chat requests through the variant's HTTP client (its dispatcher), concurrency 64."""
    from vlmkd.caption import GenerationSettings
    from vlmkd.caption.engines.openai.dispatch import Dispatcher, RetryPolicy
    from vlmkd.caption.engines.openai.engine import request_body_parts

    head, middle, tail = request_body_parts("stub-model", GenerationSettings())
    data = Path(job["image"]).read_bytes()
    url = b"data:image/jpeg;base64," + base64.b64encode(data)
    bodies = [b"".join((head, url, middle, json.dumps(f"prompt {k}").encode(), tail)) for k in range(job["count"])]
    if variant.transport == "http11":
        from vlmkd.caption.engines.openai.http11 import Endpoint

        def make() -> Dispatcher:
            return Dispatcher([Endpoint.parse(job["urls"][0])], concurrency=64, headers={}, policy=RetryPolicy(),
                              log=lambda m: None, redact=str)  # fmt: skip
    else:
        from vlmkd.caption.engines.openai.transport import Endpoint, Transport, ssl_context

        def make() -> Dispatcher:
            policy = RetryPolicy()
            transport = Transport(headers={"content-type": "application/json"}, ssl_context=ssl_context(None),
                                  request_timeout_s=policy.request_timeout_s,
                                  connect_timeout_s=policy.connect_timeout_s)  # fmt: skip
            return Dispatcher([Endpoint.parse(job["urls"][0])], transport=transport, concurrency=64, policy=policy,
                              log=lambda m: None, redact=str)  # fmt: skip

    async def send(count: int) -> None:
        dispatcher = make()
        outcomes = await asyncio.gather(*(dispatcher.post("/chat/completions", body) for body in bodies[:count]))
        assert all(o.body["choices"][0]["message"]["content"] == CAPTION for o in outcomes)
        closing = dispatcher.close()
        if asyncio.iscoroutine(closing):
            await closing

    loop = new_loop(variant.loop)
    loop.run_until_complete(send(200))  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    loop.run_until_complete(send(job["count"]))
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    loop.close()
    return {"rate": job["count"] / wall, "cpu_us": 1e6 * used / job["count"], "servers_per_image": None}


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


# ------------------------------------------------------------------------------------------- runs


VARIANTS = [Variant(t, loop) for t in ("http11", "aiohttp") for loop in ("asyncio", "uvloop")]
PER_REQUEST = Variant("aiohttp", "uvloop", "request")


def run_stage(datasets: dict[int, Path], rounds: int, concurrencies: tuple[int, ...], work: Path,
              before: Path) -> list[Result]:  # fmt: skip
    stubs = {count: start_stubs(count) for count in (1, 4)}
    try:
        rows = [Row(v, s, c) for s in (1, 4) for c in concurrencies for v in VARIANTS]
        rows += [Row(PER_REQUEST, 4, c) for c in concurrencies]

        def measure(row: Row) -> dict:
            job = {"kind": "stage", "variant": asdict(row.variant), "urls": stubs[row.servers][1],
                   "concurrency": row.concurrency, "dataset": str(datasets[1 if row.concurrency == 1 else 64]),
                   "warm_up": str(datasets[0]), "out": str(work / "stores")}  # fmt: skip
            shutil.rmtree(work / "stores", ignore_errors=True)
            figures = run_worker(job, before)
            print(f"{row.variant.name:28} servers {row.servers} concurrency {row.concurrency:3}: "
                  f"{figures['rate']:7,.0f} captions/s, {figures['cpu_us']:5.0f} µs CPU",
                  file=sys.stderr, flush=True)  # fmt: skip
            return figures

        measured = interleave({row: (lambda row=row: measure(row)) for row in rows}, rounds=rounds, rotate=True)
        results = []
        for row, figures in measured.items():
            result = Result(row)
            for figure in figures:
                result.rates.add(figure["rate"])
                result.cpu_us.append(figure["cpu_us"])
                if figure["servers_per_image"] is not None:
                    result.servers_per_image.append(figure["servers_per_image"])
            results.append(result)
        return results
    finally:
        for process, _ in stubs.values():
            process.kill()
            process.wait(10)


def run_clients(image: Path, rounds: int, count: int, before: Path) -> dict[str, tuple[Series, list[float]]]:
    process, urls = start_stubs(1)
    try:
        jobs = {v.name: {"kind": "client", "variant": asdict(v), "urls": urls, "image": str(image), "count": count}
                for v in VARIANTS}  # fmt: skip
        measured = interleave({name: (lambda job=job: run_worker(job, before)) for name, job in jobs.items()},
                              rounds=rounds, rotate=True)  # fmt: skip
        return {name: (rate_series(f["rate"] for f in figures), [f["cpu_us"] for f in figures])
                for name, figures in measured.items()}  # fmt: skip
    finally:
        process.kill()
        process.wait(10)


# ------------------------------------------------------------------------------------------- report


def _find(results: list[Result], variant: Variant, servers: int, concurrency: int) -> Result | None:
    return next((r for r in results if r.row == Row(variant, servers, concurrency)), None)


def stage_table(results: list[Result]) -> str:
    header = ["client", "stub servers", "concurrency", "captions/s best", "captions/s median",
              "client CPU µs/caption (median)", "CPU vs http11 (same loop)", "servers per image"]  # fmt: skip
    rows = []
    for r in sorted(results, key=lambda r: (r.row.servers, r.row.concurrency, r.row.variant.name)):
        cpu = statistics.median(r.cpu_us)
        base = _find(results, Variant("http11", r.row.variant.loop), r.row.servers, r.row.concurrency)
        ratio = f"{cpu / statistics.median(base.cpu_us):.2f}x" if base and r.row.variant.transport != "http11" else ""
        spread = f"{statistics.median(r.servers_per_image):.2f}" if r.servers_per_image else "-"
        rows.append([r.row.variant.name, r.row.servers, r.row.concurrency, f"{r.rates.best:,.0f}",
                     f"{r.rates.median:,.0f}", f"{cpu:.0f}", ratio, spread])  # fmt: skip
    return markdown_table(header, rows)


def client_table(results: dict[str, tuple[Series, list[float]]]) -> str:
    header = ["HTTP client (bare chat requests, concurrency 64)", "requests/s best", "requests/s median",
              "client CPU µs/request (median)"]  # fmt: skip
    rows = [[name, f"{rates.best:,.0f}", f"{rates.median:,.0f}", f"{statistics.median(cpu):.0f}"]
            for name, (rates, cpu) in results.items()]  # fmt: skip
    return markdown_table(header, rows)


def verdict(results: list[Result]) -> str:
    """The target at concurrency 64, what the switch cost in CPU, and what routing by image did."""
    parts = []
    for loop in ("uvloop", "asyncio"):
        rows = [_find(results, Variant("aiohttp", loop), s, 64) for s in (1, 4)]
        rates = ", ".join(f"{r.rates.median:,.0f} ({r.row.servers} server{'s' * (r.row.servers > 1)})" for r in rows)
        capacity = min(1e6 / statistics.median(r.cpu_us) for r in rows)
        met = all(r.rates.median >= TARGET_RATE for r in rows)
        parts.append(f"aiohttp with {loop} at concurrency 64: {rates} captions/s by median (target >= "
                     f"{TARGET_RATE:,.0f}: {'met' if met else 'NOT met'} on this shared machine); its CPU per caption "
                     f"allows {capacity:,.0f} captions per second of one core.")  # fmt: skip
    for loop in ("uvloop", "asyncio"):
        after = [statistics.median(_find(results, Variant("aiohttp", loop), s, 64).cpu_us) for s in (1, 4)]
        before = [statistics.median(_find(results, Variant("http11", loop), s, 64).cpu_us) for s in (1, 4)]
        extra = [a - b for a, b in zip(after, before, strict=True)]
        cost = max(extra)
        parts.append(f"The switch from http11 to aiohttp ({loop}) costs {min(extra):+.0f} to {cost:+.0f} µs of client "
                     f"CPU per caption at concurrency 64, i.e. {cost * INATURALIST_CAPTIONS / 1e6:,.0f} CPU-seconds "
                     f"over iNaturalist 2018's 2.2M captions at most.")  # fmt: skip
    routed, spread = _find(results, Variant("aiohttp", "uvloop"), 4, 64), _find(results, PER_REQUEST, 4, 64)
    parts.append(f"Routing by image against 4 servers at concurrency 64: {routed.rates.median:,.0f} captions/s and "
                 f"{statistics.median(routed.servers_per_image):.2f} servers per image, against "
                 f"{spread.rates.median:,.0f} captions/s and {statistics.median(spread.servers_per_image):.2f} "
                 "servers per image when every request goes to the least busy server.")  # fmt: skip
    return " ".join(parts)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--images", type=int, default=1024, help="images per run at concurrency 64 and 256")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrencies", type=int, nargs="+", default=[1, 64, 256],
                        help="stage rows to run (other than the default: printed only, nothing written)")  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--before-tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.before_tree)))
        return
    images, rounds = (64, 1) if args.quick else (args.images, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="vlmkd-bench-openai-"))
    try:
        before = extract_before(work / "before")
        datasets = {64: make_images(work / "data", images), 1: make_images(work / "data-small", max(images // 4, 16)),
                    0: make_images(work / "data-warm-up", 16)}  # fmt: skip
        stage = run_stage(datasets, rounds, tuple(args.concurrencies), work, before)
        clients = run_clients(work / "data" / "0" / "000000.jpg", rounds, 400 if args.quick else 2000, before)
        load = load_average()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = "\n".join([
        "# Captioning through OpenAI-compatible servers: what one client process sustains",
        "",
        f"{images} random {IMAGE_SIZE} px JPEGs (sent as they are; {max(images // 4, 16)} at concurrency 1) x 5 "
        f"prompts per run, shards of {SHARD_IMAGES} images, `--batch-size 16`; the servers are the loopback stub in "
        f"its own process, answering at once. Each row is a fresh worker process; {rounds} interleaved rounds, each "
        f"run after a warm-up run. `http11` is the engine of revision {BEFORE[:10]} (before the switch), "
        f"extracted from git into a temporary folder. {machine()}; load average {load} at the end (the machine is "
        "shared with other jobs: rates are lower and noisier than on a quiet one).",
        "",
        "## The whole stage (`run_captioning`, engine `openai`)",
        "",
        stage_table(stage),
        "",
        verdict(stage),
        "",
        "## HTTP clients alone (1 stub server, the same JSON bodies)",
        "",
        client_table(clients),
        "",
        "Reproduce: `python benchmarks/bench_openai_captioning.py`.",
    ])  # fmt: skip
    print(report)
    if not args.quick and args.concurrencies == [1, 64, 256]:
        records = [{"row": asdict(r.row), "captions_per_s": r.rates.values, "cpu_us": r.cpu_us,
                    "servers_per_image": r.servers_per_image} for r in stage]  # fmt: skip
        write_report(RESULTS, report, records)


if __name__ == "__main__":
    main()
