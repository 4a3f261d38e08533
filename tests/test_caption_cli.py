"""`vlmkd caption` / `vlmkd caption-info` through the real dispatcher: summaries, skipped images, user errors."""

from __future__ import annotations

import json
import sys

import pytest

from vlmkd.caption import CaptionStore
from vlmkd.cli import main
from vlmkd.testing import build_tiny_llava

TWO_PROMPTS = "prompts:\n  - {id: G, template: Describe this image.}\n  - {id: T2, template: 'Describe the {label}.'}\n"


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "model")


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(TWO_PROMPTS)
    return path


def caption(dataset, model, out, *extra):
    argv = ["caption", str(dataset), "--model", str(model), "--out", str(out), "--max-new-tokens", "3", *extra]
    return main(argv)


def test_caption_then_info_report_the_store_and_the_skipped_images(tiny_dataset, tmp_path, llava, prompts, capsys):
    tiny_dataset.path(5).write_bytes(b"")
    out = tmp_path / "store"
    assert caption(tiny_dataset.source, llava, out, "--prompts", str(prompts), "--num-shards", "2") == 0
    captured = capsys.readouterr()
    assert f"captioned {len(tiny_dataset)} images x 2 prompts -> {2 * (len(tiny_dataset) - 1)} captions" in captured.out
    assert "store complete" in captured.out
    assert "1 unreadable images skipped" in captured.out and tiny_dataset.samples[5].path in captured.out
    assert "empty file" in captured.err  # reported as it happened, the run went on
    assert "captioning" in captured.err  # the progress bar

    assert caption(tiny_dataset.source, llava, out, "--prompts", str(prompts)) == 0
    assert "nothing to do" in capsys.readouterr().out

    assert main(["caption-info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "2/2 written, complete" in info and "G, T2" in info and tiny_dataset.samples[5].path in info
    assert main(["caption-info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["captions"] == 2 * (len(tiny_dataset) - 1) and summary["missing_shards"] == []
    assert summary["fingerprint"] == CaptionStore.open(out).fingerprint()
    assert [item["image_index"] for item in summary["failed"]] == [5]


def test_image_folder_datasets_and_shard_index(tiny_dataset, tmp_path, llava, prompts, capsys):
    folder = tiny_dataset.root / "images"  # ImageFolder layout: one subdirectory per class
    out = tmp_path / "store"
    assert caption(folder, llava, out, "--prompts", str(prompts), "--num-shards", "3", "--shard-index", "1") == 0
    assert "2 of 3 shards still missing" in capsys.readouterr().out
    assert CaptionStore.open(out).missing_shards() == [0, 2]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompts", "nope.yaml"], "prompt file not found"),
        (["--engine", "trt"], "needs TensorRT-LLM"),
        (["--num-shards", "99"], "num_shards must be in"),
        (["--batch-size", "0"], "batch_size must be at least 1; got 0"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tiny_dataset, tmp_path, llava, capsys, monkeypatch, extra, message):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    assert caption(tiny_dataset.source, llava, tmp_path / "store", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "store" / "manifest.json").exists()


def test_info_on_a_non_store_is_a_user_error(tmp_path, capsys):
    assert main(["caption-info", str(tmp_path)]) == 2
    assert "not a caption store" in capsys.readouterr().err
