"""Caption engines: the hf engine on tiny random-init BLIP and LLaVA loaded back by path, and the trt engine's
request building and output handling against a stand-in `tensorrt_llm` (the real package needs a GPU)."""

from __future__ import annotations

import shutil
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from vlmkd.caption import GenerationSettings, ImageRequest, load_engine
from vlmkd.caption.engines import check_engine, model_fingerprint
from vlmkd.caption.engines.trt import TRTEngine, sampling_kwargs
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
    with pytest.raises(InputError, match="cannot load"):
        load_engine("hf", tmp_path, SETTINGS)


# ------------------------------------------------------------------------------------------------- trt


def test_trt_engine_without_tensorrt_llm_is_a_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match="pip install tensorrt-llm"):
        check_engine("trt")


@dataclass
class _Completion:
    text: str


@dataclass
class _RequestOutput:
    outputs: list[_Completion]


def fake_tensorrt_llm(monkeypatch) -> dict:
    """Install a stand-in `tensorrt_llm` with the LLM-API surface the engine uses; return the call log."""
    log: dict = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            log["sampling"] = kwargs

    class KvCacheConfig:
        def __init__(self, **kwargs):
            log["kv_cache"] = kwargs

    class LLM:
        def __init__(self, **kwargs):
            log["llm"] = kwargs
            self.tokenizer = "tok"

        def generate(self, inputs, sampling_params, use_tqdm=True):
            log["generate"] = inputs
            return [_RequestOutput([_Completion(f"  caption of {item['prompt']} \n")]) for item in inputs]

        def shutdown(self):
            log["shutdown"] = True

    def default_multimodal_input_loader(**kwargs):
        log["loader"] = kwargs
        return [
            {"prompt": f"<image>{prompt}", "multi_modal_data": {"image": media}}
            for prompt, media in zip(kwargs["prompts"], kwargs["media"], strict=True)
        ]

    root = types.ModuleType("tensorrt_llm")
    root.LLM, root.SamplingParams = LLM, SamplingParams
    llmapi = types.ModuleType("tensorrt_llm.llmapi")
    llmapi.KvCacheConfig = KvCacheConfig
    inputs = types.ModuleType("tensorrt_llm.inputs")
    inputs.default_multimodal_input_loader = default_multimodal_input_loader
    for name, module in {"tensorrt_llm": root, "tensorrt_llm.llmapi": llmapi, "tensorrt_llm.inputs": inputs}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return log


def test_trt_engine_builds_multimodal_requests_and_reads_outputs_in_order(monkeypatch, tiny_models):
    log = fake_tensorrt_llm(monkeypatch)
    engine = load_engine("trt", tiny_models["llava"], GenerationSettings(max_new_tokens=9, dtype="bfloat16"))
    pictures = images(3)
    captions = engine.caption([ImageRequest(image, (f"prompt {k}", "again")) for k, image in enumerate(pictures)])
    assert captions == [[f"caption of <image>prompt {k}", "caption of <image>again"] for k in range(3)]
    loader = log["loader"]
    assert loader["model_type"] == "llava" and loader["modality"] == "image"
    assert loader["prompts"] == ["prompt 0", "again", "prompt 1", "again", "prompt 2", "again"]
    assert [media[0] for media in loader["media"]] == [image for image in pictures for _ in range(2)]
    assert loader["model_dir"] == str(tiny_models["llava"]) and loader["tokenizer"] == "tok"
    assert log["llm"]["model"] == str(tiny_models["llava"]) and log["llm"]["dtype"] == "bfloat16"
    assert log["llm"]["trust_remote_code"] is False
    assert log["kv_cache"]["enable_block_reuse"] is False
    assert log["sampling"] == {"max_tokens": 9, "n": 1}  # greedy: no top-k/top-p/temperature
    assert engine.caption([]) == []
    engine.close()
    assert log["shutdown"]


def test_trt_sampling_and_beam_settings_map_to_sampling_params():
    sampled = sampling_kwargs(GenerationSettings(max_new_tokens=4, do_sample=True, temperature=0.7, top_p=0.9, seed=5))
    assert sampled == {"max_tokens": 4, "n": 1, "temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 5}
    beams = sampling_kwargs(GenerationSettings(num_beams=3))
    assert beams["use_beam_search"] is True and beams["best_of"] == 3


def test_trt_engine_needs_a_checkpoint_directory(monkeypatch, tmp_path):
    fake_tensorrt_llm(monkeypatch)
    with pytest.raises(InputError, match="config.json"):
        TRTEngine(tmp_path, SETTINGS)


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
