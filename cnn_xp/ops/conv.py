"""2-D convolution (cross-correlation, as in every CNN library) through im2col and one GEMM.

x (N, C, H, W), W (OC, C, KH, KW), b (OC,) -> out (N, OC, OH, OW).
The GEMM produces rows (n, oh, ow) x columns oc, i.e. NHWC memory; ``out`` is returned as
an NCHW-shaped view of it (no transpose copy), and the backward pass reads ``dout`` back in
that layout for free.
"""
from .im2col import col2im, im2col, output_shape, pair


def conv2d_forward(x, W, b, stride=1, pad=0):
    """Return (out, cache); out (N, OC, OH, OW), possibly a non-contiguous view."""
    if x.ndim != 4 or W.ndim != 4 or x.shape[1] != W.shape[1]:
        raise ValueError(f"conv2d: input {tuple(x.shape)} does not match weights {tuple(W.shape)}")
    n = x.shape[0]
    oc, _, kh, kw = W.shape
    col = im2col(x, kh, kw, stride, pad)                   # (N*OH*OW, C*KH*KW)
    w_mat = W.reshape(oc, -1)                              # (OC, C*KH*KW)
    out = col @ w_mat.T                                    # (N*OH*OW, OC)
    out += b
    oh, ow = output_shape(x.shape, kh, kw, stride, pad)
    out = out.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2)
    cache = (x.shape, col, W, pair(stride), pair(pad))
    return out, cache


def conv2d_backward(dout, cache, need_dx=True):
    """Return (dx or None, dW, db) for dout (N, OC, OH, OW)."""
    x_shape, col, W, stride, pad = cache
    oc, _, kh, kw = W.shape
    dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, oc)  # (N*OH*OW, OC); free for our own views
    db = dout_mat.sum(axis=0)
    dW = (dout_mat.T @ col).reshape(W.shape)
    dx = None
    if need_dx:
        dcol = dout_mat @ W.reshape(oc, -1)                # (N*OH*OW, C*KH*KW)
        dx = col2im(dcol, x_shape, kh, kw, stride, pad)
    return dx, dW, db
