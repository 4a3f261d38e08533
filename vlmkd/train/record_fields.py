"""What the metrics records hold, by name, and the quantities derived from them that every viewer shows.

metrics.jsonl, the TensorBoard sink and `vlmkd plot` read the same records (`vlmkd.train.metrics_log`): one
per logged step (`kind: step`) and one per epoch (`kind: epoch`). This module names their fields for display
and derives the VLM-KD loss as a fraction of chance, so that both viewers agree on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Loss terms as the objective names them, with the label a viewer shows.
LOSS_TERMS: dict[str, str] = {
    "loss": "total",
    "task_loss": "task",
    "vlmkd_loss": "VLM-KD",
    "kd_loss": "KD (vision teacher)",
}
# VLM-KD loss / its chance level (log batch): 1 at chance, 0 when every caption is matched. The trainer logs
# it as FRACTION (older logs: `vlmkd_frac`); records without it get loss / log(batch size).
FRACTION = "vlmkd_fraction"
FRACTION_FIELDS = (FRACTION, "vlmkd_frac")
TEMPERATURE = "temperature"
LEARNING_RATE = "lr"
IMAGES_PER_S = "images_per_s"


def vlmkd_fraction(record: Mapping[str, Any], batch_size: int | None) -> float | None:
    """The record's VLM-KD loss over log(batch size) (the loss of guessing among a batch's captions).

    A record that carries the fraction already keeps its own; None when the term is off (its loss is an
    exact zero), absent, or the batch size is unknown.
    """
    for name in FRACTION_FIELDS:
        if isinstance(record.get(name), (int, float)):
            return float(record[name])
    loss = record.get("vlmkd_loss")
    if loss is None or loss == 0.0 or batch_size is None or batch_size < 2:
        return None
    return float(loss) / math.log(batch_size)
