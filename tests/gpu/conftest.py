"""The GPU suite: CPU <-> GPU parity and GPU training. Every test here is marked ``gpu`` and is
skipped, with the backend's reason, where no usable CUDA GPU is.

``CNN_XP_GPU_DRY_RUN=1`` runs the suite with the CPU standing in for the GPU (both sides of
every comparison on NumPy): it proves the suite's own code on machines without a GPU, so its
one real run on a GPU does not fail on a bug in the tests.
"""
import os
from pathlib import Path

import pytest

from cnn_xp import backend

HERE = Path(__file__).resolve().parent
DRY_RUN = os.environ.get("CNN_XP_GPU_DRY_RUN") == "1"


def pytest_collection_modifyitems(config, items):
    mine = [item for item in items if HERE in Path(str(item.fspath)).resolve().parents]
    if not mine:
        return
    ok, reason = backend.gpu_status()
    for item in mine:
        item.add_marker(pytest.mark.gpu)
        if not ok and not DRY_RUN:
            item.add_marker(pytest.mark.skip(reason=f"no usable GPU: {reason}"))


@pytest.fixture(scope="session")
def gpu() -> str:
    """The device name under test: "gpu" ("cpu" in a dry run)."""
    return "cpu" if DRY_RUN else "gpu"
