"""CuPy fast paths: hand-fused GPU kernels for the ops where CuPy's generic ops are slow.

Each kernel below computes exactly what its portable twin computes (same layouts, same
summation order) in one launch, with no atomics (deterministic) and no large temporaries:

- ``im2col``           NCHW x -> col (N*OH*OW, C*KH*KW); padding done in the kernel.
- ``fold_windows``     the adjoint of ``sliding_windows`` / col2im, as a GATHER: each image
                       pixel sums the window entries that touch it, kernel offsets in
                       row-major order (the portable loop's order).
- ``maxpool_forward``  max and argmax (first maximum, NaN wins) in one pass, -inf padding.
- ``maxpool_backward`` gather from argmax: each pixel sums the upstream gradients of the
                       windows whose argmax points at it.
- ``softmax_cross_entropy`` / ``softmax_cross_entropy_grad``: one thread per row computes
                       the softmax and the row's loss; the gradient is one in-place pass.
- ``relu_backward``, ``dropout_forward``: one pass each instead of two to four.
- ``sgd_update``, ``momentum_update``, ``nesterov_update``, ``adagrad_update``,
  ``rmsprop_update``, ``adam_update``: one fused ElementwiseKernel per optimizer step of one
  parameter, updating the parameter and its state in place.

Not a kernel: ``column_sums`` (conv bias gradients) is one cuBLAS GEMV with a ones vector,
equal to ``sum(axis=0)`` up to float rounding (another summation order).

Kernels are ``cupy.ElementwiseKernel`` objects built lazily on first GPU use (CuPy compiles
and caches them per dtype); float32 and float64 are supported. cupy is reached only through
``backend.cupy()``. Callers ask ``applies(array)`` first: it is False for NumPy arrays, other
dtypes, when ``CNN_XP_NO_CUDA_KERNELS=1`` is set, or after a kernel failed to compile; the
fast functions return ``None`` when a compile fails (once, with a warning), and the caller
then runs the portable code.
"""
from __future__ import annotations

import os
import warnings

from .. import backend

ENV_DISABLE = "CNN_XP_NO_CUDA_KERNELS"
DTYPES = ("float32", "float64")

_kernels = None          # dict name -> ElementwiseKernel, built on first use
_broken: str | None = None  # why the fast paths were switched off (compile failure)

# --- kernel sources ---------------------------------------------------------------------------
# Shared window geometry: channels, image (height, width), output (out_h, out_w), kernel
# (k_h, k_w), stride (s_h, s_w), padding (p_h, p_w).
_GEOMETRY = ("int32 channels, int32 height, int32 width, int32 out_h, int32 out_w, "
             "int32 k_h, int32 k_w, int32 s_h, int32 s_w, int32 p_h, int32 p_w")

# Decode the flat index i of an (N, C, H, W) image into n*C + c, y, x. Index arithmetic is
# 32-bit (a GPU divides 64-bit integers in a longer software routine; on an H100 that made
# im2col 8% slower); ``_launch`` guarantees every array has fewer than 2^31 elements.
# Pointer offsets (index * int64 stride) are still computed in 64 bits.
_DECODE_PIXEL = """
    const int pixel = (int)i;
    const int x = pixel % width;
    const int y = (pixel / width) % height;
    const int nc = pixel / (width * height);
"""

# Loop over the windows that cover padded pixel (yq, xq): kernel rows ki = yq mod s_h, +s_h...
# with output row oh = (yq - ki) / s_h in [0, out_h); likewise for columns. Row-major order.
_FOR_COVERING_WINDOWS = """
    const int yq = (int)y + p_h, xq = (int)x + p_w;
    for (int ki = yq % s_h; ki < k_h && ki <= yq; ki += s_h) {
        const int oh = (yq - ki) / s_h;
        if (oh >= out_h) continue;
        for (int kj = xq % s_w; kj < k_w && kj <= xq; kj += s_w) {
            const int ow = (xq - kj) / s_w;
            if (ow >= out_w) continue;
"""

KERNEL_SPECS = {
    # windows: any strided (N, C, OH, OW, KH, KW) view; ws0..ws5 its element strides.
    "fold_windows": (
        "raw T windows, " + _GEOMETRY + ", int64 ws0, int64 ws1, int64 ws2, int64 ws3, "
        "int64 ws4, int64 ws5",
        "T image",
        _DECODE_PIXEL + """
    const int c = nc % channels, n = nc / channels;
    const T* base = &windows[(ptrdiff_t)0] + n * ws0 + c * ws1;
    T acc = 0;""" + _FOR_COVERING_WINDOWS + """
            acc += base[oh * ws2 + ow * ws3 + ki * ws4 + kj * ws5];
        }
    }
    image = acc;
""",
    ),
    # dout, argmax: C-contiguous (N, C, OH, OW).
    "maxpool_backward": (
        "raw T dout, raw I argmax, " + _GEOMETRY,
        "T dx",
        _DECODE_PIXEL + """
    const ptrdiff_t plane = (ptrdiff_t)nc * out_h * out_w;
    T acc = 0;""" + _FOR_COVERING_WINDOWS + """
            const ptrdiff_t o = plane + (ptrdiff_t)oh * out_w + ow;
            if (argmax[o] == (I)(ki * k_w + kj)) acc += dout[o];
        }
    }
    dx = acc;
""",
    ),
    # x: any strided (N, C, H, W) view; xs0..xs3 its element strides. Output (N, C, OH, OW).
    "maxpool_forward": (
        "raw T x, " + _GEOMETRY + ", int64 xs0, int64 xs1, int64 xs2, int64 xs3, T neg_inf",
        "T out, I argmax",
        """
    const int pixel = (int)i;
    const int ow = pixel % out_w;
    const int oh = (pixel / out_w) % out_h;
    const int nc = pixel / (out_w * out_h);
    const int c = nc % channels, n = nc / channels;
    const T* base = &x[(ptrdiff_t)0] + n * xs0 + c * xs1;
    T best = neg_inf;
    int best_k = 0;
    for (int ki = 0; ki < k_h; ++ki) {
        const int y = (int)oh * s_h - p_h + ki;
        for (int kj = 0; kj < k_w; ++kj) {
            const int xx = (int)ow * s_w - p_w + kj;
            const T v = (y >= 0 && y < height && xx >= 0 && xx < width)
                        ? base[y * xs2 + xx * xs3] : neg_inf;
            const int k = ki * k_w + kj;
            if (k == 0 || v > best || (v != v && best == best)) { best = v; best_k = k; }
        }
    }
    out = best;
    argmax = (I)best_k;
""",
    ),
    # x: any strided (N, C, H, W) view. Output col (N*OH*OW, C*KH*KW), C-contiguous, zero
    # padding. One thread per column entry q of rows_per_thread consecutive rows (output
    # pixels): its integer divisions, most of the work of a gather, happen once per thread,
    # and neighbouring threads still write neighbouring entries of each row.
    "im2col": (
        "raw T x, " + _GEOMETRY + ", int32 rows, int32 rows_per_thread, "
        "int64 xs0, int64 xs1, int64 xs2, int64 xs3",
        "raw T col",
        """
    const int width_col = channels * k_h * k_w;
    const int q = (int)i % width_col, first = (int)i / width_col * rows_per_thread;
    const int last = first + rows_per_thread < rows ? first + rows_per_thread : rows;
    const int kj = q % k_w, ki = (q / k_w) % k_h, c = q / (k_w * k_h);
    int ow = first % out_w, oh = (first / out_w) % out_h, n = first / (out_w * out_h);
    const T* xc = &x[(ptrdiff_t)0] + c * xs1;
    T* out = &col[(ptrdiff_t)0] + q;
    for (int row = first; row < last; ++row) {
        const int y = oh * s_h - p_h + ki, xx = ow * s_w - p_w + kj;
        out[(ptrdiff_t)row * width_col] = (y >= 0 && y < height && xx >= 0 && xx < width)
                                          ? xc[n * xs0 + y * xs2 + xx * xs3] : (T)0;
        if (++ow == out_w) { ow = 0; if (++oh == out_h) { oh = 0; ++n; } }
    }
""",
    ),
    # One thread per row of C-contiguous scores (N, K): probs (N, K) (a raw output, written
    # through its pointer) = softmax of the row, row_loss (N,) = -log probs[label] = log(sum) + max - s[label].
    "softmax_xent_rows": (
        "raw T scores, raw I labels, int32 classes",
        "raw T probs, T row_loss",
        """
    const T* s = &scores[(ptrdiff_t)i * classes];
    T* p = &probs[(ptrdiff_t)i * classes];
    T top = s[0];
    for (int j = 1; j < classes; ++j) top = s[j] > top ? s[j] : top;
    T total = 0;
    for (int j = 0; j < classes; ++j) { p[j] = exp(s[j] - top); total += p[j]; }
    for (int j = 0; j < classes; ++j) p[j] /= total;
    row_loss = log(total) + top - s[labels[i]];
""",
    ),
    # In place over probs (N, K): grad = (probs - one_hot(label)) * scale, scale = dout / N.
    "softmax_xent_grad": (
        "raw I labels, int32 classes, T scale",
        "T grad",
        """
    const int row = (int)i / classes, j = (int)i % classes;
    grad = (grad - (labels[row] == (I)j ? (T)1 : (T)0)) * scale;
""",
    ),
    # ReLU backward in one pass, with the portable code's NaN behaviour (dout * (out > 0)).
    "relu_backward": ("T dout, T out", "T dx", "dx = dout * (T)(out > (T)0);"),
    # Inverted dropout from uniform draws u: mask = scale where u >= p, else 0; y = x * mask.
    "dropout_forward": ("T x, T u, T p, T scale", "T y, T mask",
                        "mask = u >= p ? scale : (T)0; y = x * mask;"),
    "sgd_update": ("T g, T lr", "T p", "p -= lr * g;"),
    "momentum_update": (
        "T g, T lr, T momentum", "T p, T v",
        "v = momentum * v - lr * g; p += v;"),
    "nesterov_update": (
        "T g, T lr, T momentum", "T p, T v",
        "v = momentum * v - lr * g; p += momentum * v - lr * g;"),
    "adagrad_update": (
        "T g, T lr, T eps", "T p, T h",
        "h += g * g; p -= lr * g / (sqrt(h) + eps);"),
    "rmsprop_update": (
        "T g, T lr, T decay, T one_minus_decay, T eps", "T p, T h",
        "h = decay * h + one_minus_decay * g * g; p -= lr * g / (sqrt(h) + eps);"),
    "adam_update": (
        "T g, T one_minus_beta1, T one_minus_beta2, T step, T v_scale, T eps", "T p, T m, T v",
        "m += one_minus_beta1 * (g - m); v += one_minus_beta2 * (g * g - v);"
        " p -= step * m / (sqrt(v) * v_scale + eps);"),
}


def build_kernels(cp) -> dict:
    """ElementwiseKernel objects for every spec, built with the cupy module ``cp``.

    Construction needs no GPU (compilation happens at the first launch), so tests call this
    on machines without one."""
    # "raw T windows" is indexed as windows[0] only to get the base pointer of a strided view;
    # the window code does its own stride arithmetic, so the kernels accept any view.
    return {name: cp.ElementwiseKernel(in_params, out_params, body, "cnn_xp_" + name)
            for name, (in_params, out_params, body) in KERNEL_SPECS.items()}


# --- dispatch ---------------------------------------------------------------------------------

def enabled() -> bool:
    """False when ``CNN_XP_NO_CUDA_KERNELS=1`` is set or a kernel failed to compile."""
    return _broken is None and os.environ.get(ENV_DISABLE, "") not in ("1", "true", "yes")


def applies(*arrays) -> bool:
    """True when every array is a CuPy float32/float64 array and the fast paths are on.

    Checks the array type first, so CPU callers never import cupy."""
    return (all(backend.device_of(a) == "gpu" and a.dtype.name in DTYPES for a in arrays)
            and enabled())


def status() -> dict:
    """For doctor/gpu_check: whether the fast paths are on, and why not."""
    if os.environ.get(ENV_DISABLE, "") in ("1", "true", "yes"):
        return {"enabled": False, "reason": f"{ENV_DISABLE} is set"}
    if _broken is not None:
        return {"enabled": False, "reason": _broken}
    return {"enabled": True, "reason": "", "kernels": sorted(KERNEL_SPECS)}


def reset() -> None:
    """Forget built kernels and any recorded compile failure (for tests)."""
    global _kernels, _broken
    _kernels, _broken = None, None


INDEX_LIMIT = 2**31 - 1  # the kernels index elements with 32-bit ints


def _launch(name, *args, **kwargs):
    """Run kernel ``name``; on a compile failure switch the fast paths off and return None.
    Also None (this call only) when an array is too large for 32-bit element indices."""
    global _kernels, _broken
    if any(getattr(a, "size", 0) > INDEX_LIMIT for a in args):
        return None
    cp = backend.cupy()
    if _kernels is None:
        _kernels = build_kernels(cp)
    try:
        return _kernels[name](*args, **kwargs)
    except cp.cuda.compiler.CompileException as exc:
        _broken = f"kernel {name} failed to compile: {str(exc).strip().splitlines()[0]}"
        warnings.warn(f"cnn_xp: {_broken}; using the portable CuPy code", RuntimeWarning,
                      stacklevel=3)
        return None


def _element_strides(array) -> list[int]:
    size = array.itemsize
    if any(s % size or s < 0 for s in array.strides):
        raise ValueError(f"unsupported strides {array.strides} for itemsize {size}")
    return [s // size for s in array.strides]


def _pairs(stride, pad):
    from .im2col import pair  # lazy: im2col imports this module
    return pair(stride), pair(pad)


def im2col(x, kh, kw, stride=1, pad=0):
    """NCHW ``x`` -> ``col`` (N*OH*OW, C*KH*KW), rows (n, oh, ow), columns (c, i, j)."""
    from .im2col import output_shape
    (sh, sw), (ph, pw) = _pairs(stride, pad)
    n, c, h, w = x.shape
    oh, ow = output_shape(x.shape, kh, kw, stride, pad)
    rows, width_col = n * oh * ow, c * kh * kw
    col = backend.cupy().empty((rows, width_col), dtype=x.dtype)
    if col.size == 0:
        return col
    per_thread = rows_per_thread(col.size)
    threads = -(-rows // per_thread) * width_col
    done = _launch("im2col", x, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, rows, per_thread,
                   *_element_strides(x), col, size=threads)
    return None if done is None else col


def rows_per_thread(size: int) -> int:
    """How many column rows one im2col thread fills: up to 8, while at least 2^18 threads
    (enough to fill an H100) remain."""
    return max(1, min(8, size >> 18))


def fold_windows(windows, x_shape, stride=1, pad=0):
    """Sum (N, C, OH, OW, KH, KW) window values (any strided view) into an (N, C, H, W) image."""
    (sh, sw), (ph, pw) = _pairs(stride, pad)
    n, c, h, w = x_shape
    _, _, oh, ow, kh, kw = windows.shape
    image = backend.cupy().empty((n, c, h, w), dtype=windows.dtype)
    if image.size == 0:
        return image
    if windows.size == 0:
        image.fill(0)
        return image
    done = _launch("fold_windows", windows, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw,
                   *_element_strides(windows), image)
    return None if done is None else image


def maxpool_forward(x, kh, kw, stride, pad):
    """Return (out (N, C, OH, OW), argmax (N, C, OH, OW) int64 offsets into the KH*KW window)."""
    from .im2col import output_shape
    (sh, sw), (ph, pw) = _pairs(stride, pad)
    n, c, h, w = x.shape
    oh, ow = output_shape(x.shape, kh, kw, (sh, sw), (ph, pw))
    cp = backend.cupy()
    out = cp.empty((n, c, oh, ow), dtype=x.dtype)
    argmax = cp.empty((n, c, oh, ow), dtype="int64")
    if out.size == 0:
        return out, argmax
    done = _launch("maxpool_forward", x, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw,
                   *_element_strides(x), float("-inf"), out, argmax)
    return None if done is None else (out, argmax)


def maxpool_backward(dout, argmax, x_shape, kh, kw, stride, pad):
    """dout (N, C, OH, OW) and the forward's argmax -> dx (N, C, H, W)."""
    (sh, sw), (ph, pw) = _pairs(stride, pad)
    cp = backend.cupy()
    n, c, h, w = x_shape
    oh, ow = dout.shape[2:]
    dx = cp.empty((n, c, h, w), dtype=dout.dtype)
    if dx.size == 0:
        return dx
    dout = cp.ascontiguousarray(dout)
    argmax = cp.ascontiguousarray(argmax)
    done = _launch("maxpool_backward", dout, argmax, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dx)
    return None if done is None else dx


# Optimizer steps: update ``param`` and its state arrays in place; return param (None: fall back).
# Hyperparameters are Python floats, cast by CuPy to the parameter's dtype (no upcast).

def _update(name, param, *args):
    return None if _launch(name, *args) is None else param


def sgd_update(param, grad, lr):
    return _update("sgd_update", param, grad, float(lr), param)


def momentum_update(param, grad, v, lr, momentum):
    return _update("momentum_update", param, grad, float(lr), float(momentum), param, v)


def nesterov_update(param, grad, v, lr, momentum):
    return _update("nesterov_update", param, grad, float(lr), float(momentum), param, v)


def adagrad_update(param, grad, h, lr, eps):
    return _update("adagrad_update", param, grad, float(lr), float(eps), param, h)


def rmsprop_update(param, grad, h, lr, decay, eps):
    return _update("rmsprop_update", param, grad, float(lr), float(decay), 1.0 - float(decay),
                   float(eps), param, h)


def adam_update(param, grad, m, v, beta1, beta2, step, v_scale, eps):
    """Adam with the bias corrections folded into ``step`` = lr / (1 - b1^t) and
    ``v_scale`` = 1 / sqrt(1 - b2^t), as the portable Adam computes them."""
    return _update("adam_update", param, grad, 1.0 - float(beta1), 1.0 - float(beta2),
                   float(step), float(v_scale), float(eps), param, m, v)


def column_sums(matrix):
    """Sum over the rows of a tall (M, K) CuPy matrix, as one GEMV with a ones vector.

    CuPy's ``sum(axis=0)`` gives each of the K outputs one thread block, which crawls when M
    is large (conv bias gradients: M = N*OH*OW): measured on an H100, the first conv of
    simple_convnet spent 7 ms of its 7.1 ms backward there at batch 1000."""
    ones = backend.cupy().ones(matrix.shape[0], dtype=matrix.dtype)
    return ones @ matrix


def softmax_cross_entropy(scores, labels):
    """(mean loss (0-d), probs (N, K)) for scores (N, K) and integer labels (N,) in two
    launches (the row kernel and the mean) instead of about a dozen."""
    cp = backend.cupy()
    n, classes = scores.shape
    scores = cp.ascontiguousarray(scores)
    probs = cp.empty_like(scores)
    row_loss = cp.empty(n, dtype=scores.dtype)
    if n == 0:
        return row_loss.sum(), probs
    done = _launch("softmax_xent_rows", scores, cp.ascontiguousarray(labels), classes, probs, row_loss)
    return None if done is None else (row_loss.sum() / n, probs)


def softmax_cross_entropy_grad(probs, labels, scale):
    """Turn ``probs`` (N, K), C-contiguous, into (probs - one_hot(labels)) * scale in place."""
    if probs.size == 0:
        return probs
    cp = backend.cupy()
    done = _launch("softmax_xent_grad", cp.ascontiguousarray(labels), probs.shape[1], float(scale), probs)
    return None if done is None else probs


def relu_backward(dout, out):
    """dout * (out > 0) in one launch."""
    dx = backend.cupy().empty_like(dout)
    return None if _launch("relu_backward", dout, out, dx) is None else dx


def dropout_forward(x, u, p, scale):
    """(y, mask) of inverted dropout from uniform draws ``u`` (same shape and dtype as x)."""
    cp = backend.cupy()
    y, mask = cp.empty_like(x), cp.empty_like(x)
    return None if _launch("dropout_forward", x, u, float(p), float(scale), y, mask) is None else (y, mask)
