"""Every prompt of an image goes to one server, first prompt first (so a server's prefix cache can reuse the
image's prefill): measured on the stub servers' side, by which server saw each image's bytes and in what order,
with the engine's own count beside it; stable across runs, failing over when a server dies or is saturated."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import defaultdict

import numpy as np
import pytest
from _openai_cases import FAST, PROMPTS, dispatcher_for, expected_rows, store_rows, stub_fleet
from PIL import Image

import vlmkd
from vlmkd.caption import GenerationSettings
from vlmkd.caption.engines.openai.engine import OpenAIEngine
from vlmkd.caption.engines.openai.routing import image_key, saturation
from vlmkd.data import load_image_list
from vlmkd.testing.openai_stub import Delay, Hang, echo, request_image_bytes, request_prompt

FIRST_PROMPT = PROMPTS.prompts[0].template.split("{")[0]  # what the first prompt's rendered text starts with


@pytest.fixture
def servers():
    with stub_fleet() as make:
        yield make


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """60 distinct small JPEGs in 3 classes: enough images for routing's statistics."""
    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    lines = []
    for k in range(60):
        path = folder / f"img/{k % 3}/{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path, quality=90)
        lines.append(f"img/{k % 3}/{k}.jpg {k % 3}")
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    (folder / "classnames.txt").write_text("a\nb\nc\n")
    return load_image_list(folder / "train.txt")


class Witness:
    """A stub handler that records which server saw each image (by its bytes), and whether any of an image's
    other prompts arrived before its first prompt had been answered."""

    def __init__(self, then=echo) -> None:
        self.then = then
        self.servers_of: dict[str, set[int]] = defaultdict(set)
        self.first_answered: set[str] = set()
        self.early: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, payload, server):
        image = hashlib.sha256(request_image_bytes(payload)).hexdigest()
        first = request_prompt(payload).startswith(FIRST_PROMPT)
        with self.lock:
            self.servers_of[image].add(server.port)
            if first:
                self.first_answered.add(image)  # the answer leaves right after this call
            elif image not in self.first_answered:
                self.early.append(image)
        return self.then(payload, server)


def engine_for(fleet, concurrency=8, policy=FAST, log=None) -> OpenAIEngine:
    return OpenAIEngine(None, GenerationSettings(max_new_tokens=8), api_bases=[s.url for s in fleet],
                        concurrency=concurrency, policy=policy, log=log or (lambda message: None))  # fmt: skip


def caption_with(engine, dataset, out):
    try:
        return vlmkd.caption(dataset=dataset, out=out, engine=engine, progress=False, batch_size=8)
    finally:
        engine.close()


def test_a_healthy_fleet_captions_each_image_on_one_server_first_prompt_first(many_images, tmp_path, servers):
    witness = Witness(then=lambda payload, server: Delay(0.002 * (server.port % 3), echo(payload, server)))
    fleet = servers(4, witness)
    engine = engine_for(fleet, concurrency=16)
    report = caption_with(engine, many_images, tmp_path / "s")
    assert store_rows(report.store) == expected_rows(many_images)
    per_image = [len(ports) for ports in witness.servers_of.values()]
    assert len(per_image) == len(many_images) and set(per_image) == {1}  # measured by the servers
    assert engine.mean_servers_per_image == 1.0 and engine.servers_per_image == {1: len(many_images)}
    assert witness.early == []  # no prompt of an image went out before its first prompt was answered
    images_per_server = [sum(port in ports for ports in witness.servers_of.values()) for port in
                         (s.port for s in fleet)]  # fmt: skip
    assert min(images_per_server) >= 5, images_per_server  # every server carries its share


def test_each_image_goes_to_the_same_server_in_every_run(many_images, tmp_path, servers):
    """Where no server is saturated (one request at a time), every image is on the first server of its ranking,
    and so on the same server in every run, whatever order the servers are given in."""
    witness = Witness()
    fleet = servers(3, witness)
    engine = engine_for(fleet, concurrency=1)
    caption_with(engine, many_images, tmp_path / "first")
    first = dict(witness.servers_of)
    assert engine.images_on_first_choice == len(many_images)
    assert sorted(sum(s.port in ports for ports in first.values()) for s in fleet)[0] >= 10  # spread over all
    witness.servers_of.clear()
    caption_with(engine_for(list(reversed(fleet)), concurrency=1), many_images, tmp_path / "second")
    assert dict(witness.servers_of) == first


def test_images_move_to_another_server_when_theirs_dies(many_images, tmp_path, servers):
    count = {"n": 0}
    lock = threading.Lock()

    def dies_after_twenty(payload, server):
        with lock:
            count["n"] += 1
            if count["n"] == 20:
                threading.Thread(target=server.stop).start()
                return Hang()
        return Delay(0.002, echo(payload, server))

    doomed_witness, witness = Witness(then=dies_after_twenty), Witness(then=lambda p, s: Delay(0.002, echo(p, s)))
    doomed, others = servers(1, doomed_witness), servers(2, witness)
    engine = engine_for([*doomed, *others])
    report = caption_with(engine, many_images, tmp_path / "s")
    assert store_rows(report.store) == expected_rows(many_images)
    moved = set(doomed_witness.servers_of) & set(witness.servers_of)
    assert moved  # images of the dead server finished elsewhere
    assert all(len(witness.servers_of[image]) == 1 for image in witness.servers_of)  # on one other server each
    assert 1.0 < engine.mean_servers_per_image < 1.5 and max(engine.servers_per_image) <= 2


def test_an_image_takes_the_first_server_of_its_ranking_that_is_ready_and_not_saturated():
    dispatcher = dispatcher_for([f"http://127.0.0.1:{9000 + k}/v1" for k in range(4)], concurrency=16)
    servers = dispatcher.servers
    route = dispatcher.route(image_key(b"images/0/7.png"))
    assert route.ranking == dispatcher.route(image_key(b"images/0/7.png")).ranking  # stable
    assert sorted(route.ranking) == [0, 1, 2, 3]
    first, second = (servers[k] for k in route.ranking[:2])
    assert choose(dispatcher, route) is first and route.pinned == first.index

    other = dispatcher.route(image_key(b"images/1/3.png"))  # a new image while `first` is saturated:
    first.outstanding, second.outstanding = 6, 1  # 7 in flight: saturated from ceil(1.25 * 8 / 4) = 3
    assert saturation(7, 4) == 3
    expected = next(servers[k] for k in other.ranking if servers[k].outstanding < 3)
    assert choose(dispatcher, other) is expected and other.pinned == expected.index
    assert choose(dispatcher, route) is first  # an image already pinned stays, saturated or not

    first.suspended_until = float("inf")  # its server pauses after a failure: the image moves and stays moved
    moved = choose(dispatcher, route)
    assert moved is not first and route.pinned == moved.index
    first.suspended_until = 0.0
    assert choose(dispatcher, route) is moved
    moved.dead = "gone"
    assert choose(dispatcher, route) is not moved and route.pinned != moved.index


def choose(dispatcher, route):
    return asyncio.run(dispatcher._choose(None, route))
