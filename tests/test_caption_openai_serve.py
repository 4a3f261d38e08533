"""`--engine openai` against a real OpenAI-compatible server: `transformers serve` in a subprocess on 127.0.0.1,
serving a tiny random LLaVA saved by the test. Its captions must equal the in-process `hf` engine's greedy ones."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import vlmkd
from vlmkd.caption.engines.openai.dispatch import RetryPolicy
from vlmkd.testing import build_tiny_llava

pytestmark = pytest.mark.slow

START_LIMIT_S = 180.0  # loading transformers and the model on a busy 2-core machine
MAX_NEW_TOKENS = 6


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    """Poll GET /health until it answers 200, the process dies, or START_LIMIT_S passes."""
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"transformers serve not healthy after {START_LIMIT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served_llava(tmp_path_factory):
    """(model directory, base URL) of `transformers serve` preloading a tiny LLaVA; killed by PID afterwards."""
    work = tmp_path_factory.mktemp("serve")
    model = build_tiny_llava(work / "llava")
    port = free_port()
    log = work / "serve.log"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                        "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--dtype", "float32"]  # fmt: skip
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=work, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, log)
        yield model, f"http://127.0.0.1:{port}/v1"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and anything it started
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(15)


def test_captions_from_transformers_serve_equal_the_hf_engines_greedy_captions(served_llava, tiny_dataset, tmp_path):
    model, url = served_llava
    policy = RetryPolicy(backoff_base_s=0.05, request_timeout_s=60)
    options = {"api_bases": [url], "concurrency": 4, "policy": policy}
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "num_shards": 2, "progress": False, "engine_options": options}
    report = vlmkd.caption(dataset=tiny_dataset, out=tmp_path / "served", engine="openai", **settings)
    served = report.store.read_table().to_pydict()
    reference = vlmkd.caption(dataset=tiny_dataset, model=model, out=tmp_path / "hf", max_new_tokens=MAX_NEW_TOKENS,
                              batch_size=1, progress=False).store.read_table().to_pydict()  # fmt: skip
    n, prompts = len(tiny_dataset), 5
    assert report.failed == [] and len(served["caption"]) == n * prompts
    assert served["image_index"] == reference["image_index"] == [i for i in range(n) for _ in range(prompts)]
    assert served["prompt_id"] == reference["prompt_id"]
    assert served["caption"] == reference["caption"]
    assert len(set(reference["caption"])) > 1  # the comparison can tell captions apart
    manifest = report.store.manifest
    assert manifest["engine"] == "openai" and manifest["model_id"] == str(model)  # the id the server reports
