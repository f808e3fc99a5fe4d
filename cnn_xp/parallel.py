"""CPU inference on every core: the batch split into one slice per core, each slice run
through the layers on its own thread, with BLAS single-threaded meanwhile.

NumPy runs its copies (im2col, pooling, elementwise ops) on one core, and BLAS
parallelises only the GEMMs; at inference every image is independent, so slices of the
batch can run side by side (NumPy and BLAS release the GIL while they work). Measured on
a 2-core CPU, batch 100: deep_convnet (6.7 MFLOP per image) 9.9 -> 7.9 ms; the smaller zoo
nets (0.8-3.4 MFLOP per image) ran no faster or slower (their time is per-call overhead
and a large fully connected GEMM that already uses both cores), so slicing applies from
``MIN_FLOPS_PER_IMAGE`` and ``MIN_IMAGES_PER_THREAD`` up. ``CNN_XP_THREADS=1`` switches it off.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from .backend import xp_of

ENV_THREADS = "CNN_XP_THREADS"
MIN_FLOPS_PER_IMAGE = 5_000_000   # forward multiply-adds x 2
MIN_IMAGES_PER_THREAD = 16

_executor: ThreadPoolExecutor | None = None
_blas = None  # threadpoolctl.ThreadpoolController (False: not installed), made on first use


class ThreadSettingError(ValueError):
    """CNN_XP_THREADS is set to something other than a positive integer."""


def cpu_threads() -> int:
    """Cores this process may use, or ``CNN_XP_THREADS`` when set (a positive integer)."""
    value = os.environ.get(ENV_THREADS, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ThreadSettingError(f"{ENV_THREADS} must be a positive integer, got {value!r}")
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def inference_slices(batch: int, flops_per_image: int) -> int:
    """How many slices (threads) a CPU inference batch is run in: 1 means no slicing
    (also where threadpoolctl, which keeps BLAS to one thread a slice, is missing)."""
    if flops_per_image < MIN_FLOPS_PER_IMAGE:
        return 1
    slices = max(1, min(cpu_threads(), batch // MIN_IMAGES_PER_THREAD))
    return slices if slices == 1 or _blas_controller() is not None else 1


def _blas_controller():
    """A threadpoolctl.ThreadpoolController (made once), or None without threadpoolctl."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas = False
        else:
            _blas = ThreadpoolController()
    return _blas or None


def map_slices(fn, x, slices: int):
    """``fn`` applied to ``slices`` near-equal slices of ``x`` along axis 0 on a thread
    pool, BLAS single-threaded meanwhile; the results concatenated along axis 0."""
    global _executor
    if _executor is None or _executor._max_workers < slices:
        _executor = ThreadPoolExecutor(max_workers=slices, thread_name_prefix="cnn_xp")
    bounds = [len(x) * k // slices for k in range(slices + 1)]
    with _blas_controller().limit(limits=1, user_api="blas"):
        parts = list(_executor.map(fn, [x[a:b] for a, b in zip(bounds, bounds[1:])]))
    return xp_of(parts[0]).concatenate(parts)
