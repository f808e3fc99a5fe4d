"""The CUDA kernels' source: one ``cupy.ElementwiseKernel`` per entry of ``KERNEL_SPECS``.

Each entry is ``name -> (in_params, out_params, body)`` in CuPy's ElementwiseKernel syntax:
``T`` is the float type (float32 or float64), ``I`` an integer type (argmax offsets, class
labels); ``raw`` arrays are indexed by the body itself, the others element ``i`` of the
launch. No cupy here: the test suite compiles these bodies with nvcc and, as host C++, runs
them against the reference ops on the CPU.

Index arithmetic is 32-bit (``int``): a GPU divides 64-bit integers in a much longer
software routine, and most of these kernels' work is index division. The callers launch
only when every array has fewer than 2^31 elements (``launch.INDEX_LIMIT``). Pointer
offsets (an index times an int64 element stride) are computed in 64 bits.

Shared window geometry: channels, image (height, width), output (out_h, out_w), kernel
(k_h, k_w), stride (s_h, s_w), padding (p_h, p_w). Every output
element is written by one thread, so results are deterministic. The one atomic, the loss
kernel's ticket, only picks which thread sums the rows, in a fixed order.
"""

GEOMETRY = ("int32 channels, int32 height, int32 width, int32 out_h, int32 out_w, "
            "int32 k_h, int32 k_w, int32 s_h, int32 s_w, int32 p_h, int32 p_w")

# Decode the flat index i of an (N, C, H, W) image into nc = n*C + c, y, x.
_DECODE_PIXEL = """
    const int pixel = (int)i;
    const int x = pixel % width;
    const int y = (pixel / width) % height;
    const int nc = pixel / (width * height);
"""

# Decode the flat index i of an (N, C, OH, OW) output into nc = n*C + c, oh, ow.
_DECODE_OUTPUT = """
    const int pixel = (int)i;
    const int ow = pixel % out_w;
    const int oh = (pixel / out_w) % out_h;
    const int nc = pixel / (out_w * out_h);
    const int c = nc % channels, n = nc / channels;
"""

# Loop over the windows that cover padded pixel (yq, xq): kernel rows ki = yq mod s_h, +s_h...
# with output row oh = (yq - ki) / s_h in [0, out_h); likewise for columns. Row-major order
# (ki, then kj), the order in which the reference adds its kernel-offset slabs.
_FOR_COVERING_WINDOWS = """
    const int yq = y + p_h, xq = x + p_w;
    for (int ki = yq % s_h; ki < k_h && ki <= yq; ki += s_h) {
        const int oh = (yq - ki) / s_h;
        if (oh >= out_h) continue;
        for (int kj = xq % s_w; kj < k_w && kj <= xq; kj += s_w) {
            const int ow = (xq - kj) / s_w;
            if (ow >= out_w) continue;
"""

# A class label taken modulo the class count (as CuPy's integer indexing wraps), so that no
# label, however wrong, reads or writes outside a row.
# A row's class label, checked: ``valid`` is false for a label outside 0..classes-1 (an
# unsigned label too large for long long wraps negative: invalid too). The Python side refuses
# such labels before any launch (ops.softmax.check_targets); should one reach a kernel all
# the same, the kernel reads nothing through it and flags its row with NaN (loss and
# gradient) instead of a plausible number.
_LABEL = """
    const long long label = (long long)labels[row];
    const bool valid = label >= 0 && label < (long long)classes;
"""

_STRIDES_X = "int64 xs0, int64 xs1, int64 xs2, int64 xs3"
_STRIDES_W = "int64 ws0, int64 ws1, int64 ws2, int64 ws3, int64 ws4, int64 ws5"

KERNEL_SPECS = {
    # x: any strided (N, C, H, W) view, xs0..xs3 its element strides. Output col
    # (N*OH*OW, ld), C-contiguous: rows (n, oh, ow), columns (c, i, j), zero padding; ld =
    # C*KH*KW + 1, the last column all ones, so that col @ w_aug^T adds the bias and
    # dout^T @ col gives dW and db in one product. One thread per column entry q of
    # rows_per_thread consecutive rows (output pixels): its integer divisions happen once
    # per thread, and neighbouring threads still write neighbouring entries of each row.
    # The threads from col_threads on pack the weights: w_aug (OC, ld) = [W (OC, C*KH*KW) |
    # b (OC,)], both C-contiguous.
    "im2col": (
        "raw T x, " + GEOMETRY + ", int32 rows, int32 rows_per_thread, int32 ld, " + _STRIDES_X
        + ", raw T W, raw T b, int32 col_threads",
        "raw T col, raw T w_aug",
        """
    const int width_col = channels * k_h * k_w;
    if ((int)i >= col_threads) {
        const int k = (int)i - col_threads, o = k / ld, j = k % ld;
        w_aug[k] = j < width_col ? W[(ptrdiff_t)o * width_col + j] : b[o];
    } else {
        const int q = (int)i % ld, first = (int)i / ld * rows_per_thread;
        const int last = first + rows_per_thread < rows ? first + rows_per_thread : rows;
        T* out = &col[(ptrdiff_t)0] + q;
        if (q == width_col) {
            for (int row = first; row < last; ++row) out[(ptrdiff_t)row * ld] = (T)1;
        } else {
            const int kj = q % k_w, ki = (q / k_w) % k_h, c = q / (k_w * k_h);
            int ow = first % out_w, oh = (first / out_w) % out_h, n = first / (out_w * out_h);
            const T* xc = &x[(ptrdiff_t)0] + c * xs1;
            for (int row = first; row < last; ++row) {
                const int y = oh * s_h - p_h + ki, xx = ow * s_w - p_w + kj;
                out[(ptrdiff_t)row * ld] = (y >= 0 && y < height && xx >= 0 && xx < width)
                                           ? xc[n * xs0 + y * xs2 + xx * xs3] : (T)0;
                if (++ow == out_w) { ow = 0; if (++oh == out_h) { oh = 0; ++n; } }
            }
        }
    }
""",
    ),
    # The affine layer's operands in one launch, so that one GEMM gives x2d @ W + b and one
    # gives [dW; db]: x_aug (N, D + 1) = [x2d | 1], x2d the C-order flattening of src (any
    # strided (N, C, H, W) view, D = C*H*W; a 2-D x is (N, D, 1, 1)), by the first
    # x_threads threads; w_aug (D + 1, K) = [W; b] (W (D, K), b (K,) C-contiguous) by the
    # rest. Both outputs C-contiguous.
    "affine_pack": (
        "raw T src, int32 channels, int32 height, int32 width, " + _STRIDES_X
        + ", raw T W, raw T b, int32 classes, int32 x_threads",
        "raw T x_aug, raw T w_aug",
        """
    const int features = channels * height * width, ld = features + 1;
    if ((int)i < x_threads) {
        const int n = (int)i / ld, k = (int)i % ld;
        if (k == features) {
            x_aug[i] = (T)1;
        } else {
            const int c = k / (height * width), y = (k / width) % height, xx = k % width;
            x_aug[i] = (&src[(ptrdiff_t)0])[n * xs0 + c * xs1 + y * xs2 + xx * xs3];
        }
    } else {
        const int k = (int)i - x_threads, row = k / classes, j = k % classes;
        w_aug[k] = row < features ? W[(ptrdiff_t)row * classes + j] : b[j];
    }
""",
    ),
    # The adjoint of the windows of an image, as a GATHER: each pixel of the (N, C, H, W)
    # output sums the window entries that touch it, kernel offsets in row-major order.
    # windows: any strided (N, C, OH, OW, KH, KW) view, ws0..ws5 its element strides (zero
    # strides too: a broadcast share, as average pooling's backward hands over).
    "fold_windows": (
        "raw T windows, " + GEOMETRY + ", " + _STRIDES_W,
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
    # x: any strided (N, C, H, W) view. Outputs (N, C, OH, OW): the window maximum (padding
    # is -inf) and its row-major offset in the window; the first maximum wins, a NaN counts
    # as the maximum (the first NaN).
    "maxpool_forward": (
        "raw T x, " + GEOMETRY + ", " + _STRIDES_X + ", T neg_inf",
        "T out, I argmax",
        _DECODE_OUTPUT + """
    const T* base = &x[(ptrdiff_t)0] + n * xs0 + c * xs1;
    T best = neg_inf;
    int best_k = 0;
    for (int ki = 0; ki < k_h; ++ki) {
        const int y = oh * s_h - p_h + ki;
        for (int kj = 0; kj < k_w; ++kj) {
            const int xx = ow * s_w - p_w + kj;
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
    # dout, argmax: C-contiguous (N, C, OH, OW). Each pixel of dx (N, C, H, W) gathers the
    # upstream gradients of the windows whose argmax points at it.
    "maxpool_backward": (
        "raw T dout, raw I argmax, " + GEOMETRY,
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
    # x: any strided (N, C, H, W) view. Output (N, C, OH, OW): the window mean, zero padding
    # counted (the sum over the window divided by KH*KW).
    "avgpool_forward": (
        "raw T x, " + GEOMETRY + ", " + _STRIDES_X,
        "T out",
        _DECODE_OUTPUT + """
    const T* base = &x[(ptrdiff_t)0] + n * xs0 + c * xs1;
    T acc = 0;
    for (int ki = 0; ki < k_h; ++ki) {
        const int y = oh * s_h - p_h + ki;
        if (y < 0 || y >= height) continue;
        for (int kj = 0; kj < k_w; ++kj) {
            const int xx = ow * s_w - p_w + kj;
            if (xx >= 0 && xx < width) acc += base[y * xs2 + xx * xs3];
        }
    }
    out = acc / (T)(k_h * k_w);
""",
    ),
    # The whole loss of a training step in one launch, one thread per row of C-contiguous
    # scores (N, K), label I, rows = N:
    # - probs (N, K): the row's softmax, shifted by its maximum; grad (N, K) = (probs -
    #   one_hot(label)) * scale (scale = 1 / N: the gradient of the mean loss);
    #   labels_copy (N,): the label (the cache's own copy); row_loss (N,) = log(sum) + max -
    #   s[label]; row_hit (N,) = 1 where the row's first maximum (a NaN counts as the
    #   maximum, as argmax) is at the label. A label outside 0..K-1 gives its row NaN loss
    #   and gradient, no hit, and reads nothing through it.
    # - The last row to finish (an atomic ticket, reset to 0 for the next launch; rows made
    #   visible by __threadfence first) sums row_loss and row_hit in row order -- the same
    #   order at every launch, so the result is deterministic -- into loss[0] = sum / N and,
    #   when add_totals, adds (sum, hits) to the float64 totals (2,).
    "softmax_xent_step": (
        "raw T scores, raw I labels, int32 classes, int32 rows, T scale, int32 add_totals",
        "raw T probs, raw T grad, raw I labels_copy, raw T row_loss, raw int32 row_hit, raw T loss, "
        "raw float64 totals, raw int32 ticket",
        """
    const int row = (int)i;""" + _LABEL + """
    const T* s = &scores[(ptrdiff_t)row * classes];
    T* p = &probs[(ptrdiff_t)row * classes];
    T* g = &grad[(ptrdiff_t)row * classes];
    T top = s[0];
    int best = 0;
    for (int j = 1; j < classes; ++j) {
        if (s[j] > top || (s[j] != s[j] && top == top)) { top = s[j]; best = j; }
    }
    T total = 0;
    for (int j = 0; j < classes; ++j) { p[j] = exp(s[j] - top); total += p[j]; }
    for (int j = 0; j < classes; ++j) p[j] /= total;
    T zero = 0;  // NaN flags a bad label (a variable: no constant 0/0)
    for (int j = 0; j < classes; ++j) {
        g[j] = valid ? (p[j] - (label == j ? (T)1 : (T)0)) * scale : zero / zero;
    }
    labels_copy[row] = labels[row];
    row_loss[row] = valid ? log(total) + top - s[label] : zero / zero;
    row_hit[row] = (valid && best == label) ? 1 : 0;
    __threadfence();
    if (atomicAdd(&ticket[(ptrdiff_t)0], 1) == rows - 1) {
        __threadfence();  // acquire: the other rows' writes, made visible before their tickets
        const volatile T* losses = &row_loss[(ptrdiff_t)0];
        const volatile int* hits = &row_hit[(ptrdiff_t)0];
        T sum = 0;
        int hit_count = 0;
        for (int r = 0; r < rows; ++r) { sum += losses[r]; hit_count += hits[r]; }
        loss[(ptrdiff_t)0] = sum / (T)rows;
        if (add_totals) {
            totals[(ptrdiff_t)0] += (double)sum;
            totals[(ptrdiff_t)1] += (double)hit_count;
        }
        ticket[(ptrdiff_t)0] = 0;
    }
""",
    ),
    # Data augmentation (cnn_xp.ops.resample), one thread per pixel of the (N, C, H, W)
    # output, src any strided (N, C, H, W) view. affine_resample: inv (N, 2, 3) C-contiguous
    # maps the output pixel's centred coordinates (u, v) = (col - half_w, row - half_h) to
    # the point read in the input padded with one zero pixel on every side (padded
    # coordinates: + off_w / off_h), clipped to the padding, bilinear -- the reference's
    # arithmetic in its order.
    "affine_resample": (
        "raw T src, raw T inv, int32 channels, int32 height, int32 width, T half_w, T half_h, T off_w, T off_h, "
        + _STRIDES_X,
        "T out",
        _DECODE_PIXEL + """
    const int c = nc % channels, n = nc / channels;
    const T* a = &inv[(ptrdiff_t)0] + n * 6;
    const T* base = &src[(ptrdiff_t)0] + n * xs0 + c * xs1;
    const T u = (T)x - half_w, v = (T)y - half_h;
    T sx = a[0] * u + a[1] * v + a[2] + off_w;
    T sy = a[3] * u + a[4] * v + a[5] + off_h;
    sx = sx < (T)0 ? (T)0 : (sx > (T)(width + 1) ? (T)(width + 1) : sx);
    sy = sy < (T)0 ? (T)0 : (sy > (T)(height + 1) ? (T)(height + 1) : sy);
    const int x0 = (int)(floor(sx) < (T)width ? floor(sx) : (T)width);
    const int y0 = (int)(floor(sy) < (T)height ? floor(sy) : (T)height);
    const T wx = sx - (T)x0, wy = sy - (T)y0;
    T near[4];  // padded pixels (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)
    for (int k = 0; k < 4; ++k) {
        const int yy = y0 + k / 2 - 1, xx = x0 + k % 2 - 1;  // in the unpadded image
        near[k] = (yy >= 0 && yy < height && xx >= 0 && xx < width) ? base[yy * xs2 + xx * xs3] : (T)0;
    }
    const T upper = ((T)1 - wx) * near[0] + wx * near[1];
    const T lower = ((T)1 - wx) * near[2] + wx * near[3];
    out = ((T)1 - wy) * upper + wy * lower;
""",
    ),
    # crop_flip: draws (N, 3) int32 C-contiguous: row offset, column offset (in the image
    # padded with pad zeros) and flip (1: mirrored left-right) of each image; a copy.
    "crop_flip": (
        "raw T src, raw int32 draws, int32 channels, int32 height, int32 width, int32 pad, " + _STRIDES_X,
        "T out",
        _DECODE_PIXEL + """
    const int c = nc % channels, n = nc / channels;
    const int* d = &draws[(ptrdiff_t)0] + n * 3;
    const T* base = &src[(ptrdiff_t)0] + n * xs0 + c * xs1;
    const int py = d[0] + y - pad, px = d[1] + (d[2] ? width - 1 - x : x) - pad;
    out = (py >= 0 && py < height && px >= 0 && px < width) ? base[py * xs2 + px * xs3] : (T)0;
""",
    ),
    # ReLU backward in one pass: dout * (out > 0), the reference's formula (NaN included).
    "relu_backward": ("T dout, T out", "T dx", "dx = dout * (T)(out > (T)0);"),
    # Inverted dropout from uniform draws u in [0, 1): mask = scale (= 1 / (1 - p)) where
    # u >= p, else 0; y = x * mask.
    "dropout_forward": ("T x, T u, T p, T scale", "T y, T mask",
                        "mask = u >= p ? scale : (T)0; y = x * mask;"),
    # The same with the draws made in the kernel: Philox4x32-10 (cnn_xp.ops.random) with key
    # (key0, key1) at counter block block0 + i / 4, word i % 4, as a float exactly as the
    # reference makes it -- the same mask bit for bit, without a draws array.
    "dropout_philox": (
        "T x, uint32 key0, uint32 key1, int64 block0, T p, T scale", "T y, T mask",
        """
    const unsigned long long block = (unsigned long long)block0 + (unsigned long long)(i / 4);
    unsigned int c0 = (unsigned int)block, c1 = (unsigned int)(block >> 32), c2 = 0, c3 = 0;
    unsigned int k0 = key0, k1 = key1;
    for (int r = 0; r < 10; ++r) {
        if (r) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        const unsigned long long m0 = 0xD2511F53ull * c0, m1 = 0xCD9E8D57ull * c2;
        const unsigned int next0 = (unsigned int)(m1 >> 32) ^ c1 ^ k0, next2 = (unsigned int)(m0 >> 32) ^ c3 ^ k1;
        c1 = (unsigned int)m1;
        c3 = (unsigned int)m0;
        c0 = next0;
        c2 = next2;
    }
    const int w = (int)(i % 4);
    const unsigned int word = w == 0 ? c0 : (w == 1 ? c1 : (w == 2 ? c2 : c3));
    const T u = sizeof(T) == 4 ? (T)(word >> 8) * (T)5.9604644775390625e-08 : (T)word * (T)2.3283064365386963e-10;
    mask = u >= p ? scale : (T)0;
    y = x * mask;
""",
    ),
    # Optimizer updates, in place on one parameter p and its state (see cnn_xp.ops.updates).
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
    # Adam with the bias corrections folded in: lr_t = lr / (1 - beta1^t), v_scale =
    # 1 / sqrt(1 - beta2^t).
    "adam_update": (
        "T g, T one_minus_beta1, T one_minus_beta2, T lr_t, T v_scale, T eps", "T p, T m, T v",
        "m += one_minus_beta1 * (g - m); v += one_minus_beta2 * (g * g - v);"
        " p -= lr_t * m / (sqrt(v) * v_scale + eps);"),
}

# -- every parameter's update in one launch -------------------------------------------------
# ``<rule>_update_all`` updates up to UPDATE_SLOTS parameters of one dtype in one launch, one
# thread per element of all of them (the launch's size is their total): slot k's tensors are
# passed by address (int64 p<k>, g<k>, and the rule's state arrays a<k>, b<k>), all
# C-contiguous but the gradient, whose element j is at (j / gcols) * gld + j % gcols (rows
# of gcols contiguous elements gld apart: a view of a wider matrix, as the conv's dW and db
# of its one product; gcols = gld: contiguous); its elements are the launch indices
# end<k-1> <= i < end<k>, and lr<k>, shrink<k>
# are its learning rate and decoupled-decay factor (1 for none). Unused slots have end<k> =
# the total. The rule is that of ``cnn_xp.ops.updates`` after ``p *= shrink`` and, when
# weight_decay != 0, ``g + weight_decay * p``; the parameter and its state are read once
# and written once.
UPDATE_SLOTS = 32

# rule -> (state arrays, hyperparameters after lr, the update of pj from gj)
_UPDATE_RULES = {
    "sgd": ((), "", "pj -= lr * gj;"),
    "momentum": (("a",), "T momentum",
                 "T v = a[j]; v = momentum * v - lr * gj; a[j] = v; pj += v;"),
    "nesterov": (("a",), "T momentum",
                 "T v = a[j]; v = momentum * v - lr * gj; a[j] = v; pj += momentum * v - lr * gj;"),
    "adagrad": (("a",), "T eps",
                "T h = a[j]; h += gj * gj; a[j] = h; pj -= lr * gj / (sqrt(h) + eps);"),
    "rmsprop": (("a",), "T decay, T one_minus_decay, T eps",
                "T h = a[j]; h = decay * h + one_minus_decay * gj * gj; a[j] = h;"
                " pj -= lr * gj / (sqrt(h) + eps);"),
    "adam": (("a", "b"), "T one_minus_beta1, T one_minus_beta2, T v_scale, T eps",
             "T m = a[j], v = b[j]; m += one_minus_beta1 * (gj - m); v += one_minus_beta2 * (gj * gj - v);"
             " a[j] = m; b[j] = v; pj -= lr * m / (sqrt(v) * v_scale + eps);"),
}


def _update_all_spec(states: tuple, hyper: str, rule: str) -> tuple[str, str, str]:
    arrays = ("p", "g", *states)
    slots = ", ".join(", ".join(f"int64 {a}{k}" for a in arrays)
                      + f", int32 end{k}, int32 gcols{k}, int32 gld{k}, T lr{k}, T shrink{k}"
                      for k in range(UPDATE_SLOTS))
    in_params = slots + ", T weight_decay" + (", " + hyper if hyper else "")
    declare = "".join(f" long long {a.upper()};" for a in arrays) + " int gcols, gld;"
    select = []
    for k in range(UPDATE_SLOTS):
        test = "" if k == UPDATE_SLOTS - 1 else f"if (e < end{k}) "
        start = "0" if k == 0 else f"end{k - 1}"
        assign = " ".join(f"{a.upper()} = {a}{k};" for a in arrays)
        select.append(f"    {'else ' if k else ''}{test}{{ {assign} gcols = gcols{k}; gld = gld{k}; lr = lr{k};"
                      f" shrink = shrink{k}; start = {start}; }}")
    pointers = " ".join(f"T* {a} = (T*){a.upper()};" for a in ("p", *states)) + " const T* g = (const T*)G;"
    body = ("\n    const int e = (int)i;\n   " + declare + " T lr, shrink; int start;\n" + "\n".join(select)
            + f"\n    {pointers}\n    const int j = e - start;\n"
            "    const T gv = g[gcols == gld ? j : j / gcols * gld + j % gcols];\n"
            "    T pj = p[j] * shrink;\n"
            "    const T gj = weight_decay != (T)0 ? gv + weight_decay * pj : gv;\n"
            f"    {rule}\n    p[j] = pj;\n")
    return in_params, "raw T unused", body


KERNEL_SPECS.update({f"{name}_update_all": _update_all_spec(*spec) for name, spec in _UPDATE_RULES.items()})
