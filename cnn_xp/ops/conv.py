"""2-D convolution (cross-correlation, as in every CNN library) through im2col and one GEMM.

On the CPU the compiled kernels of ``cpu_kernels`` (direct convolution, no columns) run
instead where they are built (a C compiler is present) and not switched off; everything
below is the portable path, which also runs on the GPU with its fused CUDA helpers.

x (N, C, H, W), W (OC, C, KH, KW), b (OC,) -> out (N, OC, OH, OW), possibly an NCHW-shaped
view of other memory (no transpose copy); the backward pass reads ``dout`` back in that
layout for free. ReLU and unpadded pooling keep the layout they are given (see pool.py).

CPU layouts (and wherever the CUDA kernels do not apply), chosen per layer by
``_channel_major``: building the columns copies runs of contiguous values, OW long in a
channel-major gather and C long in a channels-last one, so the longer run wins:

* channel-major (OW >= C: small C, large maps): columns (C*KH*KW, N*OH*OW), rows (c, i, j),
  read from CNHW memory; out = W @ columns is (OC, N*OH*OW), i.e. CNHW memory; dx is folded
  back into CNHW memory, or, for a stride-1 conv with OC <= C on a large map, is one
  full-correlation GEMM (``_prefer_full_correlation``).
* channels-last (C > OW): columns (N*OH*OW, KH*KW*C), columns ordered (i, j, c), read from
  NHWC memory; out = columns @ W^T is (N*OH*OW, OC), i.e. NHWC memory; dx is one small GEMM
  per kernel offset added into NHWC memory (``_dx_hwc``).

An input in the other memory layout is gathered all the same (only with shorter runs).
Where the CUDA kernels apply, the public ``im2col`` (its kernel; columns (c, i, j), rows
(n, oh, ow)) builds the columns and out is NHWC memory, as in the channels-last layout; dx
is one GEMM giving the column gradient transposed, (C*KH*KW, N*OH*OW), folded by the
gather kernel (``col2im_t``), which reads that layout coalesced.
"""
from ..backend import xp_of
from . import cpu_kernels, cuda_kernels
from .im2col import col2im_t, im2col, output_shape, pair


def _scratch(workspace, name, shape, like):
    """A reusable uninitialised array (shape, dtype and device of ``like``) kept in
    ``workspace`` (a dict the caller owns across steps; None: a fresh array). Reusing the
    large column matrices saves their page faults: a fresh 39 MB array costs about 3 ms
    more to fill than a reused one on a 2-core CPU."""
    xp = xp_of(like)
    buf = None if workspace is None else workspace.get(name)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype or xp_of(buf) is not xp:
        buf = xp.empty(shape, dtype=like.dtype)
        if workspace is not None:
            workspace[name] = buf
    return buf


def _columns_hwc(x, kh, kw, stride, pad, workspace=None):
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
    n, c = x.shape[:2]
    col = _scratch(workspace, "col", (n * oh * ow, kh * kw * c), x)
    col.reshape(n, oh, ow, kh, kw, c)[...] = windows.transpose(0, 1, 2, 4, 5, 3)
    return col


def _dx_hwc(dout_mat, W, x_shape, stride, pad):
    """dx for channels-last columns without building them: one (N*OH*OW, OC) @ (OC, C)
    GEMM per kernel offset, each added as an (N, OH, OW, C) slab into NHWC memory -> dx
    (N, C, H, W), an NCHW view. The slabs add runs of OW*C contiguous values; folding the
    (N*OH*OW, KH*KW*C) column gradient instead adds runs of only C (measured on a 2-core
    CPU: 1.9 -> 1.0 ms for deep_convnet's 16->32 conv on 12x12)."""
    xp = xp_of(dout_mat)
    n, c, h, w = x_shape
    oc, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    oh, ow = output_shape(x_shape, kh, kw, stride, pad)
    w_offsets = W.transpose(2, 3, 0, 1)                   # (KH, KW, OC, C)
    image = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dout_mat.dtype)
    for i in range(kh):
        for j in range(kw):
            slab = image[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
            slab += (dout_mat @ w_offsets[i, j]).reshape(n, oh, ow, c)
    return image[:, ph : ph + h, pw : pw + w].transpose(0, 3, 1, 2)


def _columns_cm(x, kh, kw, stride, pad, workspace=None, name="col"):
    """NCHW-shaped ``x`` -> (C*KH*KW, N*OH*OW), rows ordered (c, i, j), columns (n, oh, ow).
    One strided (C, N, OH, OW) slab per kernel offset; for CNHW memory every slab copies
    runs of OW contiguous values."""
    xp = xp_of(x)
    n, c = x.shape[:2]
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    oh, ow = output_shape(x.shape, kh, kw, stride, pad)
    x_cnhw = x.transpose(1, 0, 2, 3)                       # a view; contiguous for CNHW memory
    if ph or pw:
        x_cnhw = xp.pad(x_cnhw, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    col = _scratch(workspace, name, (c * kh * kw, n * oh * ow), x)
    slabs = col.reshape(c, kh, kw, n, oh, ow)
    for i in range(kh):
        for j in range(kw):
            slabs[:, i, j] = x_cnhw[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
    return col


def _fold_cm(dcol, x_shape, kh, kw, stride, pad):
    """Adjoint of ``_columns_cm``: (C*KH*KW, N*OH*OW) -> dx (N, C, H, W), an NCHW view of
    CNHW memory. Adds one (C, N, OH, OW) slab per kernel offset."""
    xp = xp_of(dcol)
    n, c, h, w = x_shape
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    oh, ow = output_shape(x_shape, kh, kw, stride, pad)
    dcol = dcol.reshape(c, kh, kw, n, oh, ow)
    image = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=dcol.dtype)
    for i in range(kh):
        for j in range(kw):
            image[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] += dcol[:, i, j]
    return image[:, :, ph : ph + h, pw : pw + w].transpose(1, 0, 2, 3)


def _channel_major(x_shape, out_hw) -> bool:
    """The CPU column layout of a conv: channel-major when the output rows are at least as
    long as the channel count (the gather then copies the longer runs). Measured on a
    2-core CPU, batch 100, fwd+bwd: LeNet-5's 1->6 conv 7.0 -> 2.9 ms and 6->16 conv 10.6
    -> 5.5 ms, deep_convnet's 16->16 conv on 26x26 23 -> 18 ms; channels-last stays ahead
    for 32 and 64 channels on 8x8 and 4x4 maps (4.5 vs 5.4 ms, 2.5 vs 6.0 ms)."""
    return out_hw[1] >= x_shape[1]


def _prefer_full_correlation(x_shape, W, stride, pad, out_hw) -> bool:
    """Channel-major dx, measured on a 2-core CPU: the one-GEMM full correlation beats
    GEMM + fold when the fold would add many narrow slabs (stride 1, no more output than
    input channels, a map of >= 16x16): deep_convnet's 16->16 conv on 26x26 (fold: 3.9 ms
    GEMM + 6.7 ms fold) takes about 5 ms. (Channels-last dx by kernel offsets beat the
    full correlation there too: 4.6 vs 9.4 ms for 32->32 channels on 18x18.)"""
    oc, c, kh, kw = W.shape
    return (stride == (1, 1) and oc <= c and out_hw[0] * out_hw[1] >= 256
            and pad[0] < kh and pad[1] < kw)


def conv2d_forward(x, W, b, stride=1, pad=0, workspace=None, need_cache=True):
    """Return (out, cache); out (N, OC, OH, OW), possibly a non-contiguous view.
    ``workspace``: a dict kept by the caller across calls, in which the CPU paths reuse
    their large temporaries (the columns stay referenced by ``cache``, so a later call
    with the same workspace invalidates the earlier cache). ``need_cache=False`` (no
    backward pass will follow): cache is None, so nothing keeps the columns alive."""
    if x.ndim != 4 or W.ndim != 4 or x.shape[1] != W.shape[1]:
        raise ValueError(f"conv2d: input {tuple(x.shape)} does not match weights {tuple(W.shape)}")
    n = x.shape[0]
    oc, _, kh, kw = W.shape
    oh, ow = output_shape(x.shape, kh, kw, stride, pad)
    if cpu_kernels.applies(x, W, b):  # compiled direct convolution, NHWC memory
        fast = cpu_kernels.conv_forward(x, W, b, stride, pad)
        if fast is not None:
            out, x_nhwc = fast
            cache = (x.shape, x_nhwc, W, None, "compiled", pair(stride), pair(pad), workspace)
            return out, (cache if need_cache else None)
    if cuda_kernels.applies(x):
        layout = "gpu"
    else:
        layout = "channel_major" if _channel_major(x.shape, (oh, ow)) else "channels_last"
    if layout == "channel_major":
        col = _columns_cm(x, kh, kw, stride, pad, workspace)  # (C*KH*KW, N*OH*OW)
        w_mat = W.reshape(oc, -1)                          # (OC, C*KH*KW)
        out = w_mat @ col                                  # (OC, N*OH*OW)
        out += b[:, None]
        out = out.reshape(oc, n, oh, ow).transpose(1, 0, 2, 3)
    else:
        if layout == "channels_last":
            col = _columns_hwc(x, kh, kw, stride, pad, workspace)  # (N*OH*OW, KH*KW*C)
            w_mat = W.transpose(0, 2, 3, 1).reshape(oc, -1)  # (OC, KH*KW*C), a small copy
        else:
            col = im2col(x, kh, kw, stride, pad)           # (N*OH*OW, C*KH*KW)
            w_mat = W.reshape(oc, -1)
        out = col @ w_mat.T                                # (N*OH*OW, OC)
        out += b
        out = out.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2)
    cache = (x.shape, col, W, w_mat, layout, pair(stride), pair(pad), workspace)
    return out, (cache if need_cache else None)


def conv2d_backward(dout, cache, need_dx=True):
    """Return (dx or None, dW, db) for dout (N, OC, OH, OW); dx may be an NCHW view."""
    x_shape, col, W, w_mat, layout, stride, pad, workspace = cache
    oc, c, kh, kw = W.shape
    if layout == "compiled":  # the cache's column slot holds the padded NHWC input
        return cpu_kernels.conv_backward(dout, col, W, x_shape, stride, pad, need_dx)
    if layout == "channel_major":
        return _backward_cm(dout, x_shape, col, W, w_mat, stride, pad, need_dx, workspace)
    channels_last = layout == "channels_last"
    dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, oc)  # (N*OH*OW, OC); free for our own views
    db = cuda_kernels.column_sums(dout_mat) if cuda_kernels.applies(dout_mat) else dout_mat.sum(axis=0)
    if channels_last:
        dw_mat = (col.T @ dout_mat).T                      # (OC, columns); see _backward_cm
        dW = dw_mat.reshape(oc, kh, kw, c).transpose(0, 3, 1, 2).copy()
    else:
        dW = (dout_mat.T @ col).reshape(W.shape)
    if not need_dx:
        return None, dW, db
    if channels_last:
        return _dx_hwc(dout_mat, W, x_shape, stride, pad), dW, db
    # GPU: the column gradient transposed, (C*KH*KW, N*OH*OW), so the fold reads it coalesced
    return col2im_t(w_mat.T @ dout_mat.T, x_shape, kh, kw, stride, pad), dW, db


def _backward_cm(dout, x_shape, col, W, w_mat, stride, pad, need_dx, workspace):
    """``conv2d_backward`` for channel-major columns ``col`` (C*KH*KW, N*OH*OW)."""
    xp = xp_of(dout)
    oc, c, kh, kw = W.shape
    dout_mat = dout.transpose(1, 0, 2, 3).reshape(oc, -1)  # (OC, N*OH*OW); free for CNHW memory
    db = dout_mat.sum(axis=1)
    # (columns @ dout^T)^T, not dout @ columns^T: OpenBLAS runs this long-K, 16-row GEMM
    # 1.1-2x faster in this orientation (deep_convnet's 16->16 conv: 2.9 -> 2.3 ms).
    dW = (col @ dout_mat.T).T.reshape(W.shape)
    if not need_dx:
        return None, dW, db
    if _prefer_full_correlation(x_shape, W, stride, pad, dout.shape[2:]):
        # dx = the conv of dout, padded by K-1-pad, with the flipped, transposed kernel.
        dcol = _columns_cm(dout, kh, kw, 1, (kh - 1 - pad[0], kw - 1 - pad[1]), workspace, "dcol")
        w_flip = W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(c, -1)  # (C, OC*KH*KW)
        n, _, h, w = x_shape
        return (w_flip @ dcol).reshape(c, n, h, w).transpose(1, 0, 2, 3), dW, db
    dcol = xp.matmul(w_mat.T, dout_mat, out=_scratch(workspace, "dcol", (c * kh * kw, dout_mat.shape[1]), dout))
    return _fold_cm(dcol, x_shape, kh, kw, stride, pad), dW, db
