"""conv2d on the GPU: the book's im2col layout built by one kernel, then one cuBLAS GEMM.

Forward: ``col`` (N*OH*OW, C*KH*KW + 1), rows (n, oh, ow), columns (c, i, j) -- the layout
of the reference's ``im2col`` -- plus a column of ones, made by the ``im2col`` kernel
straight from x in any memory order, padding included; the same launch packs ``w_aug`` =
[W_mat | b] (OC, C*KH*KW + 1). out = col @ w_aug^T (N*OH*OW, OC), the bias included,
returned as an NCHW-shaped view of that NHWC memory (no transpose copy).

Backward: dout_mat (N*OH*OW, OC) (free when dout is NHWC memory, as the forward's output
is); [dW | db] = dout_mat^T @ col, one GEMM (dW and db are views of it); dx: the column
gradient computed transposed, W_mat^T @ dout_mat^T (C*KH*KW, N*OH*OW), folded into
(N, C, H, W) by the ``fold_windows`` gather kernel (``col2im_t``), whose neighbouring
threads then read neighbouring values; dx has the memory layout of the forward's x (NHWC
memory where x came from a convolution, so no layer transposes it back).
"""
from __future__ import annotations

from ... import ops
from . import launch
from .cache import ReferenceCache, reference_call


def output_geometry(x_shape, kh, kw, stride, pad):
    """((sh, sw), (ph, pw), (oh, ow)), with the reference's checks and errors."""
    stride, pad = ops.pair(stride), ops.pair(pad)
    return stride, pad, ops.output_shape(x_shape, kh, kw, stride, pad)


def rows_per_thread(size: int) -> int:
    """How many column rows one im2col thread fills: up to 8, while at least 2^18 threads
    (enough to fill a large GPU) remain."""
    return max(1, min(8, size >> 18))


def im2col(x, kh, kw, stride=1, pad=0, W=None, b=None):
    """NCHW ``x`` (any memory order) -> ``col`` (N*OH*OW, C*KH*KW + 1), rows (n, oh, ow),
    columns (c, i, j) and a last column of ones; with ``W`` (OC, C, KH, KW) and ``b`` (OC,)
    also ``w_aug`` (OC, C*KH*KW + 1) = [W | b] from the same launch, so that ``col @
    w_aug.T`` is the convolution plus bias. -> (col, w_aug or None); None if the kernel
    failed to compile."""
    (sh, sw), (ph, pw), (oh, ow) = output_geometry(x.shape, kh, kw, stride, pad)
    n, c, h, w = x.shape
    rows, ld = n * oh * ow, c * kh * kw + 1
    cp = launch.cupy()
    col = cp.empty((rows, ld), dtype=x.dtype)
    oc = 0 if W is None else W.shape[0]
    w_aug = cp.empty((oc, ld), dtype=x.dtype) if W is not None else None
    weights = (cp.ascontiguousarray(W.reshape(oc, ld - 1)), cp.ascontiguousarray(b)) if W is not None \
        else (col, col)  # not read without W
    x, strides = launch.strided(x)
    per_thread = rows_per_thread(col.size)
    col_threads = -(-rows // per_thread) * ld
    total = col_threads + oc * ld
    if total == 0:
        return col, w_aug
    if not launch.fits(total):
        return None
    done = launch.launch("im2col", x, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, rows, per_thread, ld,
                         *strides, *weights, col_threads, col, w_aug if w_aug is not None else col, size=total)
    return None if done is None else (col, w_aug)


def fold_windows(windows, x_shape, stride=1, pad=0, nhwc_memory=False):
    """Sum (N, C, OH, OW, KH, KW) window values (any strided view, zero strides included)
    into an (N, C, H, W) image (NHWC memory when ``nhwc_memory``); None if the kernel
    failed to compile."""
    (sh, sw), (ph, pw) = ops.pair(stride), ops.pair(pad)
    n, c, h, w = x_shape
    _, _, oh, ow, kh, kw = windows.shape
    cp = launch.cupy()
    if windows.size == 0 or n * c * h * w == 0:
        return cp.zeros((n, c, h, w), dtype=windows.dtype)
    windows, strides = launch.strided(windows)
    image = launch.empty_nchw((n, c, h, w), windows.dtype, nhwc_memory)
    done = launch.launch("fold_windows", windows, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw,
                         *strides, image)
    return None if done is None else image


def col2im_t(col_t, x_shape, kh, kw, stride=1, pad=0, nhwc_memory=False):
    """The adjoint of ``im2col`` for transposed columns: ``col_t`` (C*KH*KW, N*OH*OW) ->
    (N, C, H, W) (NHWC memory when ``nhwc_memory``), overlaps summed; None if the kernel
    failed to compile."""
    n, c = x_shape[:2]
    _, _, (oh, ow) = output_geometry(x_shape, kh, kw, stride, pad)
    windows = col_t.reshape(c, kh, kw, n, oh, ow).transpose(3, 0, 4, 5, 1, 2)
    return fold_windows(windows, x_shape, stride, pad, nhwc_memory)


def conv2d_forward(x, W, b, stride=1, pad=0, train=True):
    """x (N, C, H, W), W (OC, C, KH, KW), b (OC,) -> (out (N, OC, OH, OW), cache); out is an
    NCHW-shaped view of NHWC memory. ``train=False``: cache None."""
    shapes_match = (x.ndim == 4 and W.ndim == 4 and b.ndim == 1 and x.shape[1] == W.shape[1]
                    and b.shape[0] == W.shape[0])
    if not (shapes_match and launch.serves(x, W, b)):
        return reference_call("conv2d_forward", x, W, b, stride, pad, train=train)
    oc, c, kh, kw = W.shape
    stride, pad, (oh, ow) = output_geometry(x.shape, kh, kw, stride, pad)
    n = x.shape[0]
    rows = n * oh * ow
    if not launch.fits(rows * c * kh * kw, rows * oc):
        return reference_call("conv2d_forward", x, W, b, stride, pad, train=train)
    made = im2col(x, kh, kw, stride, pad, W, b)
    if made is None:
        return reference_call("conv2d_forward", x, W, b, stride, pad, train=train)
    col, w_aug = made
    out = col @ w_aug.T                                    # (N*OH*OW, OC), the bias included
    out = out.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2)
    if not train:
        return out, None
    # x's shape, not x: the backward reads only col, the forward's own copy of x's windows
    # (as the reference's cache), so changing x after the forward changes nothing.
    return out, ("cuda", tuple(x.shape), W, b, col, W.reshape(oc, -1), stride, pad, launch.channels_last(x))


def conv2d_backward(dout, cache, need_dx=True):
    """dout (N, OC, OH, OW) -> (dx (N, C, H, W) or None, dW (OC, C, KH, KW), db (OC,))."""
    if isinstance(cache, ReferenceCache):
        return ops.conv2d_backward(dout, cache.cache, need_dx)
    _, x_shape, W, b, col, w_mat, stride, pad, nhwc = cache
    oc, c, kh, kw = W.shape
    out_shape = (x_shape[0], oc, *ops.output_shape(x_shape, kh, kw, stride, pad))
    if not launch.serves(dout, W) or tuple(dout.shape) != out_shape:
        return _recomputed(dout, cache, need_dx)
    dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, oc)  # (N*OH*OW, OC)
    dw_aug = dout_mat.T @ col                              # (OC, C*KH*KW + 1): [dW | db]
    width = col.shape[1] - 1
    dW, db = dw_aug[:, :width].reshape(W.shape), dw_aug[:, width]  # views of one product
    if not need_dx:
        return None, dW, db
    dx = col2im_t(w_mat.T @ dout_mat.T, x_shape, kh, kw, stride, pad, nhwc)
    if dx is None:
        return _recomputed(dout, cache, need_dx)
    return dx, dW, db


def _recomputed(dout, cache, need_dx):
    """The reference's backward for a call the kernels cannot finish (another dtype of
    dout, or a kernel that failed to compile since the forward), on the forward's col: the
    kernel's col has the reference's layout, so (x_shape, col, W, stride, pad) is the
    reference's own cache."""
    _, x_shape, W, _, col, _, stride, pad, _ = cache
    return ops.conv2d_backward(dout, (x_shape, col[:, :-1], W, stride, pad), need_dx)
