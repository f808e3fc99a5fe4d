"""The CPU accelerator: compiled C kernels for convolution and max pooling, behind the seam.

``cnn_xp.dispatch`` imports this module (nothing else in the library does) and, where
``status()`` says it is usable, runs the functions below instead of the reference's
(``cnn_xp.ops``) for the ops in ``OPS``. They have exactly the reference's signatures and
semantics; their results equal the reference's up to float rounding.

The kernels live in the extension ``cnn_xp.kernels.cpu._native`` (``_native.c``,
``kernels_body.h``), which ``pip install`` builds with the C compiler present at install
time (setup.py), for x86-64 only. It holds a baseline (SSE2), an AVX2 + FMA and an AVX-512
variant of every kernel; the highest one this CPU runs is chosen at import
(``$CNN_XP_CPU_ISA=baseline|avx2|avx512`` asks for a lower one). Nothing is compiled, cached
or loaded from a path at run time. Without the extension (no compiler at install time,
another architecture), ``status()`` is False with the reason, and the reference runs.

Arrays are NCHW-shaped, of any memory order; the kernels work on channels-last (NHWC)
memory, so their outputs are NCHW views of NHWC memory, which the next kernel reads without
a copy. NumPy float32 and float64 arrays are served; any other call (another dtype or array
type, mixed dtypes, padding as large as the conv kernel, empty arrays) runs the reference
for that call, and its cache records that, so the backward runs the reference too.
"""
from __future__ import annotations

import numpy as np

from . import _variant
from .conv import conv2d_backward, conv2d_forward
from .pool import maxpool2d_backward, maxpool2d_forward

NAME = "cpu"
OPS = ("conv2d", "maxpool2d")
ENV_ISA = _variant.ENV_ISA


def status() -> tuple[bool, str]:
    """(usable, reason): whether the extension is installed and loads, and a variant of it
    runs on this CPU; reason ('' when usable) says why not, in one line. Cheap: builds and
    runs nothing."""
    return _variant.isa() is not None, _variant.reason()


def details() -> dict:
    """What ``cnn-xp doctor`` and ``cnn-xp bench`` show: the variant that runs (``isa``:
    "avx512", "avx2", "baseline", or None), those the CPU supports, the one asked for by
    ``$CNN_XP_CPU_ISA``, lanes per dtype, and the extension's file."""
    usable, reason = status()
    native = _variant.native
    isa = _variant.isa()
    return {
        "name": NAME,
        "usable": usable,
        "reason": reason,
        "ops": OPS,
        "isa": isa,
        "isas_supported": _variant.supported(),
        "isa_requested": _variant.requested() or None,
        "lanes": ({dtype: _variant.lanes(isa, np.dtype(dtype)) for dtype in ("float32", "float64")}
                  if isa is not None else {}),
        "file": getattr(native, "__file__", None),
    }


def flush_denormals(enabled: bool) -> bool:
    """Flush subnormal floats to zero on the calling thread (``enabled=True``), or stop
    (False); returns the previous setting of this thread. It sets the flush-to-zero and
    denormals-are-zero bits of the thread's MXCSR register, so it governs every SSE/AVX
    float operation this thread runs, NumPy's included (subnormal results become zero,
    subnormal inputs count as zero). Per thread: threads already running keep their own
    setting (each that should flush calls this itself); a thread started later by this one
    begins with this one's setting, as the OS copies the register into a new thread.
    Without the extension (or off x86-64) it changes nothing and returns False."""
    if _variant.native is None:
        return False
    return _variant.native.flush_denormals(bool(enabled))


__all__ = ["NAME", "OPS", "ENV_ISA", "status", "details", "flush_denormals",
           "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward"]
