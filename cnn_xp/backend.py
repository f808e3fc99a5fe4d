"""The device story in one page: which array module (``xp``) runs the math.

``"cpu"`` is NumPy; ``"gpu"`` is CuPy on a CUDA device. This is the only module that
imports cupy, and it does so lazily, so cnn_xp imports and runs on machines without it.
Layer and op code never names numpy or cupy: it asks ``xp_of(array)``.
"""
from __future__ import annotations

import ctypes
import importlib

import numpy

from .errors import DeviceError

DEVICES = ("cpu", "gpu")
FLOAT_DTYPES = ("float32", "float64")  # the dtypes a model can compute in


class GPUUnavailableError(DeviceError):
    """Asked for ``"gpu"`` where no usable CUDA GPU is; the message says why."""


_gpu_probe: tuple[object | None, str] | None = None  # (cupy module or None, reason)


def _import_cupy():
    """Import hook (tests replace it to simulate a missing cupy)."""
    return importlib.import_module("cupy")


def _probe_gpu() -> tuple[object | None, str]:
    """Return (cupy, "") when a GPU is usable, else (None, reason). Cached."""
    global _gpu_probe
    if _gpu_probe is not None:
        return _gpu_probe
    try:
        cp = _import_cupy()
    except ImportError as exc:
        _gpu_probe = (None, f"cupy is not installed ({exc}); install the extra: pip install 'cnn_xp[gpu]'")
        return _gpu_probe
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, or a missing libcuda (no driver)
        text = str(exc)
        if "InsufficientDriver" in text or "driver" in text.lower() or "libcuda" in text:
            reason = f"no usable CUDA driver ({text.strip() or type(exc).__name__})"
        elif "NoDevice" in text:
            reason = f"no CUDA device found ({text.strip()})"
        else:
            reason = f"CUDA is not usable ({type(exc).__name__}: {text.strip()})"
        _gpu_probe = (None, reason)
        return _gpu_probe
    if count < 1:
        _gpu_probe = (None, "no CUDA device found (the driver reports 0 GPUs)")
        return _gpu_probe
    _gpu_probe = (cp, "")
    return _gpu_probe


def reset_gpu_probe() -> None:
    """Forget the cached GPU probe (for tests)."""
    global _gpu_probe
    _gpu_probe = None


def gpu_status() -> tuple[bool, str]:
    """(usable, reason): reason says why not, empty when usable."""
    cp, reason = _probe_gpu()
    return cp is not None, reason


def gpu_available() -> bool:
    return gpu_status()[0]


def cupy():
    """The cupy module, or GPUUnavailableError saying why it can't be used."""
    cp, reason = _probe_gpu()
    if cp is None:
        raise GPUUnavailableError(f"GPU requested but unavailable: {reason}")
    return cp


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    return device


def get_xp(device: str = "cpu"):
    """The array module for a device name: numpy for "cpu", cupy for "gpu"."""
    if check_device(device) == "cpu":
        return numpy
    return cupy()


def _is_cupy_array(array) -> bool:
    return type(array).__module__.startswith("cupy")


def xp_of(array):
    """The array module an array lives in (numpy for anything that is not a cupy array)."""
    if _is_cupy_array(array):
        return cupy()
    return numpy


def device_of(array) -> str:
    return "gpu" if _is_cupy_array(array) else "cpu"


def to_device(array, device: str):
    """Copy ``array`` to ``device`` (no copy when already there)."""
    if check_device(device) == "cpu":
        return to_numpy(array)
    cp = cupy()
    return cp.asarray(array)


def to_numpy(array):
    """A NumPy array (host copy) of a numpy/cupy array or scalar."""
    if _is_cupy_array(array):
        return array.get()
    return numpy.asarray(array)


def as_dtype(dtype):
    """A NumPy dtype object from a name or dtype (also valid for cupy)."""
    return numpy.dtype(dtype)


def synchronize(device: str) -> None:
    """Wait for queued GPU work (for timing); no-op on the CPU."""
    if device == "gpu":
        cupy().cuda.Device().synchronize()


def retain_host_memory() -> bool:
    """Ask glibc's malloc to keep freed memory mapped for reuse (process-wide; True if it
    took). By default glibc returns large freed blocks to the OS, so every training step's
    multi-megabyte temporaries come back as fresh pages, each zeroed on its first touch
    (a page fault; docs/cpu-results/ has the measurement). With no trimming and a 32 MB mmap threshold the freed blocks are reused. The cost:
    the process keeps its peak heap. ``cnn-xp`` commands and the benchmark call this;
    library users may. A no-op (False) off glibc (macOS, musl, Windows)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold, 32 << 20))
