"""Shared test configuration: hardware gates and offline model settings."""

from __future__ import annotations

import os

import pytest
import torch

# Subprocesses (`python -m vlmkd ...`) must load the installed package, not the source tree in the working
# directory (which has no native modules): Python >= 3.11 then leaves the working directory off sys.path.
os.environ["PYTHONSAFEPATH"] = "1"
# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Without a GPU, Triton kernels are tested on the CPU interpreter; it must be chosen before triton loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `requires_cuda` on machines without a GPU, so the suite stays green on CPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "requires_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory):
    """A 3-class dataset of 12 small RGB PNGs (6/4/2 per class) with train.txt and classnames.txt.

    Returns the loaded `ImageList`; its files live in a fresh temporary directory.
    """
    from _cases import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_dataset"))


@pytest.fixture
def tf32_matmul():
    """float32 matmul precision "high" (TF32 allowed) for the test, restored afterwards."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    yield
    torch.set_float32_matmul_precision(before)
