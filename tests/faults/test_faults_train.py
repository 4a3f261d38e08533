"""SIGKILL `vlmkd train` at six points in a row, resume it, and compare with an uninterrupted run byte for byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _cases import write_flat_dataset

from vlmkd.errors import InputError

from ._kill import KillPoint, kill_chain, killed, run_and_kill, run_cli, unit_seconds

pytestmark = pytest.mark.faults

EPOCHS = 14  # the unit of resuming: one checkpoint directory per epoch; the kills use at most ~7
EPOCH_DIR = re.compile(r"epoch_\d{4}")
PROMPTS = {"G": "Describe this image.", "T1": "What is the main object?"}
# Units are checkpoint directories, -1 before config.yaml is written. The first run dies while Python starts, the
# second once the run directory exists but before the first epoch ends, the others after or inside later epochs.
POINTS = (KillPoint(0), KillPoint(1), KillPoint(1), KillPoint(1, 0.5), KillPoint(2, 0.9), KillPoint(1, 0.25))
TIMING_FIELDS = {"seconds", "images_per_s"}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 small PNGs in 3 classes and a feature store for them (synthetic captions through all-MiniLM-L6-v2)."""
    from vlmkd.caption.store import CaptionStore, make_manifest, prompt_set_record
    from vlmkd.data import load_image_list
    from vlmkd.encode import encode_captions

    work = tmp_path_factory.mktemp("train-faults")
    write_flat_dataset(work / "data", 18)
    (work / "data" / "classnames.txt").write_text("zero\none\ntwo\n")
    dataset = load_image_list(work / "data" / "train.txt")
    prompt_set = prompt_set_record("faults", PROMPTS)
    manifest = make_manifest(dataset_fingerprint=dataset.fingerprint(), num_images=len(dataset), prompt_set=prompt_set,
                             engine="fake", model_id="fake-vlm")  # fmt: skip
    store = CaptionStore.create(work / "captions", manifest)
    store.write_shard(0, [(i, s.path, p, f"a {p} caption of digit {i}") for i, s in enumerate(dataset.samples)
                          for p in PROMPTS])  # fmt: skip
    encode_captions(store, work / "features", progress=False)
    return work


def train_args(work: Path, output: Path) -> list:
    return ["train", "--train", work / "data" / "train.txt", "--output", output, "--features", work / "features",
            "--vlmkd-weight", "0.5", "--caption-mix", "sample", "--task-loss", "balanced_softmax", "--arch",
            "resnet32", "--width", "0.25", "--image-size", "8", "--batch-size", "6", "--epochs", EPOCHS,
            "--num-workers", "0", "--threads", "1", "--log-every", "1", "--device", "cpu", "--no-progress",
            "--resume"]  # fmt: skip


def epochs_done(output: Path):
    def count() -> int:
        if not (output / "config.yaml").exists():
            return -1
        return sum(1 for p in output.iterdir() if EPOCH_DIR.fullmatch(p.name))

    return count


@pytest.fixture(scope="module")
def reference(work: Path):
    out = work / "reference"
    run = run_and_kill(train_args(work, out), work, epochs_done(out), None)
    assert run.returncode == 0, run.stderr
    return out, run


def without_output(document: dict) -> dict:
    """A state.json / model.json without the run directory it names (the only setting two runs may differ in)."""
    document = json.loads(json.dumps(document))
    document.get("config", {}).pop("output", None)
    return document


def same_checkpoint(a: Path, b: Path) -> bool:
    """Weights and optimizer/RNG state byte-equal, JSON equal apart from the output path."""
    for name in ("model.safetensors", "train_state.safetensors"):
        if (a / name).read_bytes() != (b / name).read_bytes():
            return False
    documents = [
        [without_output(json.loads((d / n).read_text())) for d in (a, b)] for n in ("model.json", "state.json")
    ]
    return all(x == y for x, y in documents)


@pytest.fixture(scope="module")
def chain(work: Path, reference):
    from vlmkd.train.checkpoint import load_classifier

    ref_out, ref_run = reference
    out = work / "killed"

    def inspect() -> dict:
        """What a reader sees in the killed run directory, and whether each checkpoint in it is the final one."""
        seen: dict = {"names": sorted(p.name for p in out.iterdir()) if out.is_dir() else []}
        try:
            load_classifier(out)
            seen["classifier"] = "loaded"
        except InputError as error:
            seen["classifier"] = str(error)
        epochs = [name for name in seen["names"] if EPOCH_DIR.fullmatch(name)]
        seen["epochs"] = len(epochs)
        seen["wrong_checkpoints"] = [e for e in epochs if not same_checkpoint(out / e, ref_out / e)]
        return seen

    return kill_chain(train_args(work, out), work, epochs_done(out), POINTS, unit_seconds(ref_run), inspect)


@pytest.mark.parametrize("k", range(len(POINTS)), ids=[f"{k}-{p.id}" for k, p in enumerate(POINTS)])
def test_killed_training_leaves_no_classifier_a_reader_takes_as_final(chain, k: int) -> None:
    run, seen = chain.kills[k], chain.snapshots[k]
    assert killed(run), f"run {k} ended on its own (rc {run.returncode}) before its kill point: {run.stderr[-2000:]}"
    assert "model.safetensors" not in seen["names"]
    assert "not a vlmkd classifier" in seen["classifier"]


@pytest.mark.parametrize("k", range(len(POINTS)), ids=[f"{k}-{p.id}" for k, p in enumerate(POINTS)])
def test_every_checkpoint_present_at_a_kill_equals_the_uninterrupted_runs(chain, k: int) -> None:
    assert chain.snapshots[k]["wrong_checkpoints"] == []


def test_training_resumed_after_six_kills_equals_the_uninterrupted_run_byte_for_byte(work, chain, reference, figures):
    ref_out, ref_run = reference
    final, out = chain.final, work / "killed"
    assert final.returncode == 0, final.stderr
    assert (out / "model.safetensors").read_bytes() == (ref_out / "model.safetensors").read_bytes()
    assert without_output(json.loads((out / "model.json").read_text())) == without_output(
        json.loads((ref_out / "model.json").read_text())
    )
    epochs = sorted(p.name for p in ref_out.iterdir() if EPOCH_DIR.fullmatch(p.name))
    assert len(epochs) == EPOCHS and all(same_checkpoint(out / e, ref_out / e) for e in epochs)

    def records(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]

    assert records(out) == records(ref_out)  # every step's losses, in order, none doubled or missing
    leftovers = sorted(name for name in (p.name for p in out.iterdir()) if name.startswith("."))
    figures["train"].append({
        "kill_points": len(chain.kills), "epochs_at_each_kill": [s["epochs"] for s in chain.snapshots],
        "epochs": EPOCHS, "weights_differing": 0, "leftover_temporary_dirs": leftovers,
        "uninterrupted_s": round(ref_run.seconds, 1), "final_rerun_s": round(final.seconds, 1),
    })  # fmt: skip


def test_resume_after_a_kill_inside_the_final_save_rewrites_the_classifier(work, reference, tmp_path) -> None:
    """The final classifier is written after the last checkpoint, in place: a kill while `model.safetensors` is
    half written (and before `model.json`) leaves what this test recreates; `--resume` must rewrite it."""
    import shutil

    ref_out, _ = reference
    out = Path(shutil.copytree(ref_out, tmp_path / "run"))
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (out / "model.json").unlink()
    rerun = run_cli(train_args(work, out), tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "model.safetensors").read_bytes() == weights
    assert without_output(json.loads((out / "model.json").read_text())) == without_output(
        json.loads((ref_out / "model.json").read_text())
    )


def test_resume_removes_the_temporary_checkpoint_a_kill_inside_a_save_left(work, reference, tmp_path) -> None:
    """Recreates a kill inside the save of the last epoch (by another process id) and resumes in this process."""
    import shutil

    from vlmkd.cli import main as vlmkd_main

    ref_out, _ = reference
    out = Path(shutil.copytree(ref_out, tmp_path / "run"))
    for name in ("model.safetensors", "model.json"):
        (out / name).unlink()
    stale = out / f".tmp_epoch_{EPOCHS:04d}_424242"
    (out / f"epoch_{EPOCHS:04d}").rename(stale)
    (stale / "train_state.safetensors").write_bytes(b"half")
    assert vlmkd_main([str(a) for a in train_args(work, out)]) == 0
    assert (out / "model.safetensors").read_bytes() == (ref_out / "model.safetensors").read_bytes()
    assert not stale.exists()
