"""The hf engine captions each image once for all its prompts: the same greedy captions as prompt by prompt, on
every architecture it supports, with one vision pass per image and, where it shares the prefix, far fewer
prefill tokens. Tiny random models of the real transformers classes; images of different sizes in one batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkd.caption.engines import GenerationSettings, ImageRequest, load_engine
from vlmkd.caption.engines.hf_sharing import Generation
from vlmkd.testing import tiny_models
from vlmkd.testing.work_counters import counting_work

SETTINGS = GenerationSettings(max_new_tokens=8)
PROMPTS = (
    "Describe this image in detail.",
    "What is the main object in this image?",
    "Describe the shape, colour and texture of the digit.",
)
NEAR_TIE = 1e-4  # a different token is allowed only where the top two logits are this close
SIZES = [(40, 40), (70, 30), (20, 90)]  # (width, height): different anyres grids, Qwen2-VL and Idefics3 token counts

# architecture -> (builder, what the engine shares)
ARCHITECTURES = {
    "llava": (tiny_models.build_tiny_llava, "PrefixCache"),
    "llava_next": (tiny_models.build_tiny_llava_next, "PrefixCache"),
    "qwen2_vl": (tiny_models.build_tiny_qwen2_vl, "MropePrefixCache"),
    "idefics3": (tiny_models.build_tiny_idefics3, "PrefixCache"),
    "smolvlm": (tiny_models.build_tiny_smolvlm, "PrefixCache"),
    "blip2": (tiny_models.build_tiny_blip2, "PrefixCache"),
    "blip2_t5": (lambda out: tiny_models.build_tiny_blip2(out, text_model="t5"), "VisionOnce"),
    "paligemma": (tiny_models.build_tiny_paligemma, "VisionOnce"),
    "blip": (tiny_models.build_tiny_blip, "VisionOnce"),
}


@pytest.fixture(scope="module", autouse=True)
def num2words_stand_in():
    """SmolVLM's processor insists on `num2words` (only to word video frame counts): a stand-in where absent."""
    import transformers.models.smolvlm.processing_smolvlm as processing

    patch = pytest.MonkeyPatch()
    if processing.num2words is None:
        patch.setattr(processing, "num2words", str)
    yield
    patch.undo()


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """(shared, prompt-by-prompt) engines of each architecture, built on first use."""
    built = {}

    def get(arch):
        if arch not in built:
            model = ARCHITECTURES[arch][0](tmp_path_factory.mktemp(arch) / "model")
            reference = load_engine("hf", model, SETTINGS, share_image_work=False)
            built[arch] = (load_engine("hf", model, SETTINGS), reference)
        return built[arch]

    return get


def requests(count: int) -> list[ImageRequest]:
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES[:count]]
    return [ImageRequest(image, PROMPTS) for image in images]


def new_tokens(generation: Generation) -> torch.Tensor:
    return generation.sequences[:, -len(generation.logits) :]


def top_two_gap(logits: torch.Tensor) -> float:
    top = logits.float().topk(2).values
    return float(top[0] - top[1])


def assert_same_greedy_tokens(shared: Generation, reference: Generation) -> list[float]:
    """Same tokens row by row, or a first difference where both paths' top two logits are within `NEAR_TIE`;
    the logits agree to float rounding up to there. Returns the top-two gaps at the differences."""
    ours, theirs = new_tokens(shared), new_tokens(reference)
    assert ours.shape == theirs.shape
    gaps = []
    for row in range(ours.shape[0]):
        differ = (ours[row] != theirs[row]).nonzero()
        steps = int(differ[0]) if len(differ) else ours.shape[1]
        for step in range(steps):
            torch.testing.assert_close(shared.logits[step][row], reference.logits[step][row], atol=1e-4, rtol=1e-4)
        if steps < ours.shape[1]:
            gap = max(top_two_gap(shared.logits[steps][row]), top_two_gap(reference.logits[steps][row]))
            assert gap <= NEAR_TIE, f"row {row} differs at step {steps} with a top-two gap of {gap:.3g}"
            gaps.append(gap)
    return gaps


@pytest.mark.parametrize("count", [1, 3], ids=["batch1", "batch3"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_greedy_captions_equal_prompt_by_prompt(engines, arch, count):
    shared, reference = engines(arch)
    assert type(shared.sharing).__name__ == ARCHITECTURES[arch][1]
    batch = requests(count)
    ours, theirs = shared.generate(batch, output_logits=True), reference.generate(batch, output_logits=True)
    near_ties = assert_same_greedy_tokens(ours, theirs)
    captions = shared.caption(batch)
    assert [len(c) for c in captions] == [len(PROMPTS)] * count
    if not near_ties:
        assert captions == reference.caption(batch)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_each_image_goes_through_the_vision_tower_once(engines, arch):
    shared, reference = engines(arch)
    batch = requests(3)
    with counting_work(reference.model) as once:  # one prompt per image, prompt by prompt: one pass of each image
        reference.caption([ImageRequest(r.image, r.prompts[:1]) for r in batch])
    with counting_work(shared.model) as sharing:
        shared.caption(batch)
    with counting_work(reference.model) as per_prompt:
        reference.caption(batch)
    assert sharing.vision_calls == 1 and sharing.vision_rows == once.vision_rows
    assert per_prompt.vision_rows == len(PROMPTS) * once.vision_rows


@pytest.mark.parametrize("arch", [a for a, (_, kind) in ARCHITECTURES.items() if "Prefix" in kind])
def test_the_image_prefix_is_prefilled_once(engines, arch):
    shared, reference = engines(arch)
    batch = requests(1)
    image, texts = batch[0].image, [shared.model_text(prompt) for prompt in PROMPTS]
    ids = [shared.processor(images=[[image]], text=[text])["input_ids"][0] for text in texts]  # each prompt alone
    longest = max(len(row) for row in ids)
    prefix = min(len(row) for row in ids) - 1  # what every prompt's ids start with, leaving each one of its own
    for row in ids[1:]:
        prefix = min(prefix, next((k for k, (a, b) in enumerate(zip(ids[0], row, strict=False)) if a != b), len(row)))
    with counting_work(shared.model) as sharing:
        shared.caption(batch)
    with counting_work(reference.model) as per_prompt:
        reference.caption(batch)
    assert per_prompt.prefill_tokens == len(PROMPTS) * longest
    # the prefix once, then every prompt's own tokens, padded to the longest
    assert sharing.prefill_tokens == prefix + len(PROMPTS) * (longest - prefix)
    assert sharing.decode_tokens == per_prompt.decode_tokens
