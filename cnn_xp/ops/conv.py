"""2-D convolution (cross-correlation, as in every CNN library): im2col, one GEMM, a reshape.

x (N, C, H, W), W (OC, C, KH, KW), b (OC,) -> out (N, OC, OH, OW). ``out`` is an NCHW view
of the GEMM's (N, OH, OW, OC) memory (seed 002's ``transpose(0, 3, 1, 2)``); ``dx`` is
NCHW-shaped too. The backward is the Affine layer's on the columns, then ``col2im``.
"""
from .im2col import col2im, im2col, output_shape, pair


def conv2d_forward(x, W, b, stride=1, pad=0, train=True):
    """(out, cache); cache is None when ``train`` is False (no backward will follow)."""
    if x.ndim != 4 or W.ndim != 4 or x.shape[1] != W.shape[1]:
        raise ValueError(f"conv2d: input {tuple(x.shape)} does not match weights {tuple(W.shape)}")
    n = x.shape[0]
    oc, _, kh, kw = W.shape
    oh, ow = output_shape(x.shape, kh, kw, stride, pad)
    col = im2col(x, kh, kw, stride, pad)              # (N*OH*OW, C*KH*KW)
    col_w = W.reshape(oc, -1).T                       # (C*KH*KW, OC)
    out = col @ col_w
    out += b
    out = out.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2)
    return out, ((x.shape, col, W, pair(stride), pair(pad)) if train else None)


def conv2d_backward(dout, cache, need_dx=True):
    """(dx or None, dW, db) for dout (N, OC, OH, OW)."""
    x_shape, col, W, stride, pad = cache
    oc, _, kh, kw = W.shape
    dout = dout.transpose(0, 2, 3, 1).reshape(-1, oc)  # (N*OH*OW, OC)
    db = dout.sum(axis=0)
    dW = (col.T @ dout).T.reshape(W.shape)
    if not need_dx:
        return None, dW, db
    dcol = dout @ W.reshape(oc, -1)                   # (N*OH*OW, C*KH*KW)
    return col2im(dcol, x_shape, kh, kw, stride, pad), dW, db
