"""Caption engines: the hf engine on tiny random-init BLIP and LLaVA loaded back by path (the trt engine:
tests/test_caption_trt.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from vlmkd.caption import GenerationSettings, ImageRequest, load_engine
from vlmkd.caption.engines import check_engine, model_fingerprint
from vlmkd.errors import InputError, MissingDependencyError
from vlmkd.testing import build_tiny_blip, build_tiny_llava, build_tiny_smolvlm

SETTINGS = GenerationSettings(max_new_tokens=6)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"blip": build_tiny_blip(root / "blip"), "llava": build_tiny_llava(root / "llava")}


def images(count: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (size, size + k, 3), dtype=np.uint8)) for k in range(count)]


MIXED_PROMPTS = ["Describe this image in detail.", "What is it?", "Describe the shape, colour and texture of the two."]


@pytest.mark.parametrize("arch", ["blip", "llava"])
def test_hf_engine_returns_one_string_per_image_and_prompt_deterministically(tiny_models, arch):
    engine = load_engine("hf", tiny_models[arch], SETTINGS)
    requests = [ImageRequest(image, tuple(MIXED_PROMPTS[k % 3 :])) for k, image in enumerate(images(5))]
    first = engine.caption(requests)
    assert [len(captions) for captions in first] == [3, 2, 1, 3, 2]
    assert all(isinstance(text, str) for captions in first for text in captions)
    assert engine.caption(requests) == first
    assert engine.caption([]) == []


def test_llava_prompts_go_through_the_chat_template(tiny_models):
    engine = load_engine("hf", tiny_models["llava"], SETTINGS)
    text = engine.model_text("What is it?")
    assert text.startswith("USER: <image>") and text.endswith("ASSISTANT:") and "What is it?" in text


def test_blip_has_no_chat_template_and_its_echoed_prompt_is_stripped(tiny_models):
    engine = load_engine("hf", tiny_models["blip"], SETTINGS)
    assert engine.model_text("What is it?") == "What is it?"
    for (caption,) in engine.caption([ImageRequest(image, ("describe this image in detail.",)) for image in images(3)]):
        assert not caption.startswith("describe this image")


def test_generation_settings_record_only_what_changes_captions():
    greedy = GenerationSettings().record()
    assert greedy == {"max_new_tokens": 32, "do_sample": False, "num_beams": 1, "dtype": "float32"}
    assert GenerationSettings(do_sample=True, seed=3).record()["seed"] == 3
    with pytest.raises(InputError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)


def test_model_fingerprint_follows_the_weights_not_the_path(tiny_models, tmp_path):
    moved = shutil.copytree(tiny_models["blip"], tmp_path / "elsewhere")
    other_seed = build_tiny_blip(tmp_path / "seed1", seed=1)
    assert model_fingerprint(moved) == model_fingerprint(tiny_models["blip"])
    assert model_fingerprint(other_seed) != model_fingerprint(tiny_models["blip"])
    assert model_fingerprint("org/some-hub-id") == "org/some-hub-id"


def test_unknown_engine_and_bad_model_directory_are_user_errors(tmp_path):
    with pytest.raises(InputError, match=r"engine must be one of hf, trt.*, got 'vllm'"):
        check_engine("vllm")
    with pytest.raises(InputError, match="not a model folder"):
        load_engine("hf", tmp_path, SETTINGS)


def test_a_model_path_that_is_not_a_model_folder_is_one_line_saying_so(tmp_path, tiny_dataset, capsys):
    from vlmkd.cli import main

    (tmp_path / "weights.bin").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "missing"): "directory not found",  # once transformers' "Repo id must be in the form..."
        "runs/models/llava": "directory not found",
        "./llava": "directory not found",
        str(tmp_path / "weights.bin"): "not a directory",
        str(tmp_path / "empty"): "not a model folder (no config.json in it)",
        "nobody/no-such-model": "cannot load",  # shaped like a hub id: looked for in the local Hugging Face cache
    }
    for model, problem in cases.items():
        out = tmp_path / "store"
        assert main(["caption", str(tiny_dataset.source), "--model", model, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"vlmkd caption: error: {model}: {problem}"), err
        assert not out.exists()


# ------------------------------------------------------------------------------------- SmolVLM2


@pytest.fixture(scope="module")
def smolvlm(tmp_path_factory):
    """A saved tiny SmolVLM2. Its processor insists on `num2words` (used only to word video frame counts):
    where the package is absent, a stand-in is put in its place while the module's tests run."""
    import transformers.models.smolvlm.processing_smolvlm as processing

    patch = pytest.MonkeyPatch()
    if processing.num2words is None:
        patch.setattr(processing, "num2words", str)
    yield build_tiny_smolvlm(tmp_path_factory.mktemp("smolvlm") / "model")
    patch.undo()


def test_smolvlm2_captions_batches_of_several_requests_as_it_does_one_at_a_time(smolvlm):
    engine = load_engine("hf", smolvlm, SETTINGS)
    requests = [ImageRequest(image, tuple(MIXED_PROMPTS)) for image in images(4)]
    batched = engine.caption(requests)  # failed: "Found [1, 1, 1, 1] <image> tokens and [4] images per sample"
    assert batched == [engine.caption([request])[0] for request in requests]


def test_processor_inputs_are_the_same_with_one_image_list_per_request(tiny_models):
    """The per-request image lists SmolVLM2 needs change nothing for BLIP and LLaVA."""
    import torch

    for arch in ("blip", "llava"):
        engine = load_engine("hf", tiny_models[arch], SETTINGS)
        texts = [engine.model_text(prompt) for prompt in MIXED_PROMPTS]
        flat = engine.processor(images=images(3), text=texts, return_tensors="pt", padding="longest")
        nested = engine.processor(images=[[i] for i in images(3)], text=texts, return_tensors="pt", padding="longest")
        assert set(flat) == set(nested) and all(torch.equal(flat[k], nested[k]) for k in flat), arch


def test_a_processor_needing_a_missing_package_is_one_line_naming_it(smolvlm, monkeypatch, tiny_dataset, capsys):
    import transformers.models.smolvlm.processing_smolvlm as processing

    from vlmkd.cli import main

    monkeypatch.setattr(processing, "num2words", None)  # as on a machine without the package
    with pytest.raises(MissingDependencyError, match="needs the package 'num2words'.*pip install num2words"):
        load_engine("hf", smolvlm, SETTINGS)
    out = smolvlm.parent / "store"
    assert main(["caption", str(tiny_dataset.source), "--model", str(smolvlm), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num2words" in err[0] and err[0].startswith("vlmkd caption: error:")
