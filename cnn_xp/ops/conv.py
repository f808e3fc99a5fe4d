"""2-D convolution (cross-correlation, as in every CNN library) through im2col and one GEMM.

x (N, C, H, W), W (OC, C, KH, KW), b (OC,) -> out (N, OC, OH, OW).
The GEMM produces rows (n, oh, ow) x columns oc, i.e. NHWC memory; ``out`` is returned as
an NCHW-shaped view of it (no transpose copy), and the backward pass reads ``dout`` back in
that layout for free.

Internal column order: on the CPU (and wherever the CUDA kernels do not apply) the columns
are ordered (i, j, c), channels last, so building them from an NHWC-memory input copies runs
of C contiguous values, and dx is folded back into NHWC memory the same way (returned as an
NCHW view). The public ``im2col`` keeps the (c, i, j) order; on the GPU its kernel is used.
"""
from . import cuda_kernels
from .im2col import col2im, im2col, output_shape, pair
from ..backend import xp_of


def _columns_hwc(x, kh, kw, stride, pad):
    """NCHW ``x`` -> (N*OH*OW, KH*KW*C) with columns ordered (i, j, c)."""
    xp = xp_of(x)
    (sh, sw) = pair(stride)
    oh, ow = output_shape(x.shape, kh, kw, stride, pad)
    (ph, pw) = pair(pad)
    x_nhwc = x.transpose(0, 2, 3, 1)                       # a view; contiguous for NHWC memory
    if ph or pw:
        x_nhwc = xp.pad(x_nhwc, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    windows = xp.lib.stride_tricks.sliding_window_view(x_nhwc, (kh, kw), axis=(1, 2))
    windows = windows[:, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw]  # (N, OH, OW, C, KH, KW)
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(x.shape[0] * oh * ow, -1)


def _fold_hwc(dcol, x_shape, kh, kw, stride, pad):
    """Adjoint of ``_columns_hwc``: (N*OH*OW, KH*KW*C) -> dx (N, C, H, W), an NCHW view of
    NHWC memory. Loops over the KH*KW offsets, adding (N, OH, OW, C) slabs."""
    xp = xp_of(dcol)
    n, c, h, w = x_shape
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    oh, ow = output_shape(x_shape, kh, kw, stride, pad)
    dcol = dcol.reshape(n, oh, ow, kh, kw, c)
    image = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dcol.dtype)
    for i in range(kh):
        for j in range(kw):
            image[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] += dcol[:, :, :, i, j]
    return image[:, ph : ph + h, pw : pw + w].transpose(0, 3, 1, 2)


def _dx_full_correlation(dout_nhwc, W, x_shape, pad):
    """dx of a stride-1 conv as ONE GEMM, no fold: the "full" correlation of dout (padded by
    K-1-pad) with the flipped kernel. dout_nhwc (N, OH, OW, OC) -> dx (N, C, H, W), an NCHW
    view of NHWC memory."""
    xp = xp_of(dout_nhwc)
    n, c, h, w = x_shape
    oc, _, kh, kw = W.shape
    qh, qw = kh - 1 - pad[0], kw - 1 - pad[1]
    padded = xp.pad(dout_nhwc, ((0, 0), (qh, qh), (qw, qw), (0, 0)))
    windows = xp.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))[:, :h, :w]
    dcol = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * h * w, kh * kw * oc)  # (i, j, oc)
    w_flip = W[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(kh * kw * oc, c)
    return (dcol @ w_flip).reshape(n, h, w, c).transpose(0, 3, 1, 2)


def _prefer_full_correlation(x_shape, W, stride, pad, out_hw) -> bool:
    """Measured on a 2-core CPU: the one-GEMM dx beats GEMM + fold when the fold would add
    many narrow slabs (stride 1, no more output than input channels, a map of >= 16x16)."""
    oc, c, kh, kw = W.shape
    return (stride == (1, 1) and oc <= c and out_hw[0] * out_hw[1] >= 256
            and pad[0] < kh and pad[1] < kw)


def conv2d_forward(x, W, b, stride=1, pad=0):
    """Return (out, cache); out (N, OC, OH, OW), possibly a non-contiguous view."""
    if x.ndim != 4 or W.ndim != 4 or x.shape[1] != W.shape[1]:
        raise ValueError(f"conv2d: input {tuple(x.shape)} does not match weights {tuple(W.shape)}")
    n = x.shape[0]
    oc, _, kh, kw = W.shape
    oh, ow = output_shape(x.shape, kh, kw, stride, pad)
    channels_last = not cuda_kernels.applies(x)
    if channels_last:
        col = _columns_hwc(x, kh, kw, stride, pad)         # (N*OH*OW, KH*KW*C)
        w_mat = W.transpose(0, 2, 3, 1).reshape(oc, -1)    # (OC, KH*KW*C), a small copy
    else:
        col = im2col(x, kh, kw, stride, pad)               # (N*OH*OW, C*KH*KW)
        w_mat = W.reshape(oc, -1)
    out = col @ w_mat.T                                    # (N*OH*OW, OC)
    out += b
    out = out.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2)
    cache = (x.shape, col, W, w_mat, channels_last, pair(stride), pair(pad))
    return out, cache


def conv2d_backward(dout, cache, need_dx=True):
    """Return (dx or None, dW, db) for dout (N, OC, OH, OW); dx may be an NCHW view."""
    x_shape, col, W, w_mat, channels_last, stride, pad = cache
    oc, c, kh, kw = W.shape
    dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, oc)  # (N*OH*OW, OC); free for our own views
    db = cuda_kernels.column_sums(dout_mat) if cuda_kernels.applies(dout_mat) else dout_mat.sum(axis=0)
    dw_mat = dout_mat.T @ col                              # (OC, columns)
    if channels_last:
        dW = dw_mat.reshape(oc, kh, kw, c).transpose(0, 3, 1, 2).copy()
    else:
        dW = dw_mat.reshape(W.shape)
    dx = None
    if need_dx:
        if channels_last and _prefer_full_correlation(x_shape, W, stride, pad, dout.shape[2:]):
            dout_nhwc = dout_mat.reshape(dout.shape[0], *dout.shape[2:], oc)
            return _dx_full_correlation(dout_nhwc, W, x_shape, pad), dW, db
        dcol = dout_mat @ w_mat                            # (N*OH*OW, columns)
        if channels_last:
            dx = _fold_hwc(dcol, x_shape, kh, kw, stride, pad)
        else:
            dx = col2im(dcol, x_shape, kh, kw, stride, pad)
    return dx, dW, db
