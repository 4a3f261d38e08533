"""Stand-in for tensorrt_llm/inputs/utils.py: `default_multimodal_input_loader` and the placeholder registry it
reads (tensorrt_llm/inputs/registry.py, filled by each model's `register_input_processor`).

Signature as in every version of utils.py read (the 1.2-era file at commit bab0f2e6 and its successors): all
keyword-only, no `**kwargs`; the newest adds `extract_audio=False`, left out here (vlmkd never passes it). Like
upstream, each call loads the processor with `AutoProcessor.from_pretrained(model_dir, use_fast=True,
trust_remote_code=True)` (whatever the caller wants about remote code), and a PIL image passes through
`load_image` as `image.convert("RGB")` whatever `image_data_format` says. Only the image modality is emulated.
"""

from __future__ import annotations

from typing import Any

from tensorrt_llm.llmapi.tokenizer import TransformersTokenizer

# model type -> (image placeholder, whether the message content becomes a list of typed items, as upstream does
# for llava_next (PLACEHOLDER_EXCEPTIONS), or the placeholder is put before the text (BEFORE_TEXT, STRING)).
# From the `register_input_processor(..., placeholder_metadata=...)` of tensorrt_llm/_torch/models/.
IMAGE_PLACEHOLDERS: dict[str, tuple[str, bool]] = {
    "llava_next": ("<image>", True),
    "qwen2_vl": ("<|vision_start|><|image_pad|><|vision_end|>", False),
    "qwen2_5_vl": ("<|vision_start|><|image_pad|><|vision_end|>", False),
}


def default_multimodal_input_loader(
    *,
    tokenizer: Any,
    model_dir: str,
    model_type: str,
    modality: str,
    prompts: list[str],
    media: list[Any] | list[list[Any]] | None = None,
    image_data_format: str = "pt",
    num_frames: int = 8,
    mm_embeddings: list[Any] | None = None,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    from PIL import Image
    from transformers import AutoProcessor

    if modality not in ("image", "multiple_image"):
        raise ValueError(f"Unknown modality: {modality} (the stand-in emulates images only)")
    if model_type not in IMAGE_PLACEHOLDERS:
        raise TypeError(f"Unknown modality: {modality}")  # upstream: retrieve_multimodal_placeholder
    assert media is not None or mm_embeddings is not None, "Either media or mm_embeddings must be provided."
    assert media is None or mm_embeddings is None, "Either media or mm_embeddings must be provided, not both."
    assert mm_embeddings is None, "the stand-in does not emulate mm_embeddings"
    assert image_data_format in ("pt", "pil"), "format must be either Pytorch or PIL"
    if len(media) > len(prompts) and len(prompts) == 1:
        media = [media]
    assert len(media) == len(prompts)
    if tokenizer is None:
        raise NotImplementedError("the stand-in needs the LLM's tokenizer")
    hf_tokenizer = tokenizer.tokenizer if isinstance(tokenizer, TransformersTokenizer) else tokenizer
    processor = AutoProcessor.from_pretrained(model_dir, use_fast=True, trust_remote_code=True)
    placeholder, typed_content = IMAGE_PLACEHOLDERS[model_type]
    inputs = []
    for prompt, items in zip(prompts, media, strict=True):
        items = [items] if not isinstance(items, list) else items
        images = [item.convert("RGB") if isinstance(item, Image.Image) else _unsupported(item) for item in items]
        if typed_content:
            content: Any = [{"type": "text", "text": prompt}, *({"type": "image"} for _ in images)]
        else:
            content = "".join([placeholder] * len(images)) + prompt
        text = hf_tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            tokenize=False,
            add_generation_prompt=True,
            chat_template=processor.chat_template,
        )
        inputs.append({"prompt": text, "multi_modal_data": {"image": images}})
    return inputs


def _unsupported(item: Any) -> Any:
    raise NotImplementedError(f"the stand-in loads PIL images only, got {type(item).__name__}")
