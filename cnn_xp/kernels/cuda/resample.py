"""Data augmentation on the GPU, one kernel per batch: ``affine_resample`` (bilinear, per-image
affine maps) and ``crop_flip`` (per-image zero-padded crops and mirrors), the reference's
(``cnn_xp.ops.resample``) arithmetic in one pass over x in any memory order. The per-image
maps or draws, made on the host, travel to the device in one copy. Output: a new
C-contiguous (N, C, H, W) array. A call the kernels cannot serve runs the reference.
"""
from __future__ import annotations

import numpy

from ... import backend, ops
from . import launch


def _resampled(kernel: str, x, table, *scalars):
    """A new (N, C, H, W) array from kernel ``kernel`` over x (any memory order) with the
    host ``table`` of per-image maps or draws copied to the device; None if the kernel
    failed to compile."""
    n, c, h, w = x.shape
    cp = launch.cupy()
    out = cp.empty((n, c, h, w), dtype=x.dtype)
    if not out.size:
        return out
    src, strides = launch.strided(x)
    done = launch.launch(kernel, src, cp.asarray(numpy.ascontiguousarray(table)), c, h, w, *scalars, *strides, out)
    return None if done is None else out


def affine_resample(x, inverse):
    """Images ``x`` (N, C, H, W) resampled through the maps ``inverse`` (N, 2, 3); see
    ``cnn_xp.ops.affine_resample``."""
    inv = numpy.asarray(backend.to_numpy(inverse), dtype=x.dtype if launch.serves(x) else None)
    if not (x.ndim == 4 and launch.serves(x) and inv.shape == (x.shape[0], 2, 3) and launch.fits(x.size)):
        return ops.affine_resample(x, inverse)
    h, w = x.shape[2:]
    half_w, half_h = (w - 1) / 2.0, (h - 1) / 2.0
    out = _resampled("affine_resample", x, inv, half_w, half_h, half_w + 1.0, half_h + 1.0)
    return ops.affine_resample(x, inverse) if out is None else out


def crop_flip(x, rows, cols, flips, pad: int):
    """Crops of ``x`` (N, C, H, W) padded with ``pad`` zeros, at row / column offsets
    ``rows`` / ``cols`` and mirrored where ``flips`` (host arrays (N,)); see
    ``cnn_xp.ops.crop_flip``."""
    n = x.shape[0] if x.ndim == 4 else -1
    draws = numpy.stack([numpy.asarray(rows, dtype=numpy.int64), numpy.asarray(cols, dtype=numpy.int64),
                         numpy.asarray(flips, dtype=bool).astype(numpy.int64)], axis=1) if n >= 0 else None
    if not (n >= 0 and launch.serves(x) and draws.shape == (n, 3) and launch.fits(x.size)
            and (draws[:, :2] >= 0).all() and (draws[:, :2] <= 2 * int(pad)).all()):
        return ops.crop_flip(x, rows, cols, flips, pad)
    out = _resampled("crop_flip", x, draws.astype(numpy.int32), int(pad))
    return ops.crop_flip(x, rows, cols, flips, pad) if out is None else out
