"""Max pooling by the compiled kernels, with the reference's signatures
(``cnn_xp.ops.maxpool2d_forward`` / ``maxpool2d_backward``) and its semantics: padding counts
as -inf, each gradient goes to the first maximum of its window (row-major), a NaN counts as
the maximum (the first NaN wins).

The kernels work on channels-last (NHWC) memory: an input in another memory order is copied
into it first (an NCHW view of NHWC memory, which the conv kernels give, is read as it is).
The output and the input gradient are NCHW views of NHWC memory. argmax, kept in the cache,
holds the row-major window offset of each output's first maximum, int32 for float32 values
and int64 for float64 (one vector of offsets covers one of channels). A call the kernels do
not serve (not a NumPy float32/float64 array, an empty one) runs the reference, and its cache
says so.
"""
from __future__ import annotations

import operator
from typing import NamedTuple

import numpy as np

from ... import ops
from . import _variant
from .conv import DTYPES, ReferenceCache, require

INDEX_DTYPES = {np.dtype(np.float32): np.dtype(np.int32), np.dtype(np.float64): np.dtype(np.int64)}


class PoolCache(NamedTuple):
    """What ``maxpool2d_backward`` needs after the kernels ran the forward."""
    x_shape: tuple
    argmax: np.ndarray      # (N, OH, OW, C), C-contiguous
    kernel: tuple
    stride: tuple
    pad: tuple
    isa: str


def _slack(c, lanes) -> int:
    """Values past the end of an (..., C) NHWC array that whole-vector stores reach."""
    return -(-c // lanes) * lanes - c


def maxpool2d_forward(x, kh, kw, stride=None, pad=0, train=True):
    """x (N, C, H, W) -> (out (N, C, OH, OW), cache); ``stride`` defaults to the window.
    out is an NCHW view of NHWC memory. ``train=False``: cache None, nothing kept."""
    isa = _variant.isa()
    try:
        kernel = (operator.index(kh), operator.index(kw))
    except TypeError:
        kernel = None
    served = (isa is not None and kernel is not None and isinstance(x, np.ndarray) and x.dtype in DTYPES
              and x.ndim == 4 and x.size > 0)
    if not served:
        out, cache = ops.maxpool2d_forward(x, kh, kw, stride, pad, train=train)
        return out, (ReferenceCache(cache) if cache is not None else None)
    (kh, kw) = kernel
    (sh, sw) = ops.pair(kernel if stride is None else stride)
    (ph, pw) = ops.pair(pad)
    oh, ow = ops.output_shape(x.shape, kh, kw, (sh, sw), (ph, pw))
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    n, h, w, c = x_nhwc.shape
    size, slack = n * oh * ow * c, _slack(c, _variant.lanes(isa, x.dtype))
    out = np.empty(size + slack, dtype=x.dtype)
    argmax = np.empty(size + slack, dtype=INDEX_DTYPES[x.dtype])
    _variant.native.maxpool_forward(isa, x_nhwc, n, h, w, c, kh, kw, sh, sw, ph, pw, out, argmax, oh, ow)
    out = out[:size].reshape(n, oh, ow, c).transpose(0, 3, 1, 2)
    if not train:
        return out, None
    argmax = argmax[:size].reshape(n, oh, ow, c)
    return out, PoolCache(tuple(x.shape), argmax, (kh, kw), (sh, sw), (ph, pw), isa)


def maxpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) of any memory order -> dx (N, C, H, W), an NCHW view of NHWC memory."""
    if isinstance(cache, ReferenceCache):
        return ops.maxpool2d_backward(dout, cache.cache)
    if not isinstance(cache, PoolCache):
        raise TypeError("maxpool2d_backward: this cache does not come from cnn_xp.kernels.cpu.maxpool2d_forward")
    (n, c, h, w), argmax, (kh, kw), (sh, sw), (ph, pw), isa = cache
    _, oh, ow, _ = argmax.shape
    dtype = next(real for real, index in INDEX_DTYPES.items() if index == argmax.dtype)
    if not isinstance(dout, np.ndarray) or dout.dtype != dtype:
        raise TypeError(f"maxpool2d_backward: dout must be a NumPy {dtype} array like the forward's, "
                        f"got {getattr(dout, 'dtype', type(dout).__name__)}")
    if dout.shape != (n, c, oh, ow):
        raise ValueError(f"maxpool2d_backward: dout must have shape {(n, c, oh, ow)}, got {dout.shape}")
    d_nhwc = np.ascontiguousarray(dout.transpose(0, 2, 3, 1))
    require(argmax, "argmax", (n, oh, ow, c), INDEX_DTYPES[dtype])
    size = n * h * w * c
    dx = np.empty(size + _slack(c, _variant.lanes(isa, dtype)), dtype=dtype)
    _variant.native.maxpool_backward(isa, d_nhwc, argmax, n, oh, ow, c, kh, kw, sh, sw, ph, pw, dx, h, w)
    return dx[:size].reshape(n, h, w, c).transpose(0, 3, 1, 2)


__all__ = ["maxpool2d_forward", "maxpool2d_backward"]
