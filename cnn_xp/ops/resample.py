"""Resampling image batches for data augmentation (``cnn_xp.augment`` draws the maps):
``affine_resample`` (per-image affine maps, bilinear) and ``crop_flip`` (per-image zero-padded
crops and mirrors). Written once against ``xp``, NCHW in, new NCHW arrays out, the input's
dtype and device kept.
"""
from __future__ import annotations

from ..backend import xp_of


def affine_resample(x, inverse):
    """Resample images ``x`` (N, C, H, W) through per-image affine maps.

    ``inverse`` (N, 2, 3) maps an output pixel's centred coordinates ``(u, v, 1)``
    (u = column - (W-1)/2, v = row - (H-1)/2) to the centred coordinates of the point in
    the input it is read from (bilinear interpolation, zeros outside). Returns a new array
    of x's shape, dtype and device. An identity ``inverse`` returns ``x`` exactly."""
    xp = xp_of(x)
    n, c, h, w = x.shape
    dtype = x.dtype
    inv = xp.asarray(inverse, dtype=dtype)
    cols = xp.arange(w, dtype=dtype) - (w - 1) / 2.0
    rows = xp.arange(h, dtype=dtype) - (h - 1) / 2.0
    a = inv[:, :, :, None, None]  # (N, 2, 3, 1, 1)
    # source coordinates in the zero-padded image (one pixel of zeros on every side)
    sx = a[:, 0, 0] * cols + a[:, 0, 1] * rows[:, None] + a[:, 0, 2] + ((w - 1) / 2.0 + 1.0)
    sy = a[:, 1, 0] * cols + a[:, 1, 1] * rows[:, None] + a[:, 1, 2] + ((h - 1) / 2.0 + 1.0)
    sx = xp.clip(sx, 0.0, w + 1.0)  # beyond the padding reads the zero border
    sy = xp.clip(sy, 0.0, h + 1.0)
    x0 = xp.minimum(xp.floor(sx), float(w)).astype(xp.int64)
    y0 = xp.minimum(xp.floor(sy), float(h)).astype(xp.int64)
    wx = (sx - x0.astype(dtype)).reshape(n, 1, h * w)
    wy = (sy - y0.astype(dtype)).reshape(n, 1, h * w)
    padded = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))).reshape(-1)
    # flat index of each output pixel's upper-left source neighbour, per (image, channel)
    plane = (h + 2) * (w + 2)
    base = (xp.arange(n * c) * plane).reshape(n, c, 1)
    top = base + (y0 * (w + 2) + x0).reshape(n, 1, h * w)

    def read(offset):
        return xp.take(padded, top + offset)

    upper = (1 - wx) * read(0) + wx * read(1)
    lower = (1 - wx) * read(w + 2) + wx * read(w + 3)
    out = (1 - wy) * upper + wy * lower
    return out.reshape(n, c, h, w).astype(dtype, copy=False)


def crop_flip(x, rows, cols, flips, pad: int):
    """Crops of ``x`` (N, C, H, W) padded with ``pad`` zeros on every side: image i is cut
    at row offset ``rows[i]`` and column offset ``cols[i]`` (each in 0..2*pad, in the padded
    image) back to H x W, and mirrored left-right where ``flips[i]``. ``rows``, ``cols``,
    ``flips``: host arrays (N,). Returns a new array of x's shape, dtype and device."""
    xp = xp_of(x)
    n, c, h, w = x.shape
    padded = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    row_index = xp.asarray(rows, dtype=xp.int64)[:, None] + xp.arange(h)            # (N, H)
    col_index = xp.asarray(cols, dtype=xp.int64)[:, None] + xp.arange(w)            # (N, W)
    col_index = xp.where(xp.asarray(flips, dtype=bool)[:, None], col_index[:, ::-1], col_index)
    return padded[xp.arange(n)[:, None, None, None], xp.arange(c)[None, :, None, None],
                  row_index[:, None, :, None], col_index[:, None, None, :]]
