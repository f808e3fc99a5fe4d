"""2-D convolution by the compiled kernels: direct, on channels-last (NHWC) memory, with the
reference's signatures (``cnn_xp.ops.conv2d_forward`` / ``conv2d_backward``).

The kernels read the zero-padded NHWC image directly (no im2col columns: for small-channel
convs those are KH*KW times the input, and writing and re-reading them cost more than the
arithmetic):

- forward: ``conv_forward``; out (N, OC, OH, OW) is an NCHW view of NHWC memory, which the
  next layer's kernels read without a copy.
- backward: dW by ``conv_weight_grad``, db by ``channel_sums``; dx by ``conv_input_grad``,
  which scatters each output pixel's gradient into its window, or, for window rows longer
  than ``MAX_RUN_VECTORS`` vectors, by ``conv_forward`` itself, as the full correlation of
  the stride-spread, padded dout with the flipped kernel.

A call they do not serve (not NumPy float32/float64 arrays of one dtype, padding as large as
the kernel, empty arrays) runs the reference, and its cache says so: the backward of a
forward always runs the implementation that forward ran.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ... import ops
from . import _variant

DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class KernelCache(NamedTuple):
    """What ``conv2d_backward`` needs after the kernels ran the forward."""
    x_shape: tuple
    x_nhwc: np.ndarray      # the zero-padded input, (N, H + 2*ph, W + 2*pw, C), C-contiguous;
                            # the cache's own memory, never a view of the caller's x
    W: np.ndarray
    stride: tuple
    pad: tuple
    isa: str                # the variant that ran the forward (the backward runs it too)


class ReferenceCache(NamedTuple):
    """The forward ran the reference; ``cache`` is its own."""
    cache: object


def require(array, name: str, shape: tuple, dtype) -> None:
    """TypeError unless ``array`` is a NumPy array of ``dtype``; ValueError unless it has
    ``shape`` and is C-contiguous (what the extension is given)."""
    if not isinstance(array, np.ndarray) or array.dtype != dtype:
        got = getattr(array, "dtype", type(array).__name__)
        raise TypeError(f"{name}: expected a NumPy {np.dtype(dtype).name} array, got {got}")
    if array.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {array.shape}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")


def _served(x, W, b, pad) -> bool:
    """The kernels take NumPy float32/float64 arrays of one dtype and the usual shapes,
    non-empty, with padding below the kernel (dx reads dout padded by K-1-pad)."""
    arrays = (x, W, b)
    if not all(isinstance(a, np.ndarray) for a in arrays) or x.dtype not in DTYPES:
        return False
    if not (W.dtype == x.dtype and b.dtype == x.dtype and x.ndim == 4 and W.ndim == 4):
        return False
    oc, c, kh, kw = W.shape
    return (x.shape[1] == c and b.shape == (oc,) and x.size > 0 and W.size > 0
            and 0 <= pad[0] < kh and 0 <= pad[1] < kw)


def nhwc(x, pad):
    """NCHW-shaped ``x`` -> C-contiguous (N, H + 2*ph, W + 2*pw, C), zero-padded. No copy for
    an unpadded NCHW view of NHWC memory (what the kernels return)."""
    ph, pw = pad
    x_nhwc = x.transpose(0, 2, 3, 1)
    if not (ph or pw):
        return np.ascontiguousarray(x_nhwc)
    n, h, w, c = x_nhwc.shape
    padded = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    padded[:, ph : ph + h, pw : pw + w] = x_nhwc
    return padded


def packed(W, lanes):
    """W (OC, C, KH, KW) -> (ceil(OC/lanes), KH, KW*C, lanes), the last channel block zero-filled."""
    oc, c, kh, kw = W.shape
    blocks = -(-oc // lanes)
    padded = np.zeros((blocks * lanes, kh, kw, c), dtype=W.dtype)
    padded[:oc] = W.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(padded.reshape(blocks, lanes, kh, kw * c).transpose(0, 2, 3, 1))


def run_forward(isa, x_nhwc, W, b, stride, out_hw):
    """``conv_forward`` on a prepared (padded, C-contiguous) NHWC input; b may be None ->
    (N, OH, OW, OC), C-contiguous."""
    n, h, w, c = x_nhwc.shape
    oc, _, kh, kw = W.shape
    oh, ow = out_hw
    require(x_nhwc, "x_nhwc", (n, h, w, W.shape[1]), W.dtype)
    lanes = _variant.lanes(isa, W.dtype)
    w_packed = packed(W, lanes)
    bias = np.zeros(w_packed.shape[0] * lanes, dtype=W.dtype)
    if b is not None:
        bias[:oc] = b
    out = np.empty((n, oh, ow, oc), dtype=W.dtype)
    _variant.native.conv_forward(isa, x_nhwc, n, h, w, c, w_packed, kh, kw, oc, bias, stride[0], stride[1],
                                 out, oh, ow)
    return out


def input_grad_scattered(isa, d_nhwc, W, x_shape, stride, pad):
    """dx (N, H, W, C), a view of padded NHWC memory, by ``conv_input_grad``, for window rows
    of KW*C <= MAX_RUN_VECTORS vectors. d_nhwc: dout as C-contiguous (N, OH, OW, OC)."""
    n, c, h, w = x_shape
    oc, _, kh, kw = W.shape
    (ph, pw), lanes = pad, _variant.lanes(isa, W.dtype)
    require(d_nhwc, "d_nhwc", (n, *d_nhwc.shape[1:3], oc), W.dtype)
    run = kw * c
    padded_run = -(-run // lanes) * lanes
    wt = np.zeros((oc, kh, padded_run), dtype=W.dtype)
    wt[:, :, :run] = W.transpose(0, 2, 3, 1).reshape(oc, kh, run)
    hp, wp = h + 2 * ph, w + 2 * pw
    size = n * hp * wp * c
    flat = np.empty(size + padded_run, dtype=W.dtype)  # the last window's whole vectors reach past dx
    _variant.native.conv_input_grad(isa, d_nhwc, n, d_nhwc.shape[1], d_nhwc.shape[2], oc, wt, kh, kw, c,
                                    stride[0], stride[1], flat, hp, wp)
    return flat[:size].reshape(n, hp, wp, c)[:, ph : ph + h, pw : pw + w]


def conv2d_forward(x, W, b, stride=1, pad=0, train=True):
    """x (N, C, H, W), W (OC, C, KH, KW), b (OC,) -> (out (N, OC, OH, OW), cache); out is an
    NCHW view of NHWC memory. The cache never aliases x (a copy is made only where the
    kernel read x in place). ``train=False``: cache None, nothing kept."""
    isa = _variant.isa()
    stride_hw, pad_hw = ops.pair(stride), ops.pair(pad)
    if isa is None or not _served(x, W, b, pad_hw):
        out, cache = ops.conv2d_forward(x, W, b, stride, pad, train=train)
        return out, (ReferenceCache(cache) if cache is not None else None)
    oh, ow = ops.output_shape(x.shape, *W.shape[2:], stride_hw, pad_hw)
    x_nhwc = nhwc(x, pad_hw)
    out = run_forward(isa, x_nhwc, W, b, stride_hw, (oh, ow))
    if not train:
        return out.transpose(0, 3, 1, 2), None
    if np.may_share_memory(x_nhwc, x):
        # Unpadded NHWC memory (what the kernels return) is read in place by the forward;
        # the cache keeps its own copy, as the reference's col is, so changing x after the
        # forward does not change the backward. Other inputs were copied by nhwc() already.
        x_nhwc = x_nhwc.copy()
    return out.transpose(0, 3, 1, 2), KernelCache(tuple(x.shape), x_nhwc, W, stride_hw, pad_hw, isa)


def conv2d_backward(dout, cache, need_dx=True):
    """(dx or None, dW, db) for dout (N, OC, OH, OW) of any memory order, from
    ``conv2d_forward``'s cache. dx (N, C, H, W) is a view of NHWC memory; dW and db are
    C-contiguous."""
    if isinstance(cache, ReferenceCache):
        return ops.conv2d_backward(dout, cache.cache, need_dx)
    if not isinstance(cache, KernelCache):
        raise TypeError("conv2d_backward: this cache does not come from cnn_xp.kernels.cpu.conv2d_forward")
    x_shape, x_nhwc, W, (sh, sw), (ph, pw), isa = cache
    n, c, h, w = x_shape
    oc, _, kh, kw = W.shape
    _, hp, wp, _ = x_nhwc.shape
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    if not isinstance(dout, np.ndarray) or dout.dtype != W.dtype:
        raise TypeError(f"conv2d_backward: dout must be a NumPy {W.dtype} array like the forward's, "
                        f"got {getattr(dout, 'dtype', type(dout).__name__)}")
    if dout.shape != (n, oc, oh, ow):
        raise ValueError(f"conv2d_backward: dout must have shape {(n, oc, oh, ow)}, got {dout.shape}")
    native = _variant.native
    d_nhwc = np.ascontiguousarray(dout.transpose(0, 2, 3, 1))
    dw_rows = np.empty((kh, kw * c, oc), dtype=W.dtype)
    native.conv_weight_grad(isa, x_nhwc, n, hp, wp, c, d_nhwc, oh, ow, oc, kh, kw, sh, sw, dw_rows)
    dW = np.ascontiguousarray(dw_rows.reshape(kh, kw, c, oc).transpose(3, 2, 0, 1))
    db = np.empty(oc, dtype=W.dtype)
    native.channel_sums(isa, d_nhwc, n * oh * ow, oc, db)
    if not need_dx:
        return None, dW, db
    if kw * c <= native.MAX_RUN_VECTORS * _variant.lanes(isa, W.dtype):
        dx = input_grad_scattered(isa, d_nhwc, W, x_shape, (sh, sw), (ph, pw))
    else:
        # dx[y, x] = sum over (i, j) of dout[(y + ph - i) / sh, (x + pw - j) / sw] W[i, j]
        # (where those divide): a stride-1 correlation of dout, spread by the stride and
        # shifted by K-1-pad, with the kernel flipped and its channel axes swapped.
        spread = np.zeros((n, h + kh - 1, w + kw - 1, oc), dtype=W.dtype)
        top, left = kh - 1 - ph, kw - 1 - pw
        spread[:, top : top + sh * (oh - 1) + 1 : sh, left : left + sw * (ow - 1) + 1 : sw] = d_nhwc
        w_flipped = W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, OC, KH, KW)
        dx = run_forward(isa, spread, w_flipped, None, (1, 1), (h, w))
    return dx.transpose(0, 3, 1, 2), dW, db


__all__ = ["conv2d_forward", "conv2d_backward"]
