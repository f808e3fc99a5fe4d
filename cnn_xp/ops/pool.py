"""Max and average pooling on NCHW arrays through im2col (seed 002, section 7.4.4).

Each channel's windows are rows: ``im2col(...).reshape(-1, KH*KW)`` has one row per
(n, oh, ow, c). Max pooling pads with -inf and sends each output's gradient to the first
maximum of its window (row-major), as ``argmax`` does (a NaN counts as the maximum).
Average pooling counts zero padding in the average (divides by KH*KW).
"""
from ..backend import xp_of
from .im2col import col2im, im2col, output_shape, pair


def _windows(x, kh, kw, stride, pad, pad_value):
    """(rows (N*OH*OW*C, KH*KW), (OH, OW)): one row per window of one channel."""
    oh, ow = output_shape(x.shape, kh, kw, stride, pad)
    return im2col(x, kh, kw, stride, pad, pad_value).reshape(-1, kh * kw), (oh, ow)


def _to_nchw(rows, n, c, oh, ow):
    """(N*OH*OW*C,) values in (n, oh, ow, c) order -> (N, C, OH, OW)."""
    return rows.reshape(n, oh, ow, c).transpose(0, 3, 1, 2)


def _window_grad(dwindows, x_shape, kh, kw, stride, pad):
    """(N*OH*OW*C, KH*KW) window gradients -> dx (N, C, H, W) through col2im."""
    n, c = x_shape[:2]
    return col2im(dwindows.reshape(-1, c * kh * kw), x_shape, kh, kw, stride, pad)


def maxpool2d_forward(x, kh, kw, stride=None, pad=0, train=True):
    """(out (N, C, OH, OW), cache); ``stride`` defaults to the window; cache None when
    ``train`` is False."""
    stride = pair((kh, kw) if stride is None else stride)
    windows, (oh, ow) = _windows(x, kh, kw, stride, pad, float("-inf"))
    out = _to_nchw(windows.max(axis=1), x.shape[0], x.shape[1], oh, ow)
    if not train:
        return out, None
    return out, (x.shape, windows.argmax(axis=1), kh, kw, stride, pair(pad))


def maxpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W): each gradient to its window's argmax."""
    x_shape, argmax, kh, kw, stride, pad = cache
    xp = xp_of(dout)
    dwindows = xp.zeros((argmax.size, kh * kw), dtype=dout.dtype)
    dwindows[xp.arange(argmax.size), argmax] = dout.transpose(0, 2, 3, 1).ravel()
    return _window_grad(dwindows, x_shape, kh, kw, stride, pad)


def avgpool2d_forward(x, kh, kw, stride=None, pad=0, train=True):
    """(out (N, C, OH, OW), cache); zero padding counts in the average."""
    stride = pair((kh, kw) if stride is None else stride)
    windows, (oh, ow) = _windows(x, kh, kw, stride, pad, 0.0)
    out = _to_nchw(windows.mean(axis=1), x.shape[0], x.shape[1], oh, ow)
    return out, ((x.shape, kh, kw, stride, pair(pad)) if train else None)


def avgpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W): each gradient shared by its window."""
    x_shape, kh, kw, stride, pad = cache
    xp = xp_of(dout)
    share = dout.transpose(0, 2, 3, 1).reshape(-1, 1) * (1.0 / (kh * kw))
    return _window_grad(xp.broadcast_to(share, (share.shape[0], kh * kw)), x_shape, kh, kw, stride, pad)
