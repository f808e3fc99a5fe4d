"""The GPU suite: the GPU against the CPU reference, in both kernel modes. Every test here is
marked ``gpu`` and is skipped, with the backend's reason, where no usable CUDA GPU is.

Most tests take the ``mode`` fixture and run twice on the GPU: with the reference ops
(``"reference"``: cnn_xp.ops on CuPy) and with the accelerator (``"auto"``: the CUDA
kernels of cnn_xp.kernels.cuda where they apply). The CPU side of every comparison runs
the reference (``on_cpu_reference``). In ``"auto"`` on a real GPU a test also fails when a
kernel switched itself off (a compile failure): the accelerated path must really run.

``CNN_XP_GPU_DRY_RUN=1`` runs the suite with the CPU standing in for the GPU (device
``"cpu"``; ``"auto"`` then means the CPU accelerator, where it is built): it proves the
suite's own code on machines without a GPU, so its one real run on a GPU does not fail on a
bug in the tests. Tests of CUDA-only behaviour skip in a dry run.
"""
import sys
from pathlib import Path

import pytest

from cnn_xp import backend, dispatch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gpu_helpers import DRY_RUN, MODES, cuda_failure, kernel_mode  # noqa: E402


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


@pytest.fixture(params=MODES)
def mode(request, gpu):
    """The kernel mode of the device side: "reference" or "auto" (set for the test)."""
    dispatch.reset()
    with kernel_mode(request.param):
        yield request.param
        if request.param == "auto" and gpu == "gpu":
            assert dispatch.table("gpu")["conv2d"] == "cuda", dispatch.table("gpu")
            assert cuda_failure() is None, f"the CUDA kernels switched off: {cuda_failure()}"
    dispatch.reset()
