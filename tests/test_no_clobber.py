"""Rule 1: no command replaces, deletes or writes into what it did not make, whatever the flags.

Every writer is pointed at every kind of thing a user has lying around (each store, a run, evaluation results,
a model, a dataset vlmkd made, a user's dataset and folder, a plain file): it refuses in one line, the target's
bytes are untouched, and (control) the same writer does write into a new path and over its own earlier output.
Once `vlmkd models make-tiny blip STORE --overwrite` deleted a caption store, and `vlmkd caption export STORE
--out STORE/manifest.json` replaced the store's manifest with JSONL (exit 0).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from _cases import class_captions, tiny_config, write_tiny_dataset

from vlmkd.cli import main as vlmkd_main
from vlmkd.train.trainer import train


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` (or `path` itself) by relative name, with its bytes."""
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One of each thing a user may have: stores, a run, evaluation results, a model, datasets, own files."""
    from vlmkd.testing import build_tiny_blip

    root = tmp_path_factory.mktemp("no-clobber")
    dataset = write_tiny_dataset(root / "data")
    paths = {"list": dataset.source, "user dataset": root / "data"}
    paths["captions"] = class_captions(dataset, root / "captions").path
    assert vlmkd_main(["encode", str(paths["captions"]), "--out", str(root / "features"), "--quiet"]) == 0
    paths["features"] = root / "features"
    train(tiny_config(dataset, root / "run", epochs=1, batch_size=4, features=str(paths["features"]),
                      vlmkd_weight=1.0))  # fmt: skip
    paths["run"] = root / "run"
    assert vlmkd_main(["eval", str(paths["run"]), str(dataset.source), "--out", str(root / "eval"),
                       "--num-workers", "0", "--no-progress", "--no-plots"]) == 0  # fmt: skip
    paths["eval"] = root / "eval"
    assert vlmkd_main(["models", "make-tiny", "blip", str(root / "model")]) == 0
    paths["model"] = root / "model"
    paths["hf model"] = build_tiny_blip(root / "hf-model")  # a model folder vlmkd's make-tiny did not write
    assert vlmkd_main(["data", "longtail", str(dataset.source), str(root / "cut"), "--max-count", "2"]) == 0
    paths["vlmkd dataset"] = root / "cut"
    (root / "mine").mkdir()
    (root / "mine" / "thesis.tex").write_text("precious")
    paths["user folder"] = root / "mine"
    (root / "notes.txt").write_text("precious")
    paths["user file"] = root / "notes.txt"
    (root / "mine.jsonl").write_text('{"image_index": 0, "prompt_id": "D", "caption": "mine", "source": "me"}\n')
    paths["user jsonl"] = root / "mine.jsonl"
    (root / "mine.html").write_text("<!DOCTYPE html><title>my notes</title>\n")
    paths["user html"] = root / "mine.html"
    lists = root / "imagenet-lists"
    lists.mkdir()
    for name in ("ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt"):
        (lists / name).write_text("")
    paths["imagenet lists"] = lists
    return paths


# Each folder writer: (its command line writing to OUT, the target kinds that are its own output).
FOLDER_WRITERS: dict[str, Callable[[dict[str, Path], Path], list[str]]] = {
    "data make-demo": lambda w, out: ["data", "make-demo", out, "--max-train-per-class", "3", "--test-per-class", "1"],
    "data longtail": lambda w, out: ["data", "longtail", w["list"], out, "--max-count", "2"],
    "data imagenet-lt": lambda w, out: ["data", "imagenet-lt", w["imagenet lists"], w["user dataset"], out],
    "models make-tiny --overwrite": lambda w, out: ["models", "make-tiny", "blip", out, "--overwrite"],
    "caption --overwrite": lambda w, out: [
        "caption",
        w["list"],
        "--model",
        w["model"],
        "--out",
        out,
        "--overwrite",
        "--max-new-tokens",
        "2",
        "--no-progress",
        "--threads",
        "1",
    ],  # fmt: skip
    "caption import --overwrite": lambda w, out: [
        "caption",
        "import",
        w["captions"].with_name("captions.jsonl"),
        "--dataset",
        w["list"],
        "--out",
        out,
        "--prompt-id",
        "D",
        "--overwrite",
        "--no-progress",
    ],  # fmt: skip
    "caption merge": lambda w, out: ["caption", "merge", out, w["captions"]],
    "encode --overwrite": lambda w, out: ["encode", w["captions"], "--out", out, "--overwrite", "--quiet"],
    "train": lambda w, out: [
        "train",
        "--train",
        w["list"],
        "--output",
        out,
        "--arch",
        "resnet32",
        "--width",
        "0.25",
        "--image-size",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--threads",
        "1",
        "--no-progress",
        "--device",
        "cpu",
    ],  # fmt: skip
    "train --resume": lambda w, out: [*FOLDER_WRITERS["train"](w, out), "--resume"],
    "eval": lambda w, out: [
        "eval",
        w["run"],
        w["list"],
        "--out",
        out,
        "--num-workers",
        "0",
        "--no-progress",
        "--no-plots",
    ],  # fmt: skip
    "plot": lambda w, out: ["plot", w["run"], "--out", out],
    "demo": lambda w, out: ["demo", "--out", out, "--no-progress"],
}
OWN = {"models make-tiny --overwrite": "model", "caption --overwrite": "captions",
       "caption import --overwrite": "captions", "caption merge": "captions", "encode --overwrite": "features",
       "train --resume": "run", "eval": "eval", "data longtail": "vlmkd dataset"}  # fmt: skip
FOREIGN_FOLDERS = ("captions", "features", "run", "eval", "model", "hf model", "vlmkd dataset", "user dataset",
                   "user folder", "user file")  # fmt: skip


@pytest.mark.parametrize("target", FOREIGN_FOLDERS)
@pytest.mark.parametrize("writer", FOLDER_WRITERS)
def test_no_folder_writer_replaces_or_writes_into_what_it_did_not_make(world, tmp_path, capsys, writer, target):
    if OWN.get(writer) == target or (writer == "train" and target == "run"):
        pytest.skip("its own kind of output (the controls below)")
    out = Path(shutil.copytree(world[target], tmp_path / "t") if world[target].is_dir()
               else shutil.copyfile(world[target], tmp_path / "t"))  # fmt: skip
    before = tree(out)
    argv = [str(a) for a in FOLDER_WRITERS[writer](world, out)]
    capsys.readouterr()
    assert vlmkd_main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"vlmkd {argv[0]}: error: ") and str(out) in err[0], err
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["t"]  # nothing beside


@pytest.mark.parametrize("writer", ["data longtail", "plot", "models make-tiny --overwrite", "eval"])
def test_a_folder_writer_writes_a_new_folder_and_over_its_own_output(world, tmp_path, writer):
    out = tmp_path / "out"
    argv = [str(a) for a in FOLDER_WRITERS[writer](world, out)]
    assert vlmkd_main(argv) == 0 and any(out.iterdir())
    assert vlmkd_main(argv) == 0  # again, over its own output


@pytest.mark.parametrize("target", ["captions", "features", "eval", "model"])
@pytest.mark.parametrize("writer", ["data longtail", "models make-tiny --overwrite", "plot", "eval"])
def test_nothing_is_written_inside_a_store_evaluation_results_or_a_model(world, tmp_path, capsys, writer, target):
    folder = Path(shutil.copytree(world[target], tmp_path / "t"))
    before = tree(folder)
    argv = [str(a) for a in FOLDER_WRITERS[writer](world, folder / "sub")]
    capsys.readouterr()
    assert vlmkd_main(argv) == 2
    assert f"{folder / 'sub'}: is inside " in capsys.readouterr().err
    assert tree(folder) == before


# ------------------------------------------------------------------------------------------ file writers
FILE_WRITERS: dict[str, Callable[[dict[str, Path], Path], list[str]]] = {
    "caption export": lambda w, out: ["caption", "export", w["captions"], "--out", out],
    "caption-info --html": lambda w, out: ["caption-info", w["captions"], "--html", out],
}
FILE_TARGETS = {
    "a store's manifest": lambda w: ("captions", "manifest.json"),
    "a file in a feature store": lambda w: ("features", "captions.jsonl"),
    "evaluation results' metrics": lambda w: ("eval", "metrics.json"),
    "a file in a model": lambda w: ("model", "gallery.html"),
    "a run's config": lambda w: ("run", "config.yaml"),
    "a user's file": lambda w: ("user file", None),
    "a user's JSONL": lambda w: ("user jsonl", None),
    "a user's HTML": lambda w: ("user html", None),
    "a folder": lambda w: ("user folder", None),
}


@pytest.mark.parametrize("target", FILE_TARGETS)
@pytest.mark.parametrize("writer", FILE_WRITERS)
def test_no_file_writer_replaces_a_file_it_did_not_write_or_writes_into_a_store(world, tmp_path, capsys, writer,
                                                                                 target):  # fmt: skip
    kind, name = FILE_TARGETS[target](world)
    source = world[kind]
    copy = tmp_path / source.name
    shutil.copytree(source, copy) if source.is_dir() else shutil.copyfile(source, copy)
    out = copy / name if name else copy
    before = tree(copy)
    argv = [str(a) for a in FILE_WRITERS[writer](world, out)]
    capsys.readouterr()
    assert vlmkd_main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"error: {out}: " in err[0], err
    assert tree(copy) == before


@pytest.mark.parametrize("writer", FILE_WRITERS)
def test_a_file_writer_writes_a_new_file_and_over_its_own_output(world, tmp_path, writer):
    suffix = ".jsonl" if "export" in writer else ".html"
    out = tmp_path / f"out{suffix}"
    argv = [str(a) for a in FILE_WRITERS[writer](world, out)]
    assert vlmkd_main(argv) == 0
    first = out.read_bytes()
    assert vlmkd_main(argv) == 0 and out.read_bytes() == first
