"""Numeric gradient checking by central differences, in float64 on the host."""
from __future__ import annotations

import numpy as np

from .backend import to_numpy


def numerical_gradient(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f() / d x by central differences; ``x`` is perturbed in place and restored.

    f: a function of no arguments returning a scalar that reads ``x``.
    """
    grad = np.zeros_like(x, dtype=np.float64)
    flat_x = x.reshape(-1)
    flat_grad = grad.reshape(-1)
    for i in range(flat_x.size):
        saved = flat_x[i]
        flat_x[i] = saved + eps
        plus = float(f())
        flat_x[i] = saved - eps
        minus = float(f())
        flat_x[i] = saved
        flat_grad[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(analytic, numeric) -> float:
    """max |a - n| / max(|a| + |n|) over all elements (0 when both are zero)."""
    a, n = to_numpy(analytic).astype(np.float64), to_numpy(numeric).astype(np.float64)
    scale = np.maximum(np.abs(a) + np.abs(n), 1e-12).max()
    return float(np.abs(a - n).max() / scale) if a.size else 0.0


def check_layer(layer, x: np.ndarray, seed: int = 0, eps: float = 1e-6, train: bool = True) -> dict:
    """Compare a layer's backward with numeric gradients of sum(forward(x) * dout).

    Works on CPU float64 (cast the layer's params first). Random layers replay the same
    RNG state on every forward. Returns {"x": err, "<param>": err, ...} relative errors.
    """
    x = np.array(x, dtype=np.float64)
    rng_state = layer.rng_state() if hasattr(layer, "rng_state") else None

    def forward():
        if rng_state is not None:
            layer.set_rng_state(rng_state)
        return layer.forward(x, train=train)

    dout = np.random.default_rng(seed).standard_normal(forward().shape)
    saved_need = layer.need_input_grad if hasattr(layer, "need_input_grad") else True
    layer.need_input_grad = True
    forward()
    dx = layer.backward(dout.copy())
    layer.need_input_grad = saved_need
    analytic = {"x": dx, **{k: np.array(v) for k, v in layer.grads.items()}}

    def objective():
        return float(np.sum(forward() * dout))

    errors = {"x": relative_error(analytic["x"], numerical_gradient(objective, x, eps))}
    for key, param in layer.params.items():
        errors[key] = relative_error(analytic[key], numerical_gradient(objective, param, eps))
    return errors
