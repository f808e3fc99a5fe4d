"""Which variant of the compiled kernels runs: the extension ``_native`` (built by setup.py at
install, absent where it was not) and the instruction set chosen for this CPU.

``_native`` holds each kernel three times: ``"baseline"`` (any x86-64: SSE2), ``"avx2"``
(AVX2 + FMA) and ``"avx512"`` (AVX-512 F/DQ/BW/VL). The highest one the CPU runs is chosen
when this module is imported; ``$CNN_XP_CPU_ISA`` (``baseline``, ``avx2`` or ``avx512``)
asks for a lower one, capped at what the CPU runs (so tests and comparisons can run every
variant a machine has). Nothing is compiled or loaded from anywhere but the installed package.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import platform

ENV_ISA = "CNN_XP_CPU_ISA"
ISAS = ("baseline", "avx2", "avx512")  # lowest first
_MODULE = __name__.rpartition(".")[0] + "._native"


def _load():
    """(the extension module, "") or (None, why it is not there)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, (f"cnn_xp's compiled CPU kernels are built for x86-64 only (this machine is "
                      f"{platform.machine() or 'unknown'}); the reference runs")
    try:
        spec = importlib.util.find_spec(_MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None, ("cnn_xp was installed without its compiled CPU kernels (no working C compiler "
                      "at install time); the reference runs")
    try:
        return importlib.import_module(_MODULE), ""
    except ImportError as exc:
        return None, f"cnn_xp's compiled CPU kernels do not load ({exc}); the reference runs"


native, load_error = _load()
_isa: str | None = None
_reason = load_error
_lanes: dict[tuple[str, int], int] = {}


def supported() -> tuple[str, ...]:
    """The variants this CPU runs, lowest first (none without the extension)."""
    return tuple(native.supported_isas()) if native is not None else ()


def requested() -> str:
    """``$CNN_XP_CPU_ISA`` as given (stripped, lower case), '' when unset."""
    return os.environ.get(ENV_ISA, "").strip().lower()


def reset() -> None:
    """Choose the variant again from the CPU and ``$CNN_XP_CPU_ISA``."""
    global _isa, _reason
    _isa, _reason = None, load_error
    if native is None:
        return
    runs = supported()
    wanted = requested()
    if not wanted:
        _isa = runs[-1]
    elif wanted in ISAS:
        _isa = [name for name in runs if ISAS.index(name) <= ISAS.index(wanted)][-1]
    else:
        _reason = f"{ENV_ISA}={wanted!r} is not one of {', '.join(ISAS)}; the reference runs"


def isa() -> str | None:
    """The variant that runs, or None when the kernels cannot run (see ``reason``)."""
    return _isa


def reason() -> str:
    """Why the kernels cannot run; '' when they can."""
    return _reason


def lanes(variant: str, dtype) -> int:
    """Values per vector of ``variant`` for ``dtype`` (float32 or float64): the output-channel
    block of the packed weights."""
    key = (variant, dtype.itemsize)
    if key not in _lanes:
        _lanes[key] = native.lanes(variant, dtype.itemsize)
    return _lanes[key]


@contextlib.contextmanager
def forced(variant: str):
    """Run ``variant`` inside the block (tests: every variant the CPU has, in one process).
    ValueError where the CPU cannot run it or the extension is missing."""
    global _isa
    if variant not in supported():
        raise ValueError(f"this machine cannot run the {variant!r} kernels (it runs: {', '.join(supported()) or 'none'})")
    before = _isa
    _isa = variant
    try:
        yield
    finally:
        _isa = before


reset()
