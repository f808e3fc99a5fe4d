"""The fully connected layer's op: x (N, ...) flattened to (N, D), times W (D, K), plus b (K,)."""
from __future__ import annotations

from math import prod


def affine_forward(x, W, b, train=True):
    """x (N, ...) with D = prod(x.shape[1:]), W (D, K), b (K,) -> (x2d @ W + b (N, K), cache);
    ``train=False``: cache None. The cache holds x2d (a view of x, as the layer always
    kept), x's shape and W."""
    x2d = x.reshape(x.shape[0], prod(x.shape[1:]))  # -1 fails for N = 0
    out = x2d @ W
    out += b
    return out, ((x2d, tuple(x.shape), W) if train else None)


def affine_backward(dout, cache, need_dx=True):
    """dout (N, K) -> (dx (x's shape) or None when not ``need_dx``, dW (D, K), db (K,))."""
    x2d, x_shape, W = cache
    dW = x2d.T @ dout
    db = dout.sum(axis=0)
    if not need_dx:
        return None, dW, db
    return (dout @ W.T).reshape(x_shape), dW, db
