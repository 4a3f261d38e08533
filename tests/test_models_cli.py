"""`vlmkd models make-tiny`: a tiny random VLM that loads through the real hf engine path and captions."""

from __future__ import annotations

import pytest

from vlmkd.caption import CaptionStore
from vlmkd.cli import main
from vlmkd.errors import InputError
from vlmkd.testing import tiny_models

TWO_PROMPTS = "prompts:\n  - {id: G, template: Describe this image.}\n  - {id: T2, template: 'Describe the {label}.'}\n"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["blip", "llava"])
def test_make_tiny_says_the_weights_are_random_and_the_model_captions_two_images(kind, tiny_dataset, tmp_path, capsys):
    model = tmp_path / kind
    assert main(["models", "make-tiny", kind, str(model)]) == 0
    out = capsys.readouterr().out
    assert "RANDOM" in out and "gibberish" in out and f"--model {model}" in out
    assert "weights are RANDOM" in (model / "README.md").read_text()
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()

    two = tiny_dataset.root / "two.txt"
    two.write_text("".join(f"{s.path} {s.label}\n" for s in tiny_dataset.samples[:2]))
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(TWO_PROMPTS)
    store = tmp_path / "captions"
    argv = ["caption", str(two), "--model", str(model), "--out", str(store), "--prompts", str(prompts)]
    assert main([*argv, "--max-new-tokens", "4", "--no-progress"]) == 0
    table = CaptionStore.open(store).read_table()
    assert table.column("image_index").to_pylist() == [0, 0, 1, 1]
    assert table.column("prompt_id").to_pylist() == ["G", "T2", "G", "T2"]
    assert all(isinstance(c, str) for c in table.column("caption").to_pylist())
    assert CaptionStore.open(store).manifest["engine"] == "hf"


def test_make_tiny_is_seeded_refuses_a_full_directory_and_leaves_nothing_when_it_fails(tmp_path, monkeypatch):
    first = tiny_models.make_tiny_vlm("llava", tmp_path / "a", seed=1)
    second = tiny_models.make_tiny_vlm("llava", tmp_path / "b", seed=1)
    other = tiny_models.make_tiny_vlm("llava", tmp_path / "c", seed=2)
    weights = [(d / "model.safetensors").read_bytes() for d in (first, second, other)]
    assert weights[0] == weights[1] and weights[0] != weights[2]
    with pytest.raises(InputError, match="holds a tiny model made by vlmkd models make-tiny; pass --overwrite"):
        tiny_models.make_tiny_vlm("llava", first, seed=2)
    assert (first / "model.safetensors").read_bytes() == weights[0]
    tiny_models.make_tiny_vlm("llava", first, seed=2, overwrite=True)
    assert (first / "model.safetensors").read_bytes() == weights[2]

    def broken(out_dir, seed):
        (out_dir / "half").mkdir(parents=True)
        raise RuntimeError("killed mid-build")

    monkeypatch.setitem(tiny_models.TINY_VLMS, "blip", broken)
    with pytest.raises(RuntimeError):
        tiny_models.make_tiny_vlm("blip", tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no half model, no staging left
    with pytest.raises(InputError, match="unknown tiny model 'gpt'"):
        tiny_models.make_tiny_vlm("gpt", tmp_path / "e")


def test_make_tiny_llava_next_has_the_real_models_image_token_counts(tmp_path, capsys):
    """LLaVA-NeXT-7B (336 px tiles of 14 px patches, grid [[336, 672], [672, 336], [672, 672], [1008, 336],
    [336, 1008]], CLS dropped) gives a square image 576 base + 48 x 48 grid + 48 newline tokens = 2,928."""
    from PIL import Image

    from vlmkd.caption.engines import GenerationSettings, ImageRequest, load_engine

    model = tmp_path / "next"
    assert main(["models", "make-tiny", "llava-next", str(model)]) == 0
    assert "LLaVA-NeXT" in capsys.readouterr().out
    engine = load_engine("hf", model, GenerationSettings(max_new_tokens=2))
    assert type(engine.model).__name__ == "LlavaNextForConditionalGeneration"
    text = engine.model_text("Describe this image.")
    image_tokens = {}
    for shape in [(96, 96), (96, 48), (48, 144)]:  # (w, h): grids of 2 x 2, 1 x 2 and 3 x 1 tiles
        ids = engine.processor(images=[[Image.new("RGB", shape)]], text=[text])["input_ids"][0]
        image_tokens[shape] = ids.count(engine.image_token_id)
    assert image_tokens[(96, 96)] == 576 + 48 * 48 + 48
    assert len(set(image_tokens.values())) == 3 and min(image_tokens.values()) > 1500
    (caption,) = engine.caption([ImageRequest(Image.new("RGB", (96, 96), "gray"), ("Describe this image.",))])
    assert len(caption) == 1
