"""Analytic cost of captioning one image with LLaVA-NeXT-7B on one H100: prompt by prompt vs sharing the image.

FLOPs and bytes per image, counted from the model's shapes (llava-v1.6-mistral-7b: Mistral-7B with 8 KV heads,
CLIP ViT-L/14 at 336 px), and the time they take at an assumed utilisation: prefill compute-bound, decode
bound by memory traffic (the weights once per step for the whole batch, each row's KV cache once per step).
The `hf` engine copies the shared prefix's KV cache to every prompt's row, so decoding costs the same both ways;
what sharing removes is four of five vision passes and four of five prefills of the image tokens.

    python benchmarks/captioning_cost.py      # prints the table (bench_captioning.py --part sharing includes it)
"""

from __future__ import annotations

from dataclasses import dataclass

from _common import markdown_table


@dataclass(frozen=True)
class Model:
    """Shapes of a LLaVA-NeXT: the text model and the vision tower."""

    layers: int = 32
    hidden: int = 4096
    kv_heads: int = 8
    head_dim: int = 128
    intermediate: int = 14336
    vocabulary: int = 32064
    vision_layers: int = 24
    vision_hidden: int = 1024
    vision_intermediate: int = 4096
    tile_tokens: int = 577  # 24 x 24 patches + CLS per 336 px tile
    bytes_per_value: int = 2  # bf16

    @property
    def linear_params(self) -> float:
        """Text-model weights applied to every token (attention projections and MLP, all layers)."""
        kv = self.kv_heads * self.head_dim
        return self.layers * (self.hidden * (2 * self.hidden + 2 * kv) + 3 * self.hidden * self.intermediate)

    @property
    def weight_bytes(self) -> float:
        return (self.linear_params + 2 * self.vocabulary * self.hidden) * self.bytes_per_value

    @property
    def kv_bytes_per_token(self) -> float:
        return self.layers * 2 * self.kv_heads * self.head_dim * self.bytes_per_value

    def prefill_flops(self, new: int, context: int) -> float:
        """`new` tokens after `context` cached ones: linear layers, causal attention over everything before."""
        attention = 4 * self.layers * self.hidden * new * (context + new / 2)
        return 2 * self.linear_params * new + attention

    def decode_flops(self, context: int) -> float:
        """One generated token with `context` tokens before it (including the LM head)."""
        return 2 * (self.linear_params + self.vocabulary * self.hidden) + 4 * self.layers * self.hidden * context

    def vision_flops(self, tiles: int) -> float:
        """The vision tower over `tiles` 336 px tiles."""
        width, tokens = self.vision_hidden, self.tile_tokens
        per_layer = 2 * tokens * (4 * width * width + 2 * width * self.vision_intermediate) + 4 * tokens**2 * width
        return tiles * self.vision_layers * per_layer


@dataclass(frozen=True)
class Workload:
    """One image: its tokens, its prompts and answers, and the batch it is decoded in."""

    image_tokens: int = 2928  # a square image: base tile 576, 2 x 2 grid 2,304, newlines 48
    tiles: int = 5
    template_tokens: int = 12  # chat template around the image
    prompt_tokens: int = 30  # each prompt's own tokens (template tail included)
    answer_tokens: int = 100
    prompts: int = 5
    batch_images: int = 24  # images decoded together (their KV copies fill an H100's ~60 GB after the weights)


@dataclass(frozen=True)
class Hardware:
    name: str = "H100 SXM"
    flops: float = 989e12  # dense bf16
    bandwidth: float = 3.35e12  # HBM3 bytes/s
    compute_utilisation: float = 0.6
    memory_utilisation: float = 0.8


def image_cost(shared: bool, model: Model = Model(), work: Workload = Workload()) -> dict[str, float]:
    """FLOPs, bytes and seconds of one image's captions."""
    prefix = work.image_tokens + work.template_tokens
    row = prefix + work.prompt_tokens
    if shared:
        vision = model.vision_flops(work.tiles)
        prefill = model.prefill_flops(prefix, 0) + work.prompts * model.prefill_flops(work.prompt_tokens, prefix)
    else:
        vision = work.prompts * model.vision_flops(work.tiles)
        prefill = work.prompts * model.prefill_flops(row, 0)
    steps = range(work.answer_tokens)
    decode = work.prompts * sum(model.decode_flops(row + t) for t in steps)
    kv_read = work.prompts * sum((row + t) * model.kv_bytes_per_token for t in steps)  # every row reads its own copy
    weights_read = work.answer_tokens * model.weight_bytes / work.batch_images  # once per step per batch
    kv_held = work.prompts * (row + work.answer_tokens) * model.kv_bytes_per_token
    hardware = Hardware()
    compute = hardware.flops * hardware.compute_utilisation
    prefill_s = (vision + prefill) / compute
    decode_s = max(decode / compute, (kv_read + weights_read) / (hardware.bandwidth * hardware.memory_utilisation))
    return {
        "vision_tflop": vision / 1e12,
        "prefill_tflop": prefill / 1e12,
        "decode_tflop": decode / 1e12,
        "decode_gb": (kv_read + weights_read) / 1e9,
        "kv_cache_gb": kv_held / 1e9,
        "prefill_ms": 1000 * prefill_s,
        "decode_ms": 1000 * decode_s,
        "images_per_s": 1 / (prefill_s + decode_s),
    }


DATASETS = {"ImageNet-LT": 115_846, "iNaturalist 2018": 437_513}


def cost_table() -> str:
    """The per-image table, today (prompt by prompt) vs shared, with the GPU hours of two datasets."""
    work, hardware = Workload(), Hardware()
    rows = {"prompt by prompt (before)": image_cost(False), "image shared (now)": image_cost(True)}
    header = ["path", "vision TFLOP", "prefill TFLOP", "decode TFLOP", "decode GB read", "KV cache GB held",
              "prefill ms", "decode ms", "images/s", *(f"{name} H100-hours" for name in DATASETS)]  # fmt: skip
    table = markdown_table(header, [
        [name, f"{c['vision_tflop']:.1f}", f"{c['prefill_tflop']:.1f}", f"{c['decode_tflop']:.1f}",
         f"{c['decode_gb']:.0f}", f"{c['kv_cache_gb']:.2f}", f"{c['prefill_ms']:.0f}", f"{c['decode_ms']:.0f}",
         f"{c['images_per_s']:.1f}", *(f"{count / c['images_per_s'] / 3600:.1f}" for count in DATASETS.values())]
        for name, c in rows.items()
    ])  # fmt: skip
    assumptions = (
        f"Per image: {work.image_tokens:,} image tokens ({work.tiles} tiles), {work.template_tokens} template tokens, "
        f"{work.prompts} prompts of {work.prompt_tokens} own tokens, answers of {work.answer_tokens} tokens, decoded "
        f"{work.batch_images} images ({work.prompts * work.batch_images} rows) at a time; bf16; {hardware.name} at "
        f"{hardware.compute_utilisation:.0%} of {hardware.flops / 1e12:.0f} TFLOP/s for prefill and "
        f"{hardware.memory_utilisation:.0%} of {hardware.bandwidth / 1e12:.2f} TB/s for decode."
    )
    return "\n".join([table, "", assumptions])


if __name__ == "__main__":
    print(cost_table())
