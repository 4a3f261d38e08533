"""A/B experiments on your own data: baseline vs VLM-KD arms over seeds, paired by seed, with a report.

`vlmkd experiment` (`vlmkd.experiment.cli`) and `run_experiment(ExperimentSpec(...))` train every (arm, seed)
once into `OUT/runs/ARM/seedS/` (resumable; shared by several processes through lock files) and write
`OUT/REPORT.md`, `OUT/per_class.png` and `OUT/results.json`.
"""

from vlmkd.experiment.experiment import ExperimentResult, ExperimentSpec, run_experiment
from vlmkd.experiment.runner import Arm

__all__ = ["Arm", "ExperimentResult", "ExperimentSpec", "run_experiment"]
