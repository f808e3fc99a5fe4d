"""Max and average pooling on NCHW arrays, any window, stride and padding.

Windows come from ``sliding_windows`` (a strided view; for the usual non-overlapping case a
plain reshape). Max pooling pads with -inf and sends each output's gradient to the first
maximum of its window (row-major), as argmax does; average pooling counts zero padding in
the average (divides by KH*KW). No Python loop runs over pixels.
"""
from ..backend import xp_of
from .im2col import fold_windows, output_shape, pair, sliding_windows


def _flat_windows(x, kh, kw, stride, pad, pad_value):
    """Windows as (N, C, OH, OW, KH*KW)."""
    n, c = x.shape[:2]
    windows = sliding_windows(x, kh, kw, stride, pad, pad_value)
    oh, ow = windows.shape[2:4]
    return windows.reshape(n, c, oh, ow, kh * kw)


def maxpool2d_forward(x, kh, kw, stride=None, pad=0):
    """Return (out (N, C, OH, OW), cache). ``stride`` defaults to the window."""
    stride = pair((kh, kw) if stride is None else stride)
    windows = _flat_windows(x, kh, kw, stride, pad, float("-inf"))
    argmax = windows.argmax(axis=-1)
    out = windows.max(axis=-1)
    return out, (x.shape, argmax, kh, kw, stride, pair(pad))


def maxpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)."""
    x_shape, argmax, kh, kw, stride, pad = cache
    xp = xp_of(dout)
    hit = argmax[..., None] == xp.arange(kh * kw)          # (N, C, OH, OW, KH*KW) one-hot
    windows = hit * dout[..., None]
    windows = windows.reshape(*dout.shape, kh, kw)
    return fold_windows(windows, x_shape, stride, pad)


def avgpool2d_forward(x, kh, kw, stride=None, pad=0):
    """Return (out (N, C, OH, OW), cache). Zero padding counts in the average."""
    stride = pair((kh, kw) if stride is None else stride)
    windows = sliding_windows(x, kh, kw, stride, pad, 0.0)
    out = windows.mean(axis=(4, 5))
    return out, (x.shape, kh, kw, stride, pair(pad))


def avgpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)."""
    x_shape, kh, kw, stride, pad = cache
    xp = xp_of(dout)
    share = dout * (1.0 / (kh * kw))
    windows = xp.broadcast_to(share[..., None, None], (*dout.shape, kh, kw))
    return fold_windows(windows, x_shape, stride, pad)


__all__ = ["maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward",
           "avgpool2d_backward", "output_shape"]
