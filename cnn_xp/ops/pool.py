"""Max and average pooling on NCHW arrays, any window, stride and padding.

On the CPU, max pooling of NHWC memory (what the compiled conv kernels give) runs in the
compiled kernels of ``cpu_kernels`` where they are built; the code below is the portable path.

Max pooling pads with -inf and sends each output's gradient to the first maximum of its
window (row-major), as argmax does (a NaN counts as the maximum); average pooling counts zero
padding in the average (divides by KH*KW). Both loop over the KH*KW kernel offsets, each a
strided view of the image, never over pixels, and never copy the windows out: max pooling is
a running ``maximum`` of the offset views and its argmax is counted from equality masks.
Memory layout on the portable path: an unpadded pooling's output keeps the memory order of
its input (an NCHW view of NHWC or CNHW memory stays one), and so does the max-pool input
gradient when the windows tile the image (the zoo's 2x2, stride-2 pools), so no transpose
copy is made between a conv layer and its pooling. Padded inputs, overlapping max-pool
windows, the average-pool gradient and the CUDA kernels give NCHW (C-contiguous) memory.
"""
from ..backend import xp_of
from . import cpu_kernels, cuda_kernels
from .im2col import fold_windows, output_shape, pad_image, pair, sliding_windows


def _offset_views(x, kh, kw, stride, pad, pad_value):
    """The KH*KW strided views (N, C, OH, OW) of padded ``x``, one per kernel offset,
    in row-major offset order: view k holds element (i, j) = divmod(k, KW) of every window."""
    (sh, sw) = pair(stride)
    oh, ow = output_shape(x.shape, kh, kw, stride, pad)
    x = pad_image(x, pad, pad_value)
    return [x[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            for i in range(kh) for j in range(kw)]


def _axis_order(a) -> list[int]:
    """The axes of ``a`` from outermost to innermost in memory: [0, 1, 2, 3] for NCHW
    memory, [0, 2, 3, 1] for an NCHW view of NHWC memory, [1, 0, 2, 3] for one of CNHW."""
    return sorted(range(a.ndim), key=lambda axis: -a.strides[axis])


def _empty_like_layout(xp, shape, dtype, like):
    """An uninitialised array of ``shape`` with the memory axis order of ``like``."""
    order = _axis_order(like)
    memory = xp.empty([shape[axis] for axis in order], dtype=dtype)
    return memory.transpose([order.index(axis) for axis in range(len(order))])


def maxpool2d_forward(x, kh, kw, stride=None, pad=0, with_argmax=True):
    """Return (out (N, C, OH, OW), cache). ``stride`` defaults to the window.
    ``with_argmax=False`` (inference) skips the argmax, which is most of the work on the
    portable path, and returns cache None (no backward)."""
    stride = pair((kh, kw) if stride is None else stride)
    if cuda_kernels.applies(x):  # GPU: max and argmax in one kernel
        fast = cuda_kernels.maxpool_forward(x, kh, kw, stride, pad)
        if fast is not None:
            return fast[0], (x.shape, fast[1], kh, kw, stride, pair(pad)) if with_argmax else None
    if cpu_kernels.applies(x):  # CPU: compiled, for NHWC memory (what the conv kernels give)
        fast = cpu_kernels.maxpool_forward(x, kh, kw, stride, pad)
        if fast is not None:
            return fast[0], (x.shape, fast[1], kh, kw, stride, pair(pad)) if with_argmax else None
    xp = xp_of(x)
    views = _offset_views(x, kh, kw, stride, pad, float("-inf"))
    out = views[0].copy() if len(views) == 1 else xp.maximum(views[0], views[1])
    for view in views[2:]:
        xp.maximum(out, view, out=out)                     # NaN propagates, as in max()
    if not with_argmax:
        return out, None
    # argmax = index of the first view equal to out (or NaN, which equals nothing): count
    # the leading views that miss. One byte per output while the window has <= 256 offsets.
    index_dtype = xp.uint8 if len(views) <= 256 else xp.int64
    argmax = xp.zeros_like(out, dtype=index_dtype)          # in the layout of out (and x)
    missing = None
    for view in views[:-1]:
        hit = view == out
        hit |= view != view                                 # NaN: first NaN is the argmax
        missing = ~hit if missing is None else xp.greater(missing, hit, out=missing)
        argmax += missing
    return out, (x.shape, argmax, kh, kw, stride, pair(pad))


def maxpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)."""
    x_shape, argmax, kh, kw, stride, pad = cache
    if cuda_kernels.applies(dout):  # GPU: gather from argmax, no one-hot temporaries
        dx = cuda_kernels.maxpool_backward(dout, argmax, x_shape, kh, kw, stride, pad)
        if dx is not None:
            return dx
    if cpu_kernels.applies(dout):
        dx = cpu_kernels.maxpool_backward(dout, argmax, x_shape, kh, kw, stride, pad)
        if dx is not None:
            return dx
    xp = xp_of(dout)
    n, c, h, w = x_shape
    (sh, sw), (ph, pw) = stride, pad
    oh, ow = dout.shape[2:]
    padded = (n, c, h + 2 * ph, w + 2 * pw)
    tiles = (sh, sw) == (kh, kw) and (oh * kh, ow * kw) == padded[2:]
    # Non-overlapping windows that tile the image: every pixel is written exactly once.
    dx = _empty_like_layout(xp, padded, dout.dtype, argmax) if tiles else xp.zeros(padded, dout.dtype)
    if tiles and _axis_order(dout) != _axis_order(argmax):
        # One small transposed copy so that dout, the masks and dx share one memory order.
        dout_like = xp.empty_like(argmax, dtype=dout.dtype)
        dout_like[...] = dout
        dout = dout_like
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        target = dx[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
        if tiles:
            xp.multiply(dout, argmax == k, out=target)
        else:
            target += dout * (argmax == k)
    return dx[:, :, ph : ph + h, pw : pw + w]


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


__all__ = ["maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward"]
