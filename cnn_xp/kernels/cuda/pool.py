"""Max and average pooling on the GPU, one kernel per pass.

Max pooling: ``maxpool_forward`` computes each window's maximum and its argmax (the
row-major offset of the first maximum in the window; a NaN counts as the maximum; padding is
-inf) in one pass over x in any memory order; ``maxpool_backward`` gathers: each input
pixel sums the upstream gradients of the windows whose argmax points at it (no one-hot
temporaries, no atomics). Average pooling: ``avgpool_forward`` sums each window (zero
padding counts) and divides by KH*KW; its backward folds the share dout / (KH*KW),
broadcast over each window, with the ``fold_windows`` gather kernel. Forward outputs are NCHW
(C-contiguous) memory; max pooling's dx has the memory layout of the forward's x (NHWC
memory after a convolution, so the conv's backward reads it without a copy).
"""
from __future__ import annotations

from ... import ops
from . import launch
from .cache import ReferenceCache, reference_call
from .conv import fold_windows


def _geometry(x_shape, kh, kw, stride, pad):
    """((sh, sw), (ph, pw), (oh, ow)); the stride defaults to the window."""
    stride = ops.pair((kh, kw) if stride is None else stride)
    pad = ops.pair(pad)
    return stride, pad, ops.output_shape(x_shape, kh, kw, stride, pad)


def maxpool2d_forward(x, kh, kw, stride=None, pad=0, train=True):
    """x (N, C, H, W) -> (out (N, C, OH, OW), cache); ``train=False``: cache None."""
    if not (x.ndim == 4 and launch.serves(x)):
        return reference_call("maxpool2d_forward", x, kh, kw, stride, pad, train=train)
    stride, pad, (oh, ow) = _geometry(x.shape, kh, kw, stride, pad)
    n, c, h, w = x.shape
    cp = launch.cupy()
    out = cp.empty((n, c, oh, ow), dtype=x.dtype)
    argmax = cp.empty((n, c, oh, ow), dtype="int64")
    if out.size:
        xs, strides = launch.strided(x)
        done = launch.launch("maxpool_forward", xs, c, h, w, oh, ow, kh, kw, *stride, *pad,
                             *strides, float("-inf"), out, argmax)
        if done is None:
            return reference_call("maxpool2d_forward", x, kh, kw, stride, pad, train=train)
    if not train:
        return out, None
    # x's shape, not x: the backward reads only argmax (the forward's own), so changing x
    # after the forward changes nothing, as in the reference. dx takes x's memory layout.
    return out, ("cuda", tuple(x.shape), argmax, kh, kw, stride, pad, launch.channels_last(x))


def maxpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)."""
    if isinstance(cache, ReferenceCache):
        return ops.maxpool2d_backward(dout, cache.cache)
    _, x_shape, argmax, kh, kw, stride, pad, nhwc = cache
    if not launch.serves(dout) or tuple(dout.shape) != tuple(argmax.shape):
        return _max_recomputed(dout, cache)
    n, c, h, w = x_shape
    oh, ow = dout.shape[2:]
    cp = launch.cupy()
    dx = launch.empty_nchw((n, c, h, w), dout.dtype, nhwc)
    if dx.size == 0:
        return dx
    if dout.size == 0:
        dx.fill(0)
        return dx
    done = launch.launch("maxpool_backward", cp.ascontiguousarray(dout), argmax,
                         c, h, w, oh, ow, kh, kw, *stride, *pad, dx)
    return _max_recomputed(dout, cache) if done is None else dx


def _max_recomputed(dout, cache):
    """The reference's backward on the forward's argmax, for a call the kernel cannot
    finish: the kernel's (N, C, OH, OW) window offsets, in the reference's (n, oh, ow, c)
    order, are the reference's cache."""
    _, x_shape, argmax, kh, kw, stride, pad, _ = cache
    windows = argmax.transpose(0, 2, 3, 1).reshape(-1)
    return ops.maxpool2d_backward(dout, (x_shape, windows, kh, kw, stride, pad))


def avgpool2d_forward(x, kh, kw, stride=None, pad=0, train=True):
    """x (N, C, H, W) -> (out (N, C, OH, OW), cache); zero padding counts in the mean.
    ``train=False``: cache None."""
    if not (x.ndim == 4 and launch.serves(x)):
        return reference_call("avgpool2d_forward", x, kh, kw, stride, pad, train=train)
    stride, pad, (oh, ow) = _geometry(x.shape, kh, kw, stride, pad)
    n, c, h, w = x.shape
    out = launch.cupy().empty((n, c, oh, ow), dtype=x.dtype)
    if out.size:
        xs, strides = launch.strided(x)
        done = launch.launch("avgpool_forward", xs, c, h, w, oh, ow, kh, kw, *stride, *pad,
                             *strides, out)
        if done is None:
            return reference_call("avgpool2d_forward", x, kh, kw, stride, pad, train=train)
    if not train:
        return out, None
    return out, ("cuda", tuple(x.shape), kh, kw, stride, pad)  # the shape: the backward reads no x


def avgpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)."""
    if isinstance(cache, ReferenceCache):
        return ops.avgpool2d_backward(dout, cache.cache)
    _, x_shape, kh, kw, stride, pad = cache
    out_shape = (*x_shape[:2], *ops.output_shape(x_shape, kh, kw, stride, pad))
    if launch.serves(dout) and tuple(dout.shape) == out_shape:
        share = dout * (1.0 / (kh * kw))
        windows = launch.cupy().broadcast_to(share[..., None, None], (*dout.shape, kh, kw))
        dx = fold_windows(windows, x_shape, stride, pad)
        if dx is not None:
            return dx
    # The reference's backward (its cache is (x_shape, kh, kw, stride, pad) too).
    return ops.avgpool2d_backward(dout, (x_shape, kh, kw, stride, pad))
