"""Fault-injection suite: figures each test measures are gathered and printed at the end of the run.

Set VLMKD_FAULT_FIGURES=path.json to also write them to a file (docs/reliability.md quotes them).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

import pytest

FIGURES: dict[str, list[dict[str, Any]]] = defaultdict(list)


@pytest.fixture(scope="session")
def figures() -> dict[str, list[dict[str, Any]]]:
    """stage -> one record per kill point (units at kill, units lost, resume seconds...)."""
    return FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("fault injection figures")
    for stage, records in FIGURES.items():
        for record in records:
            terminalreporter.write_line(f"{stage:8s} " + "  ".join(f"{k}={v}" for k, v in record.items()))
    target = os.environ.get("VLMKD_FAULT_FIGURES")
    if target:
        with open(target, "w") as handle:
            json.dump(FIGURES, handle, indent=2)
