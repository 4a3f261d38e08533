"""Typed stage configs and name registries: construction checks, Path/str, YAML round trip, one list of names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vlmkd.errors import InputError
from vlmkd.registry import Registry, choice_error
from vlmkd.train.config import TrainConfig


def test_registry_lists_names_in_order_and_resolves_lazy_targets() -> None:
    registry: Registry[object] = Registry("thing")
    registry.register("path", "pathlib:PurePosixPath", "a lazy target")
    registry.register("seven", 7, "an object")
    assert registry.names() == ("path", "seven") and list(registry) == ["path", "seven"]
    assert registry.get("path")("a/b").name == "b" and registry.get("seven") == 7
    assert registry.description("seven") == "an object" and "seven" in registry and "eight" not in registry
    with pytest.raises(ValueError, match="already registered"):
        registry.register("seven", 8, "twice")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sevn", r"^thing must be one of path, seven, got 'sevn' \(did you mean 'seven'\?\)$"),
        ("pa", r"^thing must be one of path, seven, got 'pa' \(did you mean 'path'\?\)$"),
        ("zzz", r"^thing must be one of path, seven, got 'zzz'$"),
        (3, r"^thing must be one of path, seven, got 3$"),
    ],
)
def test_unknown_name_is_one_line_with_the_choices_and_a_suggestion(value: object, message: str) -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("path", 1, "")
    registry.register("seven", 7, "")
    with pytest.raises(InputError, match=message):
        registry.get(value)
    assert (
        choice_error("thing", value, ["path", "seven"]).args
        == pytest.raises(InputError, registry.check, value).value.args
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epochs": "3"}, r"^TrainConfig: epochs must be an integer, got '3'$"),
        ({"lr": None}, r"^TrainConfig: lr must be a number, got None$"),
        ({"flip": 1}, r"^TrainConfig: flip must be true or false, got 1$"),
        ({"train": 5}, r"^TrainConfig: train must be a path or null, got 5$"),
        ({"mean": [0.5, 0.5]}, r"^TrainConfig: mean must be a list of 3 numbers, got \[0\.5, 0\.5\]$"),
        (
            {"arch": "resnet33"},
            r"^arch must be one of resnet32, resnet50, resnext50, timm:NAME, got 'resnet33' \(did you mean",
        ),
        ({"task_loss": "focal"}, r"^task_loss must be one of ce, balanced_softmax, logit_adjust, got 'focal'$"),
        ({"contrastive_backend": "ref"}, r"got 'ref' \(did you mean 'reference'\?\)$"),
        ({"epochs": 0}, r"^TrainConfig: epochs must be at least 1; got 0$"),
        ({"positives": "class", "negatives": "class"}, r"^positives 'class' with negatives 'class' leaves"),
        ({"crop_scale": [0.5, 1.5]}, r"^TrainConfig: crop_scale must be greater than 0 and at most 1; got 1\.5$"),
        ({"crop_ratio": [1.2, 0.8]}, r"^crop_ratio must be \[low, high\] with low <= high; got \[1\.2, 0\.8\]$"),
    ],
)
def test_train_config_refuses_bad_values_on_construction_naming_the_setting(settings: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        TrainConfig(**settings)


def test_unknown_setting_is_refused_with_a_suggestion() -> None:
    with pytest.raises(InputError, match=r"^TrainConfig: unknown setting 'epoch' \(did you mean 'epochs'\?\)$"):
        TrainConfig.from_dict({"epoch": 3})


def test_paths_accept_path_or_str_and_serialise_as_strings(tmp_path: Path) -> None:
    from_str = TrainConfig(train=str(tmp_path / "train.txt"), output=str(tmp_path / "run"), features="feats")
    from_path = TrainConfig(train=tmp_path / "train.txt", output=tmp_path / "run", features=Path("feats"))
    assert from_str == from_path
    assert isinstance(from_str.train, Path) and from_str.train == tmp_path / "train.txt"
    data = from_path.to_dict()
    assert data["train"] == str(tmp_path / "train.txt") and data["features"] == "feats" and data["teacher"] is None
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain YAML data, no Python objects


def test_yaml_round_trip_gives_the_same_config(tmp_path: Path) -> None:
    config = TrainConfig(train=tmp_path / "t.txt", epochs=3, lr=0.5, mean=[0.1, 0.2, 0.3], prompts=["G", "T1"])
    written = config.to_yaml(tmp_path / "out" / "config.yaml")
    assert TrainConfig.from_yaml(written) == config
    assert yaml.safe_load(written.read_text())["epochs"] == 3


def test_validate_requires_the_inputs_of_a_run() -> None:
    TrainConfig()  # a config without a dataset is incomplete, not wrong
    with pytest.raises(InputError, match="no training dataset"):
        TrainConfig().validate()
    with pytest.raises(InputError, match="needs --features"):
        TrainConfig(train="x.txt", vlmkd_weight=1.0).validate()
    config = TrainConfig(train="x.txt")
    config.epochs = "2"  # attributes can be assigned; validate() checks them again
    with pytest.raises(InputError, match="epochs must be an integer"):
        config.validate()


def test_cli_choices_are_the_registered_names() -> None:
    from vlmkd.backends import BACKENDS, backends
    from vlmkd.caption.cli import build_parser as caption_parser
    from vlmkd.caption.engines import ENGINES
    from vlmkd.losses.task import TASK_LOSSES
    from vlmkd.models.zoo import BACKBONES
    from vlmkd.train.cli import build_parser as train_parser

    train_choices = {action.dest: action.choices for action in train_parser()._actions}
    # --arch also takes the timm:NAME family, which argparse cannot enumerate: TrainConfig checks it against the
    # registry (test_train_config_refuses_bad_values...), and the help lists exactly the registry's choices.
    assert train_choices["arch"] is None
    arch_help = next(a.help for a in train_parser()._actions if a.dest == "arch")
    assert ", ".join(BACKBONES.names()) + " or timm:NAME" in arch_help
    assert tuple(train_choices["task_loss"]) == TASK_LOSSES.names()
    assert tuple(train_choices["contrastive_backend"]) == BACKENDS.names() == tuple(backends())
    caption_choices = {action.dest: action.choices for action in caption_parser()._actions}
    assert tuple(caption_choices["engine"]) == ENGINES.names()


def test_stage_configs_round_trip_yaml_with_nested_generation_settings(tmp_path: Path) -> None:
    from vlmkd import CaptionConfig, EncodeConfig, EvalConfig, GenerationSettings

    caption = CaptionConfig.from_settings(dataset=tmp_path / "train.txt", model="org/vlm", max_new_tokens=8, seed=3)
    assert caption.generation == GenerationSettings(max_new_tokens=8, seed=3) and caption.model == "org/vlm"
    assert yaml.safe_load(caption.to_yaml(tmp_path / "c.yaml").read_text())["generation"]["max_new_tokens"] == 8
    assert CaptionConfig.from_yaml(tmp_path / "c.yaml") == caption
    for config in (
        EncodeConfig(captions="runs/c", out=Path("runs/f"), encoder=Path("/models/e")),
        EvalConfig(checkpoint="r"),
    ):
        assert type(config).from_yaml(config.to_yaml(tmp_path / "x.yaml")) == config
    assert EncodeConfig(encoder=Path("/models/e")).encoder == "/models/e"  # a name-or-path setting keeps a str
    assert EvalConfig(checkpoint="r").out_dir == Path("r/eval")


@pytest.mark.parametrize(
    ("kind", "settings", "message"),
    [
        ("CaptionConfig", {"engine": "vllm"}, r"engine must be one of hf, trt.*got 'vllm'"),
        ("CaptionConfig", {"generation": {"max_new_tokens": "8"}}, r"max_new_tokens must be an integer, got '8'"),
        ("CaptionConfig", {"batch_size": 0}, r"^CaptionConfig: batch_size must be at least 1; got 0$"),
        ("EncodeConfig", {"dtype": "float8"}, r"--dtype must be one of float32"),
        ("EvalConfig", {"few_threshold": 200}, r"few \(200\) <= many \(100\)"),
        ("EvalConfig", {"checkpoint": 3}, r"EvalConfig: checkpoint must be a path or null, got 3"),
    ],
)
def test_stage_configs_refuse_bad_values_naming_the_setting(kind: str, settings: dict, message: str) -> None:
    import vlmkd

    with pytest.raises(InputError, match=message):
        getattr(vlmkd, kind)(**settings)
