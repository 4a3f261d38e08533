"""`--engine trt` against the strict TensorRT-LLM stand-in (tests/stand_ins/tensorrt_llm: the real signatures, CPU
behaviour; the real package needs a GPU): the documented input loader with only arguments that exist, prompt
texts equal to the loader's own, generate_async with many captions in flight, block reuse per the support
matrix, no fp32, the torchrun GPU pin, and whole `vlmkd caption --engine trt` runs (store, resume, failures)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vlmkd
from vlmkd.caption import GenerationSettings, load_engine
from vlmkd.caption.engines import check_engine
from vlmkd.caption.engines.base import ImageRequest
from vlmkd.caption.engines.trt import kv_cache_reuse_for
from vlmkd.caption.engines.trt_runtime import pin_rank_gpu
from vlmkd.caption.store import CaptionStore
from vlmkd.errors import InputError, MissingDependencyError
from vlmkd.testing.tiny_models import build_tiny_llava_next

STAND_INS = Path(__file__).with_name("stand_ins")
BF16 = GenerationSettings(max_new_tokens=5, dtype="bfloat16")
PROMPTS = ("Describe this image in detail.", "What is it?", "Describe the shape of the {label}.")


@pytest.fixture(scope="module")
def llava_next(tmp_path_factory):
    return build_tiny_llava_next(tmp_path_factory.mktemp("llava_next") / "model")


def _forget_tensorrt_llm() -> None:
    for name in [name for name in sys.modules if name == "tensorrt_llm" or name.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@pytest.fixture
def standin(monkeypatch):
    """The stand-in importable as `tensorrt_llm` for the test."""
    monkeypatch.syspath_prepend(str(STAND_INS))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    _forget_tensorrt_llm()
    yield
    _forget_tensorrt_llm()


def pictures(count: int, wide: tuple[int, ...] = ()) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    shapes = [(32, 64 if k in wide else 32, 3) for k in range(count)]
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in shapes]


def requests_for(images: list[Image.Image]) -> list[ImageRequest]:
    return [ImageRequest(image, tuple(p.format(label=f"class {k}") for p in PROMPTS)) for k, image in enumerate(images)]


def test_without_tensorrt_llm_the_engine_is_a_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match="pip install tensorrt-llm"):
        check_engine("trt")


def test_the_stand_in_refuses_arguments_tensorrt_llm_does_not_take(standin, llava_next):
    from tensorrt_llm import LLM, SamplingParams
    from tensorrt_llm.inputs import default_multimodal_input_loader
    from tensorrt_llm.llmapi import KvCacheConfig

    llm = LLM(model=str(llava_next))
    common = {"tokenizer": llm.tokenizer, "model_dir": str(llava_next), "model_type": "llava_next",
              "modality": "image", "prompts": ["hi"], "media": [[pictures(1)[0]]]}  # fmt: skip
    with pytest.raises(TypeError, match="trust_remote_code"):  # what vlmkd passed before: dead on the first batch
        default_multimodal_input_loader(**common, trust_remote_code=False)
    with pytest.raises(TypeError):
        default_multimodal_input_loader("tok", **{k: v for k, v in common.items() if k != "tokenizer"})  # keyword-only
    for build in (lambda: LLM(model=str(llava_next), max_num_tokenz=8), lambda: SamplingParams(max_new_tokens=4),
                  lambda: KvCacheConfig(block_reuse=True)):  # fmt: skip
        with pytest.raises(TypeError, match="unexpected keyword"):
            build()
    with pytest.raises(TypeError, match="max_num_tokenz"):  # an engine option passed on to LLM(...) as well
        load_engine("trt", llava_next, BF16, llm_options={"max_num_tokenz": 8})
    llm.shutdown()


def test_captions_equal_those_of_the_loaders_own_inputs_with_one_loader_call(standin, llava_next):
    from tensorrt_llm import LLM
    from tensorrt_llm.inputs import default_multimodal_input_loader

    engine = load_engine("trt", llava_next, BF16)
    requests = requests_for(pictures(5))
    captions = engine.caption(requests[:2]) + engine.caption(requests[2:])
    assert engine.prompt_texts.loader_calls == 1  # the processor is loaded once, not once per batch
    assert engine.prompt_texts.template == ("USER: <image>\n", "\nASSISTANT:")
    # Reference: TensorRT-LLM's documented path, the loader per (image, prompt) and LLM.generate on its output.
    reference = LLM(model=str(llava_next))
    for request, image_captions in zip(requests, captions, strict=True):
        inputs = default_multimodal_input_loader(
            tokenizer=reference.tokenizer, model_dir=str(llava_next), model_type="llava_next", modality="image",
            prompts=list(request.prompts), media=[[request.image]] * len(request.prompts),
        )  # fmt: skip
        outputs = reference.generate(inputs, engine.sampling_params, use_tqdm=False)
        assert image_captions == [output.outputs[0].text.strip() for output in outputs]
        assert len(set(image_captions)) == len(PROMPTS)  # the prompts of one image differ...
    assert len({captions[0][0], captions[1][0]}) == 2  # ...and so do the images
    assert len(captions[0][0].split()) == BF16.max_new_tokens
    reference.shutdown()
    engine.close()


def test_thousands_of_captions_stay_in_flight_while_the_runner_waits_for_none(standin, llava_next, monkeypatch):
    monkeypatch.setenv("VLMKD_TRT_STANDIN_STEP_S", "0.5")  # a slow simulated GPU: submissions pile up
    engine = load_engine("trt", llava_next, BF16)
    assert engine.submit_ahead >= 1000
    start = time.perf_counter()
    futures = [engine.submit(requests_for(pictures(4))) for _ in range(6)]  # 72 captions
    submitted_s = time.perf_counter() - start
    assert max(count for _, count in engine.llm.stats) > 3 * 4 * len(PROMPTS)  # beyond a few batches at once
    assert all(len(future.result()) == 4 for future in futures)
    assert submitted_s < time.perf_counter() - start  # submitting returned before the captions were back
    engine.close()


def test_block_reuse_follows_the_support_matrix_unless_overridden(standin, llava_next):
    assert kv_cache_reuse_for("llava_next") and kv_cache_reuse_for("qwen2_vl") and kv_cache_reuse_for("qwen2_5_vl")
    assert not kv_cache_reuse_for("llava") and not kv_cache_reuse_for("mllama")
    assert kv_cache_reuse_for("llava", True) and not kv_cache_reuse_for("llava_next", False)
    engine = load_engine("trt", llava_next, BF16)
    assert engine.llm.args["kv_cache_config"].enable_block_reuse is True
    assert engine.llm.args["dtype"] == "bfloat16"
    engine.close()
    engine = load_engine("trt", llava_next, BF16, kv_cache_reuse=False)
    assert engine.llm.args["kv_cache_config"].enable_block_reuse is False
    engine.close()


def test_float32_is_refused_and_code_shipped_with_the_model_needs_the_flag(standin, llava_next, tmp_path):
    with pytest.raises(InputError, match="cannot run float32"):
        load_engine("trt", llava_next, GenerationSettings(dtype="float32"))
    import shutil

    model = shutil.copytree(llava_next, tmp_path / "custom")
    config = (model / "config.json").read_text()
    (model / "config.json").write_text(config.replace("{", '{"auto_map": {"AutoConfig": "x.Y"},', 1))
    with pytest.raises(InputError, match=r"config.json: the model ships its own code.*--trust-remote-code"):
        load_engine("trt", model, BF16)


def test_each_torchrun_rank_pins_its_own_gpu_or_the_engine_refuses(monkeypatch):
    assert pin_rank_gpu({}) is None
    assert pin_rank_gpu({"LOCAL_RANK": "1"}) == "1"
    assert pin_rank_gpu({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "4,5"}) == "5"
    assert pin_rank_gpu({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "3"}) == "3"  # the launcher pinned it
    with pytest.raises(InputError, match="lists 2 GPUs"):
        pin_rank_gpu({"LOCAL_RANK": "2", "CUDA_VISIBLE_DEVICES": "0,1"})
    monkeypatch.setitem(sys.modules, "tensorrt_llm", object())  # started before vlmkd could pin
    with pytest.raises(InputError, match="LOCAL_RANK=1: TensorRT-LLM or CUDA started"):
        pin_rank_gpu({"LOCAL_RANK": "1"})


def _dataset(root: Path, wide: tuple[int, ...]) -> Path:
    """Six images of three classes (`wide` ones 64 x 32: more image tokens), one unreadable file listed too."""
    lines = []
    for k, image in enumerate(pictures(6, wide)):
        image.save(root / f"{k}.png")
        lines.append(f"{k}.png {k % 3}")
    (root / "broken.png").write_bytes(b"not a png")
    (root / "train.txt").write_text("\n".join([*lines, "broken.png 0"]) + "\n")
    (root / "classnames.txt").write_text("zero\none\ntwo\n")
    return root / "train.txt"


def _caption_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(STAND_INS)}
    env.pop("LOCAL_RANK", None)
    return subprocess.run([sys.executable, "-m", "vlmkd", "caption", *args, "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_a_whole_caption_run_writes_resumes_and_records_failures(llava_next, tmp_path):
    listing = _dataset(tmp_path, wide=())
    common = [str(listing), "--engine", "trt", "--model", str(llava_next), "--max-new-tokens", "4", "--num-shards", "3"]
    part = _caption_cli(*common, "--out", str(tmp_path / "store"), "--shard-index", "1")
    assert part.returncode == 0, part.stderr
    assert CaptionStore.open(tmp_path / "store").missing_shards() == [0, 2]
    rest = _caption_cli(*common, "--out", str(tmp_path / "store"))
    assert rest.returncode == 0, rest.stderr
    whole = _caption_cli(*common, "--out", str(tmp_path / "fresh"))
    assert whole.returncode == 0, whole.stderr
    resumed, fresh = CaptionStore.open(tmp_path / "store"), CaptionStore.open(tmp_path / "fresh")
    assert resumed.read_table().equals(fresh.read_table())  # resuming gives the uninterrupted store
    assert resumed.read_table().num_rows == 6 * 5  # six readable images, the default five prompts
    assert resumed.manifest["generation"]["dtype"] == "auto" and resumed.manifest["engine"] == "trt"
    assert [Path(path).name for _, path, _ in resumed.failed_images()] == ["broken.png"]


def test_kv_cache_reuse_is_a_flag_of_the_trt_engine_only(llava_next, tmp_path):
    listing = _dataset(tmp_path, wide=())
    misplaced = _caption_cli(str(listing), "--model", str(llava_next), "--out", str(tmp_path / "s"),
                             "--kv-cache-reuse", "off")  # fmt: skip
    assert misplaced.returncode == 2 and "--kv-cache-reuse is for --engine trt" in misplaced.stderr
    assert not (tmp_path / "s").exists()


def test_an_image_tensorrt_llm_refuses_is_skipped_and_recorded(standin, llava_next, tmp_path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(llava_next)

    def length(image: Image.Image) -> int:
        text = "USER: <image>\nDescribe this image in detail.\nASSISTANT:"
        return processor(images=[image], text=[text], return_tensors="pt")["input_ids"].shape[1]

    square, wide = pictures(2, wide=(1,))
    assert length(wide) > length(square)  # a wide image takes more anyres tiles
    prompts = tmp_path / "one.yaml"
    prompts.write_text("name: one\nprompts:\n  - id: G\n    template: Describe this image in detail.\n")
    store = vlmkd.caption(
        dataset=_dataset(tmp_path, wide=(4,)), model=llava_next, out=tmp_path / "store", engine="trt",
        dtype="auto", max_new_tokens=3, prompts=prompts, progress=False,
        engine_options={"llm_options": {"max_num_tokens": length(square)}},
    ).store  # fmt: skip
    reasons = {Path(path).name: reason for _, path, reason in store.failed_images()}
    assert set(reasons) == {"4.png", "broken.png"}
    assert "TensorRT-LLM: The sum of prompt length" in reasons["4.png"] and "max_num_tokens" in reasons["4.png"]
    assert store.read_table().num_rows == 5
