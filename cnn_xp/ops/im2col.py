"""im2col / col2im: turn convolution windows into matrix rows and back.

Layouts: images are NCHW. ``im2col`` returns ``col`` of shape (N*OH*OW, C*KH*KW): one row
per output pixel, rows ordered (n, oh, ow), columns ordered (c, i, j) -- the layout of
"Deep Learning from Scratch" ch.7. ``stride`` and ``pad`` are ints or (h, w) pairs.
The windows are a strided view (``sliding_window_view``); no Python loop runs over pixels.
"""
from ..backend import xp_of
from . import cuda_kernels


def pair(value) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 2) -> (3, 2)``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"expected an int or an (h, w) pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length along one axis: floor((size + 2*pad - kernel) / stride) + 1."""
    return (size + 2 * pad - kernel) // stride + 1


def output_shape(x_shape, kh, kw, stride=1, pad=0) -> tuple[int, int]:
    """(OH, OW) of a window operation on an NCHW input; ValueError if it would be empty."""
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"bad window: kernel {(kh, kw)}, stride {(sh, sw)}, pad {(ph, pw)}")
    oh = output_size(x_shape[2], kh, sh, ph)
    ow = output_size(x_shape[3], kw, sw, pw)
    if oh < 1 or ow < 1:
        raise ValueError(
            f"kernel {(kh, kw)} with pad {(ph, pw)} does not fit input {tuple(x_shape[2:])}")
    return oh, ow


def pad_image(x, pad, value=0.0):
    """Pad the two spatial axes of an NCHW array by ``pad`` with ``value``."""
    ph, pw = pair(pad)
    if ph == 0 and pw == 0:
        return x
    xp = xp_of(x)
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant", constant_values=value)


def sliding_windows(x, kh, kw, stride=1, pad=0, pad_value=0.0):
    """A strided view (N, C, OH, OW, KH, KW) of the windows of NCHW ``x`` (no copy unless padded)."""
    (sh, sw) = pair(stride)
    oh, ow = output_shape(x.shape, kh, kw, stride, pad)
    xp = xp_of(x)
    x = pad_image(x, pad, pad_value)
    view = xp.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    return view[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw]


def fold_windows(windows, x_shape, stride=1, pad=0):
    """Adjoint of ``sliding_windows``: sum (N, C, OH, OW, KH, KW) window values back into
    an (N, C, H, W) image. Loops over the KH*KW kernel offsets, never over pixels."""
    if cuda_kernels.applies(windows):  # GPU: one gather kernel, no atomics
        image = cuda_kernels.fold_windows(windows, x_shape, stride, pad)
        if image is not None:
            return image
    n, c, h, w = x_shape
    _, _, oh, ow, kh, kw = windows.shape
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    xp = xp_of(windows)
    if (sh, sw) == (kh, kw) and (ph, pw) == (0, 0):
        # Non-overlapping windows tile the image: a transpose, no accumulation.
        tiled = windows.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, oh * kh, ow * kw)
        if (oh * kh, ow * kw) == (h, w):
            return tiled
        image = xp.zeros(x_shape, dtype=windows.dtype)
        image[:, :, : oh * kh, : ow * kw] = tiled
        return image
    image = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=windows.dtype)
    for i in range(kh):
        for j in range(kw):
            image[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw] += windows[:, :, :, :, i, j]
    return image[:, :, ph : ph + h, pw : pw + w]


def im2col(x, kh, kw, stride=1, pad=0):
    """NCHW ``x`` -> ``col`` (N*OH*OW, C*KH*KW), rows (n, oh, ow), columns (c, i, j)."""
    if cuda_kernels.applies(x):  # GPU: padding and gather in one kernel
        col = cuda_kernels.im2col(x, kh, kw, stride, pad)
        if col is not None:
            return col
    n, c = x.shape[:2]
    windows = sliding_windows(x, kh, kw, stride, pad)
    oh, ow = windows.shape[2:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)


def col2im(col, x_shape, kh, kw, stride=1, pad=0):
    """Adjoint of ``im2col``: ``col`` (N*OH*OW, C*KH*KW) -> (N, C, H, W), overlaps summed."""
    n, c = x_shape[:2]
    oh, ow = output_shape(x_shape, kh, kw, stride, pad)
    windows = col.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 1, 2, 4, 5)
    return fold_windows(windows, x_shape, stride, pad)


def col2im_t(col_t, x_shape, kh, kw, stride=1, pad=0):
    """``col2im`` of transposed columns: ``col_t`` (C*KH*KW, N*OH*OW) -> (N, C, H, W).
    On the GPU the fold kernel's neighbouring threads (neighbouring image columns) then
    read neighbouring entries; in the (N*OH*OW, C*KH*KW) layout they read one per row."""
    n, c = x_shape[:2]
    oh, ow = output_shape(x_shape, kh, kw, stride, pad)
    windows = col_t.reshape(c, kh, kw, n, oh, ow).transpose(3, 0, 4, 5, 1, 2)
    return fold_windows(windows, x_shape, stride, pad)
