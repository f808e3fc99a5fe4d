"""The affine (fully connected) op on the GPU: one packing kernel and one GEMM forward, two
GEMMs backward.

Forward: the ``affine_pack`` kernel writes x_aug (N, D + 1) = [x2d | 1] (x2d the C-order
flattening of x in any memory order) and w_aug (D + 1, K) = [W; b] in one launch; out =
x_aug @ w_aug (N, K), the bias included. Backward: [dW; db] = x_aug^T @ dout, one GEMM
(dW and db are contiguous views of it); dx = dout @ W^T. The reference
(``cnn_xp.ops.affine``) takes a GEMM and a bias add forward, and three launches backward.
The cache holds x_aug, the forward's own copy of x.
"""
from __future__ import annotations

from math import prod

from ... import ops
from . import launch
from .cache import ReferenceCache, reference_call


def affine_forward(x, W, b, train=True):
    """x (N, ...) with D = prod(x.shape[1:]), W (D, K), b (K,) -> (x2d @ W + b (N, K),
    cache); ``train=False``: cache None."""
    shapes_match = (x.ndim >= 2 and W.ndim == 2 and b.ndim == 1 and W.shape[1] == b.shape[0]
                    and prod(x.shape[1:]) == W.shape[0])
    n, (d, k) = x.shape[0], W.shape if W.ndim == 2 else (0, 0)
    if not (shapes_match and n > 0 and d > 0 and k > 0 and launch.serves(x, W, b)
            and launch.fits(n * (d + 1) + (d + 1) * k, n * k)):
        return reference_call("affine_forward", x, W, b, train=train)
    cp = launch.cupy()
    image = x if x.ndim == 4 else x.reshape(n, d, 1, 1)  # a view for 2-D x
    src, strides = launch.strided(image)
    x_aug = cp.empty((n, d + 1), dtype=x.dtype)
    w_aug = cp.empty((d + 1, k), dtype=x.dtype)
    x_threads = n * (d + 1)
    done = launch.launch("affine_pack", src, *image.shape[1:], *strides, cp.ascontiguousarray(W),
                         cp.ascontiguousarray(b), k, x_threads, x_aug, w_aug, size=x_threads + (d + 1) * k)
    if done is None:
        return reference_call("affine_forward", x, W, b, train=train)
    out = x_aug @ w_aug
    return out, (("cuda", x_aug, tuple(x.shape), W) if train else None)


def affine_backward(dout, cache, need_dx=True):
    """dout (N, K) -> (dx (x's shape) or None when not ``need_dx``, dW (D, K), db (K,))."""
    if isinstance(cache, ReferenceCache):
        return ops.affine_backward(dout, cache.cache, need_dx)
    _, x_aug, x_shape, W = cache
    if not (launch.serves(dout, W) and tuple(dout.shape) == (x_shape[0], W.shape[1])):
        # the reference on the forward's copy of x (its cache is (x2d, x_shape, W))
        return ops.affine_backward(dout, (x_aug[:, :-1], x_shape, W), need_dx)
    dw_aug = x_aug.T @ dout  # (D + 1, K): [dW; db]
    dW, db = dw_aug[:-1], dw_aug[-1]
    if not need_dx:
        return None, dW, db
    return (dout @ W.T).reshape(x_shape), dW, db
