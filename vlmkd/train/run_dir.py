"""Which output folders a training run may write into, so that two runs are never mixed in one folder."""

from __future__ import annotations

from pathlib import Path

from vlmkd.errors import InputError
from vlmkd.folder_kind import RUN, folder_kind, refuse_unless
from vlmkd.train.checkpoint import MODEL_WEIGHTS, latest_checkpoint


def check_run_directory(output: Path, resume: str | None) -> None:
    """Refuse an `output` that holds another stage's files, or (without `resume`) a run with checkpoints.

    A folder left by a run killed before its first checkpoint (only `config.yaml` / `metrics.jsonl`) holds
    nothing to lose and is started again. Reads only; called before anything is written.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: exists and is not a directory; choose another --output")
    refuse_unless(output, {RUN}, stage="training run", flag="--output")
    if resume is not None or folder_kind(output).kind != RUN:
        return
    finished = (output / MODEL_WEIGHTS).exists()
    checkpoints = sorted(output.glob("epoch_[0-9][0-9][0-9][0-9]*"))
    if finished or latest_checkpoint(output) is not None:
        state = "a finished training run" if finished else "an unfinished training run"
        raise InputError(
            f"{output}: holds {state} ({len(checkpoints)} checkpoint(s)); pass --resume to continue it, or choose "
            "another --output (delete the folder to start over): a new run here would mix two runs' checkpoints"
        )
