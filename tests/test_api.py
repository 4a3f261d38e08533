"""The curated `import vlmkd` face: cheap and side-effect free, callable stages, and the README's notebook example."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vlmkd

README = Path(__file__).resolve().parents[1] / "README.md"


def _python(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    return result.stdout.strip()


def test_import_vlmkd_loads_nothing_heavy_and_changes_no_global_state() -> None:
    code = (
        "import sys\n"
        "import vlmkd\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'transformers', 'numpy') if m in sys.modules]\n"
        "import torch, matplotlib\n"
        "threads = torch.get_num_threads()\n"
        "vlmkd.caption, vlmkd.encode, vlmkd.train, vlmkd.evaluate, vlmkd.TrainConfig, vlmkd.EvalResult\n"
        "print(heavy, torch.get_num_threads() == threads, matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    # Under svg (a non-default, non-interactive backend) a silent switch to Agg would show.
    assert _python(code, MPLBACKEND="svg") == "[] True svg False"


def test_plots_leave_the_matplotlib_backend_and_pyplot_alone(tmp_path: Path) -> None:
    code = (
        "import numpy as np, matplotlib\n"
        "from pathlib import Path\n"
        "from vlmkd.reporting.eval_plots import plot_per_class_accuracy\n"
        f"out = Path({str(tmp_path)!r}) / 'p.png'\n"
        "plot = plot_per_class_accuracy(np.array([50.0, 0.0]), np.array([30, 2]), ['a', 'b'], out)\n"
        "import sys\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules, plot.path.stat().st_size > 0,"
        " type(plot.figure).__name__)"
    )
    assert _python(code, MPLBACKEND="svg") == "svg False True Figure"


def test_stages_are_plain_functions_beside_plain_packages() -> None:
    code = (
        "import vlmkd.train.config, vlmkd.caption.store\n"  # a stage's modules first: vlmkd.train stays the function
        "import inspect, sys, vlmkd\n"
        "from vlmkd.caption import CaptionStore\n"
        "stages = (vlmkd.caption, vlmkd.encode, vlmkd.train, vlmkd.evaluate)\n"
        "print(all(inspect.isfunction(s) and s.__module__ == 'vlmkd.pipeline' for s in stages),"
        " type(sys.modules['vlmkd.train']).__name__, callable(sys.modules['vlmkd.train']), CaptionStore.__module__)"
    )
    assert _python(code) == "True module False vlmkd.caption.store"
    assert vlmkd.backends()["reference"].usable  # the function, not the module of the same name
    assert set(vlmkd.__all__) <= set(dir(vlmkd)) | {"__version__"}
    with pytest.raises(vlmkd.InputError, match=r"TrainConfig: epochs must be an integer, got '3'"):
        vlmkd.train(train="x.txt", epochs="3")
    with pytest.raises(vlmkd.InputError, match=r"unknown setting 'learning_rate'"):
        vlmkd.train(train="x.txt", learning_rate=0.1)


def test_train_restores_the_thread_count(tiny_dataset, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    result = vlmkd.train(
        train=tiny_dataset.source, output=tmp_path / "run", arch="resnet32", width=0.25, image_size=8,
        batch_size=6, epochs=1, num_workers=0, progress=False, threads=before + 1,
    )  # fmt: skip
    assert torch.get_num_threads() == before
    assert result.output == tmp_path / "run" and (result.output / "model.safetensors").is_file()
    assert vlmkd.TrainConfig.from_yaml(result.output / "config.yaml").threads == before + 1


def _notebook_example() -> str:
    text = README.read_text()
    found = re.search(r"<!-- notebook-example -->\n```python\n(.*?)```", text, re.DOTALL)
    assert found, "README.md has no notebook example"
    return found.group(1)


@pytest.mark.slow
def test_readme_notebook_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's choice, not the example's: 1 thread is fastest on a busy CPU
    namespace: dict = {}
    try:
        exec(compile(_notebook_example(), str(README), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    result = namespace["result"]
    metrics = json.loads((tmp_path / "nb" / "run" / "eval" / "metrics.json").read_text())
    assert result.top1 == {name: split["top1"] for name, split in metrics["top1"].items()}
    assert set(result.top1) == {"many", "medium", "few", "all"} and result.top1["few"] is not None
    assert len(result.per_class["classnames"]) == len(result.per_class["top1"]) == 10
    assert type(result.figures["per_class"]).__name__ == "Figure"
    assert result.plots["per_class"] == Path("nb/run/eval/per_class_accuracy.png")  # relative, as given
    assert (tmp_path / result.plots["per_class"]).stat().st_size > 0
    assert vlmkd.EvalConfig.from_dict(metrics["config"]).few_threshold == 3  # the evaluation's settings, recorded
    trained = vlmkd.TrainConfig.from_yaml(tmp_path / "nb" / "run" / "config.yaml")
    assert trained.vlmkd_weight == 1.0 and trained.features == Path("nb/features")
