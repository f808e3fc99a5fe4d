"""Argument checks shared by layers and optimizers: one-line ValueErrors that name the bad
argument, raised up front (in constructors, before any array is made or changed).

Nothing here touches array values: ``check_float_input`` reads only an array's ``dtype``,
which NumPy and CuPy arrays share, so it costs nothing on either device.
"""
from __future__ import annotations

import math
import numbers
import operator

from .backend import FLOAT_DTYPES


def _shown(value) -> str:
    """``value`` for an error message: its repr when short, else its type (an array's repr
    spans lines)."""
    text = repr(value)
    if "\n" in text or len(text) > 60:
        shape = getattr(value, "shape", None)
        return f"a value of type {type(value).__name__}" + (f", shape {tuple(shape)}" if shape is not None else "")
    return text


def _where(owner: str) -> str:
    return f"{owner}: " if owner else ""


def _unwrapped(value):
    """A 0-d NumPy array (as ``np.load`` gives back a saved scalar) -> its Python number;
    anything else unchanged."""
    if getattr(value, "shape", None) == () and getattr(getattr(value, "dtype", None), "kind", "") in "iuf":
        return value.item()
    return value


def real(value, name: str, owner: str = "", *, low=None, high=None, low_open=False, high_open=False) -> float:
    """``value`` as a float: a finite real number (not a bool) within [low, high] (an end is
    excluded where ``low_open`` / ``high_open``; None: unbounded). ValueError naming ``name``."""
    value = _unwrapped(value)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    number = float(value) if ok else math.nan
    ok = ok and math.isfinite(number)
    if ok and low is not None:
        ok = number > low if low_open else number >= low
    if ok and high is not None:
        ok = number < high if high_open else number <= high
    if not ok:
        if low == 0 and low_open and high is None:
            raise ValueError(f"{_where(owner)}{name} must be a positive number, got {_shown(value)}")
        if low is not None and high is not None:
            rule = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            rule = f"{'>' if low_open else '>='} {low:g}"
        elif high is not None:
            rule = f"{'<' if high_open else '<='} {high:g}"
        else:
            rule = "finite"
        raise ValueError(f"{_where(owner)}{name} must be a finite number {rule}, got {_shown(value)}")
    return number


def positive(value, name: str, owner: str = "") -> float:
    """A finite number > 0 (learning rates, eps)."""
    return real(value, name, owner, low=0.0, low_open=True)


def fraction(value, name: str, owner: str = "", *, closed: bool = False) -> float:
    """A finite number in [0, 1) (momentum, betas, decay rates, dropout p); [0, 1] where
    ``closed``."""
    return real(value, name, owner, low=0.0, high=1.0, high_open=not closed)


def integer(value, name: str, owner: str = "", *, minimum: int = 1) -> int:
    """``value`` as an int: an integer (Python or NumPy; not a bool, not a float) >= ``minimum``."""
    value = _unwrapped(value)
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{_where(owner)}{name} must be an integer >= {minimum}, got {_shown(value)}")
    return int(number)


def int_pair(value, name: str, owner: str = "", *, minimum: int = 1) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, each >= ``minimum`` -> (h, w)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{_where(owner)}{name} must be an int or an (h, w) pair, got {_shown(value)}")
        return (integer(value[0], name, owner, minimum=minimum), integer(value[1], name, owner, minimum=minimum))
    number = integer(value, name, owner, minimum=minimum)
    return number, number


def check_float_input(x, owner: str) -> None:
    """ValueError unless ``x`` is an array of a real floating dtype a model computes in
    (float32 or float64; ``backend.FLOAT_DTYPES``). Integer, bool, complex and float16 input
    is refused, not cast: ``Sequential.predict`` / ``loss`` cast input to the model's dtype."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or getattr(dtype, "name", None) not in FLOAT_DTYPES:
        got = f"dtype {dtype}" if dtype is not None else f"a {type(x).__name__}"
        raise ValueError(f"{owner}: input must be a float32 or float64 array, got {got} "
                         f"(cast it first; Sequential.predict and loss cast to the model's dtype)")
