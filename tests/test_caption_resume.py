"""A caption store written before the hf engine shared each image's work among its prompts resumes unchanged:
same manifest identity, and the shards captioned again hold the captions the old code wrote (the store in
tests/fixtures/store_before_sharing/ was made by vlmkd at commit 636d479, see make_store_before_sharing.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import transformers

import vlmkd
from vlmkd.caption import CaptionStore

FIXTURE = Path(__file__).parent / "fixtures" / "store_before_sharing"


@pytest.mark.skipif(
    int(transformers.__version__.split(".")[0]) < 5,
    reason="the store was made under transformers 5, whose image processors resize slightly differently from 4's",
)
def test_a_store_captioned_before_image_sharing_resumes_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(shutil.copytree(FIXTURE, tmp_path / "copy"))  # the store names its model and data relatively
    old = CaptionStore.open(Path("store"))
    manifest, captions, fingerprint = old.manifest, old.read_table(), old.fingerprint()
    for shard in (0, 2):
        old.shard_path(shard).unlink()
    report = vlmkd.caption(dataset="data/train.txt", model="model", out="store", max_new_tokens=8, progress=False)
    assert report.shards_written == [0, 2] and report.shards_already_done == [1]
    assert report.store.manifest == manifest and report.store.fingerprint() == fingerprint
    assert report.store.read_table().equals(captions)
