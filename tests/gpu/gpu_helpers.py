"""Helpers of the GPU suite (tests/gpu): the dry-run switch, kernel modes, host arrays."""
import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from cnn_xp import backend, dispatch

DRY_RUN = os.environ.get("CNN_XP_GPU_DRY_RUN") == "1"
MODES = ("reference", "auto")
TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # op_cases, tiny_idx


@contextlib.contextmanager
def kernel_mode(mode):
    """Run the block in kernel ``mode`` (None: the environment's); the previous mode after."""
    before = dispatch.mode()
    dispatch.set_mode(mode)
    try:
        yield
    finally:
        dispatch.set_mode(before)


def on_cpu_reference(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the reference ops everywhere (the CPU side of a comparison)."""
    with kernel_mode("reference"):
        return fn(*args, **kwargs)


def cuda_failure():
    """Why the CUDA kernels switched themselves off in this process (None: they are on)."""
    from cnn_xp.kernels.cuda import launch
    return launch.failure()


def host(a):
    """A NumPy copy of a device array (None stays None)."""
    return None if a is None else backend.to_numpy(a)


def assert_close(got, want, dtype, what="", float32_tol=1e-4, float64_tol=1e-10):
    """Same shape and dtype (``dtype``: no silent upcast); values within the tolerance
    relative to the array's scale (NaN where NaN)."""
    g, w = host(got), host(want)
    assert g.shape == w.shape, f"{what}: shape {g.shape} != {w.shape}"
    assert g.dtype == w.dtype == np.dtype(dtype), f"{what}: dtype {g.dtype} / {w.dtype}"
    tol = float32_tol if dtype == "float32" else float64_tol
    finite = np.isfinite(w)
    scale = max(1.0, float(np.abs(w[finite]).max())) if finite.any() else 1.0
    np.testing.assert_allclose(g, w, rtol=tol, atol=tol * scale, equal_nan=True, err_msg=what)
