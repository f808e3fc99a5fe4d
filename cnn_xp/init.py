"""Weight initialisers, drawn on the host from a seeded NumPy Generator.

Drawing on the host and then moving to the device means one seed gives bit-identical
initial weights on CPU and GPU. An initialiser is a callable ``(shape, rng) -> ndarray``
(float64 on the host; layers cast to their dtype). Fans: conv W (out, in, kh, kw) has
fan_in = in*kh*kw, fan_out = out*kh*kw; affine W (in, out) has fan_in = in, fan_out = out.
"""
from __future__ import annotations

import math

import numpy as np


def make_rng(seed=None) -> np.random.Generator:
    """A NumPy Generator; pass one through to share a stream, or an int seed."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a conv (out, in, kh, kw) or affine (in, out) weight shape."""
    if len(shape) == 4:
        receptive = shape[2] * shape[3]
        return shape[1] * receptive, shape[0] * receptive
    if len(shape) == 2:
        return shape[0], shape[1]
    return int(np.prod(shape[:-1] or (1,))), int(shape[-1])


def uniform(low: float, high: float):
    """U(low, high) -- seed 000 uses U(-0.1, 0.1)."""
    def draw(shape, rng):
        return rng.uniform(low, high, size=shape)
    draw.__name__ = f"uniform({low}, {high})"
    return draw


def normal(std: float):
    """N(0, std^2) -- seed 002 uses std 0.01."""
    def draw(shape, rng):
        return rng.normal(0.0, std, size=shape)
    draw.__name__ = f"normal({std})"
    return draw


def he():
    """He et al. (2015) for ReLU nets: N(0, 2 / fan_in) -- seed 004."""
    def draw(shape, rng):
        return rng.normal(0.0, math.sqrt(2.0 / fans(shape)[0]), size=shape)
    draw.__name__ = "he"
    return draw


def xavier():
    """Glorot & Bengio (2010): N(0, 2 / (fan_in + fan_out))."""
    def draw(shape, rng):
        fan_in, fan_out = fans(shape)
        return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=shape)
    draw.__name__ = "xavier"
    return draw


def constant(value: float):
    def draw(shape, rng):
        return np.full(shape, float(value))
    draw.__name__ = f"constant({value})"
    return draw


def zeros():
    return constant(0.0)


def ones():
    return constant(1.0)


INITIALIZERS = {"he": he, "xavier": xavier, "zeros": zeros, "ones": ones}


def get(spec):
    """An initialiser from a callable, a name ("he", "xavier"), or None (He)."""
    if spec is None:
        return he()
    if callable(spec):
        return spec
    if spec in INITIALIZERS:
        return INITIALIZERS[spec]()
    raise ValueError(f"unknown initialiser {spec!r}; choose one of {', '.join(INITIALIZERS)} or pass a callable")


def draw(spec, shape, rng=None, dtype="float32") -> np.ndarray:
    """Draw a host array of ``shape`` and ``dtype`` from initialiser ``spec``."""
    return np.asarray(get(spec)(tuple(shape), make_rng(rng)), dtype=np.dtype(dtype))
