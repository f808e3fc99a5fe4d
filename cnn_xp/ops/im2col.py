"""im2col / col2im: convolution windows as matrix rows, and back (seed 002, section 7.4).

Images are NCHW. ``im2col`` returns ``col`` of shape (N*OH*OW, C*KH*KW): one row per
output pixel, rows ordered (n, oh, ow), columns ordered (c, i, j), so a convolution is one
matrix product with the filters reshaped to (OC, C*KH*KW). Both functions loop over the
KH*KW kernel offsets (a handful), each a strided slab of the image; never over pixels.
``stride`` and ``pad`` are ints or (h, w) pairs.
"""
from ..backend import xp_of


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


def im2col(x, kh, kw, stride=1, pad=0, pad_value=0.0):
    """NCHW ``x`` -> ``col`` (N*OH*OW, C*KH*KW), rows (n, oh, ow), columns (c, i, j).
    The padding holds ``pad_value`` (max pooling pads with -inf)."""
    xp = xp_of(x)
    n, c = x.shape[:2]
    sh, sw = pair(stride)
    oh, ow = output_shape(x.shape, kh, kw, stride, pad)
    image = pad_image(x, pad, pad_value)
    col = xp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            col[:, :, i, j] = image[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw]
    return col.transpose(0, 4, 5, 1, 2, 3).reshape(n * oh * ow, c * kh * kw)


def col2im(col, x_shape, kh, kw, stride=1, pad=0):
    """The adjoint of ``im2col``: ``col`` (N*OH*OW, C*KH*KW) -> (N, C, H, W), the entries
    of overlapping windows summed. One slab added per kernel offset."""
    xp = xp_of(col)
    n, c, h, w = x_shape
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    oh, ow = output_shape(x_shape, kh, kw, stride, pad)
    col = col.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 4, 5, 1, 2)  # (N, C, KH, KW, OH, OW)
    image = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            image[:, :, i : i + sh * oh : sh, j : j + sw * ow : sw] += col[:, :, i, j]
    return image[:, :, ph : ph + h, pw : pw + w]
