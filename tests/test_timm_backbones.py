"""`--arch timm:NAME`: any timm model by name, its feature width, clear errors, and checkpoints that rebuild it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmkd.cli import main as vlmkd_main
from vlmkd.errors import InputError
from vlmkd.evaluate.features import load_eval_features
from vlmkd.models import BACKBONES, ModelSpec, build_model
from vlmkd.registry import Registry
from vlmkd.train.checkpoint import load_classifier

timm = pytest.importorskip("timm")  # the `vision` extra


@pytest.mark.parametrize("name", ["resnet10t", "mobilenetv3_small_050", "convnext_atto"])
def test_timm_trunk_returns_features_of_the_width_it_reports(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(f"timm:{name}", num_classes=7)).eval()
    logits, features = model(torch.randn(2, 3, 32, 32), return_features=True)
    reference = timm.create_model(name, pretrained=False, num_classes=0).eval()
    assert features.shape == (2, reference(torch.randn(2, 3, 32, 32)).shape[1]) == (2, model.feature_dim)
    assert logits.shape == (2, 7)
    assert not any(
        p.numel() for p in model.features.modules() if isinstance(p, torch.nn.Linear) and p.out_features == 1000
    )


def test_feature_width_is_the_pre_logits_width_not_num_features() -> None:
    """MobileNetV3 has a 1x1 conv head after pooling: 288 channels pooled, 1024 features out."""
    trunk = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0)
    assert trunk.num_features == 288
    assert build_model(ModelSpec("timm:mobilenetv3_small_050", 3)).feature_dim == 1024


def test_an_unknown_timm_name_is_a_one_line_error_with_close_matches(tmp_path, capsys) -> None:
    with pytest.raises(
        InputError, match=r"arch timm:resnet10x: unknown timm model 'resnet10x' .*close matches: resnet10t"
    ):
        build_model(ModelSpec("timm:resnet10x", 3))
    assert vlmkd_main(["train", "--train", str(tmp_path / "x.txt"), "--arch", "timm:convnext_tiniest"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown timm model 'convnext_tiniest'" in err and "convnext_tiny" in err
    assert vlmkd_main(["train", "--train", str(tmp_path / "x.txt"), "--arch", "resnet33"]) == 2
    assert "arch must be one of resnet32, resnet50, resnext50, timm:NAME, got 'resnet33'" in capsys.readouterr().err


def test_resnet32_options_are_refused_for_a_timm_model() -> None:
    with pytest.raises(InputError, match="width and norm options apply to resnet32 only"):
        build_model(ModelSpec("timm:resnet10t", 3, width=0.5))


def test_help_and_info_list_the_builtin_names_and_timm(capsys) -> None:
    from vlmkd.train.cli import build_parser

    arch_help = next(a.help for a in build_parser()._actions if "--arch" in a.option_strings)
    assert "resnet32, resnet50, resnext50 or timm:NAME" in arch_help and "timm:resnet10t" in arch_help
    assert vlmkd_main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backbones (--arch): resnet32, resnet50, resnext50, timm:NAME" in out
    assert f"timm {timm.__version__}: {len(timm.list_models())} models as timm:NAME" in out


def test_a_registry_family_checks_its_names_and_resolves_one_target() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("plain", 1, "")
    seen = []

    def check(name: str) -> None:
        seen.append(name)
        if name.endswith("bad"):
            raise InputError(f"{name}: bad")

    registry.register_family("fam:", 42, "every fam:NAME", check=check, examples=("fam:x",))
    assert registry.get("fam:x") == 42 and registry.get("fam:y") == 42 and seen == ["fam:x", "fam:y"]
    assert "fam:anything" in registry and "fa:x" not in registry and registry.names() == ("plain",)
    assert registry.choices_text() == "plain, fam:NAME"
    with pytest.raises(InputError, match="fam:bad: bad"):
        registry.check("fam:bad")
    with pytest.raises(
        InputError, match="thing must be one of plain, fam:NAME, got 'plan' \\(did you mean 'plain'\\?\\)"
    ):
        registry.get("plan")
    with pytest.raises(ValueError, match="clashes"):
        registry.register_family("pl", 2, "")


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory) -> tuple[Path, Path]:
    """One step of `vlmkd train --arch timm:resnet10t` at 32 px, through the CLI."""
    root = tmp_path_factory.mktemp("timm-run")
    rng = np.random.default_rng(0)
    lines = []
    for k in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{k}.png")
        lines.append(f"{k}.png {k % 3}\n")
    (root / "train.txt").write_text("".join(lines))
    argv = ["train", "--train", str(root / "train.txt"), "--output", str(root / "run"), "--arch", "timm:resnet10t",
            "--image-size", "32", "--batch-size", "12", "--epochs", "1", "--warmup-epochs", "0", "--num-workers", "0",
            "--threads", "1", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert vlmkd_main(argv) == 0
    return root / "run", root / "train.txt"


def test_the_checkpoint_records_the_timm_name_and_version(timm_run) -> None:
    run, _ = timm_run
    spec = json.loads((run / "model.json").read_text())["spec"]
    assert spec["arch"] == "timm:resnet10t" and spec["timm_version"] == timm.__version__
    assert "timm_version" not in ModelSpec("resnet32", 3).to_dict()  # only timm models carry it


def test_eval_rebuilds_the_trained_timm_model_with_the_same_logits(timm_run, tmp_path) -> None:
    run, train_list = timm_run
    model, meta = load_classifier(run)
    # Independent reference: timm's own model plus a linear head, loaded straight from the saved weights.
    weights = load_file(str(run / "model.safetensors"))
    trunk = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    trunk.load_state_dict({k.removeprefix("features."): v for k, v in weights.items() if k.startswith("features.")})
    head = torch.nn.Linear(512, 3)
    head.load_state_dict({"weight": weights["head.weight"], "bias": weights["head.bias"]})
    trunk.eval()
    config = meta["config"]
    mean, std = torch.tensor(config["mean"]).view(3, 1, 1), torch.tensor(config["std"]).view(3, 1, 1)
    images = torch.stack(
        [
            (torch.from_numpy(np.array(Image.open(train_list.parent / f"{k}.png"))).permute(2, 0, 1) / 255 - mean) / std
            for k in range(12)
        ]  # fmt: skip
    )
    with torch.no_grad():
        expected_features = trunk(images)
        expected = head(expected_features)
        assert torch.allclose(model(images), expected, atol=1e-5)
    argv = ["eval", str(run), str(train_list), "--out", str(tmp_path / "eval"), "--no-plots", "--num-workers", "0",
            "--save-features"]  # fmt: skip
    assert vlmkd_main(argv) == 0
    saved = load_eval_features(tmp_path / "eval")
    assert np.allclose(saved.image_features, expected_features.numpy(), atol=1e-5)
    assert np.array_equal(saved.predicted, expected.argmax(1).numpy())


def test_another_installed_timm_version_warns_on_rebuild() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_model(ModelSpec("timm:resnet10t", 3, timm_version="0.0.1"))
    assert any(f"saved with timm 0.0.1, timm {timm.__version__} is installed" in str(w.message) for w in caught)


def test_the_timm_arch_is_listed_by_the_backbone_registry() -> None:
    assert BACKBONES.family("timm:resnet10t") is not None and "timm:NAME" in BACKBONES.choices_text()


def test_a_backbone_that_cannot_take_the_image_size_is_a_one_line_error(tiny_dataset, tmp_path, capsys) -> None:
    """timm's ViTs fix their input size at construction: 32 px images into a 224 px ViT must not be a traceback."""
    argv = ["train", "--train", str(tiny_dataset.source), "--output", str(tmp_path / "run"), "--image-size", "32",
            "--arch", "timm:vit_tiny_patch16_224", "--num-workers", "0", "--no-progress", "--threads", "1"]  # fmt: skip
    assert vlmkd_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert (
        "arch timm:vit_tiny_patch16_224 cannot take 32 px images (Input height (32) doesn't match model (224).)" in err
    )
    assert not (tmp_path / "run" / "model.safetensors").exists()
