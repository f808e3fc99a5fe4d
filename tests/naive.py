"""Naive loop reference implementations used as test oracles (test code: NumPy allowed).

Everything here is written for clarity, not speed: explicit Python loops over every output
element, NCHW layout, float64 arithmetic. Shapes follow the cnn_xp.ops contract.
"""
import math

import numpy as np


def pair(v):
    """int or (h, w) -> (h, w)."""
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def out_size(h, w, kh, kw, stride, pad):
    """Output (OH, OW) of a kh x kw window sliding with the given stride over an (h, w) map."""
    sh, sw = pair(stride)
    ph, pw = pair(pad)
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def padded(x, pad, value=0.0):
    ph, pw = pair(pad)
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=np.float64)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    return xp


def im2col(x, kh, kw, stride=1, pad=0):
    """(N,C,H,W) -> (N*OH*OW, C*KH*KW); rows (n, oh, ow), columns (c, i, j)."""
    n, c, h, w = x.shape
    sh, sw = pair(stride)
    oh, ow = out_size(h, w, kh, kw, stride, pad)
    xp = padded(x, pad)
    col = np.zeros((n * oh * ow, c * kh * kw))
    for b in range(n):
        for y in range(oh):
            for z in range(ow):
                row = (b * oh + y) * ow + z
                for ch in range(c):
                    for i in range(kh):
                        for j in range(kw):
                            col[row, (ch * kh + i) * kw + j] = xp[b, ch, y * sh + i, z * sw + j]
    return col


def col2im(col, x_shape, kh, kw, stride=1, pad=0):
    """Adjoint of im2col: every column entry is added back to the pixel it was read from."""
    n, c, h, w = x_shape
    sh, sw = pair(stride)
    ph, pw = pair(pad)
    oh, ow = out_size(h, w, kh, kw, stride, pad)
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for b in range(n):
        for y in range(oh):
            for z in range(ow):
                row = (b * oh + y) * ow + z
                for ch in range(c):
                    for i in range(kh):
                        for j in range(kw):
                            dxp[b, ch, y * sh + i, z * sw + j] += col[row, (ch * kh + i) * kw + j]
    return dxp[:, :, ph:ph + h, pw:pw + w]


def conv2d(x, W, b, stride=1, pad=0):
    """Cross-correlation: out[n,o,y,z] = sum_{c,i,j} xpad[n,c,y*sh+i,z*sw+j] W[o,c,i,j] + b[o]."""
    n, c, h, w = x.shape
    oc, _, kh, kw = W.shape
    sh, sw = pair(stride)
    oh, ow = out_size(h, w, kh, kw, stride, pad)
    xp = padded(x, pad)
    out = np.zeros((n, oc, oh, ow))
    for bi in range(n):
        for o in range(oc):
            for y in range(oh):
                for z in range(ow):
                    acc = float(b[o])
                    for ch in range(c):
                        for i in range(kh):
                            for j in range(kw):
                                acc += xp[bi, ch, y * sh + i, z * sw + j] * W[o, ch, i, j]
                    out[bi, o, y, z] = acc
    return out


def conv2d_backward(dout, x, W, stride=1, pad=0):
    """Gradients (dx, dW, db) of conv2d, accumulated element by element."""
    n, c, h, w = x.shape
    oc, _, kh, kw = W.shape
    sh, sw = pair(stride)
    ph, pw = pair(pad)
    oh, ow = dout.shape[2:]
    xp = padded(x, pad)
    dxp = np.zeros_like(xp)
    dW = np.zeros(W.shape)
    db = np.zeros(oc)
    for bi in range(n):
        for o in range(oc):
            for y in range(oh):
                for z in range(ow):
                    g = dout[bi, o, y, z]
                    db[o] += g
                    for ch in range(c):
                        for i in range(kh):
                            for j in range(kw):
                                dW[o, ch, i, j] += g * xp[bi, ch, y * sh + i, z * sw + j]
                                dxp[bi, ch, y * sh + i, z * sw + j] += g * W[o, ch, i, j]
    return dxp[:, :, ph:ph + h, pw:pw + w], dW, db


def maxpool2d(x, kh, kw, stride, pad=0):
    """Max over each window; padding is -inf. Returns (out, argmax positions in padded coords)."""
    n, c, h, w = x.shape
    sh, sw = pair(stride)
    oh, ow = out_size(h, w, kh, kw, stride, pad)
    xp = padded(x, pad, value=-math.inf)
    out = np.zeros((n, c, oh, ow))
    where = np.zeros((n, c, oh, ow, 2), dtype=np.int64)
    for b in range(n):
        for ch in range(c):
            for y in range(oh):
                for z in range(ow):
                    best, bi, bj = -math.inf, -1, -1
                    for i in range(kh):          # row-major scan: the FIRST max wins
                        for j in range(kw):
                            v = xp[b, ch, y * sh + i, z * sw + j]
                            if bi < 0 or v > best:
                                best, bi, bj = v, y * sh + i, z * sw + j
                    out[b, ch, y, z] = best
                    where[b, ch, y, z] = (bi, bj)
    return out, where


def maxpool2d_backward(dout, x_shape, where, pad=0):
    n, c, h, w = x_shape
    ph, pw = pair(pad)
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for b in range(n):
        for ch in range(c):
            for y in range(dout.shape[2]):
                for z in range(dout.shape[3]):
                    i, j = where[b, ch, y, z]
                    dxp[b, ch, i, j] += dout[b, ch, y, z]
    return dxp[:, :, ph:ph + h, pw:pw + w]


def avgpool2d(x, kh, kw, stride, pad=0):
    """Mean over each window, zero padding counted (divide by kh*kw)."""
    n, c, h, w = x.shape
    sh, sw = pair(stride)
    oh, ow = out_size(h, w, kh, kw, stride, pad)
    xp = padded(x, pad)
    out = np.zeros((n, c, oh, ow))
    for b in range(n):
        for ch in range(c):
            for y in range(oh):
                for z in range(ow):
                    s = 0.0
                    for i in range(kh):
                        for j in range(kw):
                            s += xp[b, ch, y * sh + i, z * sw + j]
                    out[b, ch, y, z] = s / (kh * kw)
    return out


def avgpool2d_backward(dout, x_shape, kh, kw, stride, pad=0):
    n, c, h, w = x_shape
    sh, sw = pair(stride)
    ph, pw = pair(pad)
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for b in range(n):
        for ch in range(c):
            for y in range(dout.shape[2]):
                for z in range(dout.shape[3]):
                    g = dout[b, ch, y, z] / (kh * kw)
                    for i in range(kh):
                        for j in range(kw):
                            dxp[b, ch, y * sh + i, z * sw + j] += g
    return dxp[:, :, ph:ph + h, pw:pw + w]


def softmax_rows(x):
    """Row-by-row softmax of a 2-D array with math.exp (max subtracted)."""
    out = np.zeros(x.shape)
    for r in range(x.shape[0]):
        m = max(float(v) for v in x[r])
        e = [math.exp(float(v) - m) for v in x[r]]
        s = sum(e)
        out[r] = [v / s for v in e]
    return out


def log_softmax_rows(x):
    out = np.zeros(x.shape)
    for r in range(x.shape[0]):
        m = max(float(v) for v in x[r])
        lse = m + math.log(sum(math.exp(float(v) - m) for v in x[r]))
        out[r] = [float(v) - lse for v in x[r]]
    return out


def cross_entropy(scores, labels):
    """Mean over rows of -log softmax(scores)[label]; labels int (N,) or one-hot/soft (N, K)."""
    logp = log_softmax_rows(scores)
    n = scores.shape[0]
    total = 0.0
    for r in range(n):
        if np.ndim(labels) == 1:
            total -= logp[r, int(labels[r])]
        else:
            total -= sum(float(labels[r, k]) * logp[r, k] for k in range(scores.shape[1]))
    return total / n


def numeric_grad(f, x, eps=1e-6):
    """Central differences of scalar f() w.r.t. the array x (mutated in place, then restored)."""
    g = np.zeros(x.shape)
    flat = x.reshape(-1)
    assert np.shares_memory(flat, x), "x must be contiguous so that it can be perturbed in place"
    for k in range(flat.size):
        old = float(flat[k])
        flat[k] = old + eps
        fp = float(f())
        flat[k] = old - eps
        fm = float(f())
        flat[k] = old
        g.reshape(-1)[k] = (fp - fm) / (2 * eps)
    return g


def rel_error(a, b):
    """max |a - b| / max(|a| + |b|) over all elements (0 when both are exactly zero)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = float(np.max(np.abs(a) + np.abs(b))) if a.size else 0.0
    if denom == 0.0:
        return 0.0
    return float(np.max(np.abs(a - b))) / denom
