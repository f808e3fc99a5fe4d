/* cnn_xp.kernels.cpu._native: the compiled CPU kernels (kernels_body.h) as a CPython
 * extension module, built by setup.py when cnn_xp is installed, never at run time.
 *
 * Why a plain CPython extension that takes arrays through the buffer protocol: NumPy arrays
 * export their memory, item format, size and contiguity through it, which is all these
 * kernels need, so the build needs only Python.h and a C compiler (no NumPy headers, no build
 * dependency on a NumPy version, nothing to generate), and setuptools builds it from a few C
 * files with `Extension(..., optional=True)`: without a compiler the package still installs
 * and the reference runs.
 *
 * Portability: the kernels are compiled three times per dtype, for baseline x86-64 (SSE2),
 * AVX2 + FMA and AVX-512 (F, DQ, BW, VL), by target attributes, not by -march flags; the
 * module asks the CPU (__builtin_cpu_supports, which also checks that the OS saves the wider
 * registers) which variants it can run. Every kernel takes the variant's name as its first
 * argument; asking for one the CPU lacks raises ValueError (it would die of SIGILL).
 *
 * The typed boundary: every function checks that each array is a C-contiguous buffer of the
 * right item type (float32/float64 values; int32/int64 argmax as wide as the values), that
 * output arrays are writable, and that each holds exactly the values the geometry it is given
 * implies (at least, for outputs the kernels write whole vectors past: their slack), and
 * that the geometry itself is consistent (windows inside the image, sizes without
 * overflow). A mismatch raises TypeError (not an array, wrong item type) or ValueError
 * (non-contiguous, read-only, wrong size, bad geometry); no kernel runs on unchecked
 * arguments. The GIL is released while a kernel runs, so batch slices on threads run side
 * by side.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#if !defined(__x86_64__)
#error "cnn_xp.kernels.cpu._native is built for x86-64 only (setup.py skips it elsewhere)"
#endif
#include <xmmintrin.h> /* _mm_getcsr / _mm_setcsr: SSE, part of baseline x86-64 */

#include "kernels.h"

enum { ISAS = 3 };
static const char *const ISA_NAMES[ISAS] = {"baseline", "avx2", "avx512"};
static const cnn_xp_kernels *const TABLES[ISAS][2] = {  /* [isa][float, double] */
    {&cnn_xp_kernels_float_baseline, &cnn_xp_kernels_double_baseline},
    {&cnn_xp_kernels_float_avx2, &cnn_xp_kernels_double_avx2},
    {&cnn_xp_kernels_float_avx512, &cnn_xp_kernels_double_avx512},
};
static int isa_supported[ISAS];

#define MXCSR_FTZ_DAZ 0x8040u /* flush-to-zero (bit 15) and denormals-are-zero (bit 6) */

static void detect_isas(void)
{
    __builtin_cpu_init();
    isa_supported[0] = 1;
    isa_supported[1] = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    isa_supported[2] = isa_supported[1] && __builtin_cpu_supports("avx512f")
                       && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw")
                       && __builtin_cpu_supports("avx512vl");
}

/* ---- argument checking ------------------------------------------------------------------ */

enum kind { REALS, INDICES };

/* The buffers of one call (released together) and the kernel table its values select. */
typedef struct {
    int isa;
    const cnn_xp_kernels *k;
    Py_buffer views[4];
    int count;
} Call;

static void release(Call *call)
{
    for (int i = 0; i < call->count; i++) PyBuffer_Release(&call->views[i]);
    call->count = 0;
}

static int find_isa(Call *call, const char *name)
{
    for (int i = 0; i < ISAS; i++)
        if (strcmp(name, ISA_NAMES[i]) == 0) {
            if (!isa_supported[i]) {
                PyErr_Format(PyExc_ValueError, "this CPU cannot run the %s kernels", name);
                return -1;
            }
            call->isa = i;
            return 0;
        }
    PyErr_Format(PyExc_ValueError, "unknown kernel variant '%.40s'; choose baseline, avx2 or avx512", name);
    return -1;
}

/* The struct-module type code of a buffer's items, 0 for a compound or foreign-endian format. */
static char type_code(const Py_buffer *view)
{
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=' || *f == '<') f++; /* native order is little-endian on x86-64 */
    return f[0] != '\0' && f[1] == '\0' ? f[0] : 0;
}

static const char *describe(char code, Py_ssize_t itemsize)
{
    switch (code) {
        case 'f': return "float32";
        case 'd': return "float64";
        case 'i': case 'l': case 'q':
            return itemsize == 4 ? "int32" : itemsize == 8 ? "int64" : "an integer type";
        default: return "another item type";
    }
}

/* Take `obj` as argument `name` of the call: a C-contiguous buffer (writable when asked) of
 * REAL values (the first one picks float or double) or of argmax indices as wide as those,
 * holding exactly `need` items, or at least `need` when `at_least`. Returns its memory and
 * stores its item count in *items; NULL with an exception set otherwise. */
static void *take(Call *call, PyObject *obj, const char *name, enum kind kind, int writable,
                  Py_ssize_t need, int at_least, Py_ssize_t *items)
{
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous %s array, got %.80s", name,
                     kind == REALS ? "float32 or float64" : "int32 or int64", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    Py_buffer *view = &call->views[call->count];
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
#if PY_VERSION_HEX >= 0x030C0000
        PyObject *error = PyErr_GetRaisedException();
        PyObject *text = error ? PyObject_Str(error) : NULL;
#else
        PyObject *type, *error, *traceback;
        PyErr_Fetch(&type, &error, &traceback);
        PyObject *text = error ? PyObject_Str(error) : NULL;
        Py_XDECREF(type);
        Py_XDECREF(traceback);
#endif
        const char *why = text ? PyUnicode_AsUTF8(text) : NULL;
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: a C-contiguous%s array is needed (%s)", name,
                     writable ? ", writable" : "", why ? why : "the buffer was refused");
        Py_XDECREF(text);
        Py_XDECREF(error);
        return NULL;
    }
    call->count++;
    const char code = type_code(view);
    const Py_ssize_t itemsize = view->itemsize;
    if (kind == REALS) {
        const int is_real = (code == 'f' && itemsize == 4) || (code == 'd' && itemsize == 8);
        if (!is_real) {
            PyErr_Format(PyExc_TypeError, "%s: expected float32 or float64 values, got %s "
                         "(format %s)", name, describe(code, itemsize), view->format ? view->format : "B");
            return NULL;
        }
        if (call->k == NULL) {
            call->k = TABLES[call->isa][itemsize == 8];
        } else if (itemsize != call->k->itemsize) {
            PyErr_Format(PyExc_TypeError, "%s: expected %s values like the first array, got %s", name,
                         call->k->itemsize == 8 ? "float64" : "float32", describe(code, itemsize));
            return NULL;
        }
    } else {
        const int is_index = code == 'i' || code == 'l' || code == 'q';
        if (!is_index || call->k == NULL || itemsize != call->k->itemsize) {
            PyErr_Format(PyExc_TypeError, "%s: expected %s indices (as wide as the values), got %s", name,
                         call->k && call->k->itemsize == 8 ? "int64" : "int32", describe(code, itemsize));
            return NULL;
        }
    }
    const Py_ssize_t count = view->len / itemsize;
    if (at_least ? count < need : count != need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd values; the geometry given needs %s%zd", name,
                     count, at_least ? "at least " : "", need);
        return NULL;
    }
    if (items) *items = count;
    return view->buf;
}

/* The product of `count` non-negative factors; -1 (and ValueError) where it overflows. */
static Py_ssize_t product(const Py_ssize_t *factors, int count)
{
    Py_ssize_t result = 1;
    for (int i = 0; i < count; i++)
        if (__builtin_mul_overflow(result, factors[i], &result) || result > PY_SSIZE_T_MAX / 8) {
            PyErr_SetString(PyExc_ValueError, "array sizes overflow");
            return -1;
        }
    return result;
}
#define PRODUCT(...) product((const Py_ssize_t[]){__VA_ARGS__}, \
                             sizeof((Py_ssize_t[]){__VA_ARGS__}) / sizeof(Py_ssize_t))

/* ValueError unless every value lies in [minimum, 2**31); names: the values' names, "a, b, c". */
static int at_least_each(Py_ssize_t minimum, const char *names, const Py_ssize_t *values, int count)
{
    for (int i = 0; i < count; i++)
        if (values[i] < minimum || values[i] > (Py_ssize_t)INT32_MAX) {
            const char *name = names;
            for (int skip = i; skip > 0 && *name; name++)
                if (*name == ',') { skip--; while (name[1] == ' ') name++; }
            char word[32];
            size_t length = strcspn(name, ",");
            if (length >= sizeof word) length = sizeof word - 1;
            memcpy(word, name, length);
            word[length] = '\0';
            PyErr_Format(PyExc_ValueError, "%s must lie in [%zd, 2**31), got %zd", word, minimum, values[i]);
            return -1;
        }
    return 0;
}
#define AT_LEAST(minimum, ...) at_least_each(minimum, #__VA_ARGS__, (const Py_ssize_t[]){__VA_ARGS__}, \
                                             sizeof((Py_ssize_t[]){__VA_ARGS__}) / sizeof(Py_ssize_t))

/* ValueError unless (out - 1) * stride + kernel <= size: every window inside the (padded) image. */
static int windows_inside(const char *axis, Py_ssize_t out, Py_ssize_t stride, Py_ssize_t kernel,
                          Py_ssize_t size)
{
    if ((out - 1) * stride + kernel > size) {
        PyErr_Format(PyExc_ValueError, "%zd outputs of stride %zd and kernel %zd do not fit %zd %s",
                     out, stride, kernel, size, axis);
        return -1;
    }
    return 0;
}

/* ValueError unless out == (size + 2*pad - kernel) / stride + 1 >= 1 (pooling's output size). */
static int pooled_size(const char *axis, Py_ssize_t out, Py_ssize_t size, Py_ssize_t kernel,
                       Py_ssize_t stride, Py_ssize_t pad)
{
    const Py_ssize_t span = size + 2 * pad - kernel;
    if (span < 0 || out != span / stride + 1) {
        PyErr_Format(PyExc_ValueError, "%zd output %s do not match %zd %s, kernel %zd, stride %zd, pad %zd",
                     out, axis, size, axis, kernel, stride, pad);
        return -1;
    }
    return 0;
}

static Py_ssize_t round_up(Py_ssize_t value, Py_ssize_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

/* ---- the kernels ---------------------------------------------------------------------- */

PyDoc_STRVAR(conv_forward_doc,
"conv_forward(isa, x, n, h, w, c, w_packed, kh, kw, oc, bias, sh, sw, out, oh, ow)\n--\n\n"
"out (N, OH, OW, OC) = conv(x, W) + bias, stride (sh, sw). x: the zero-padded NHWC input\n"
"(N, H, W, C); w_packed: (ceil(OC/L), KH, KW*C, L) with L = lanes(isa, itemsize), the last\n"
"block zero-filled; bias: ceil(OC/L)*L values.");

static PyObject *py_conv_forward(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"isa", "x", "n", "h", "w", "c", "w_packed", "kh", "kw", "oc", "bias",
                               "sh", "sw", "out", "oh", "ow", NULL};
    const char *isa;
    PyObject *x_obj, *w_obj, *b_obj, *out_obj;
    Py_ssize_t n, h, w, c, kh, kw, oc, sh, sw, oh, ow;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sOnnnnOnnnOnnOnn:conv_forward", keywords, &isa, &x_obj,
                                     &n, &h, &w, &c, &w_obj, &kh, &kw, &oc, &b_obj, &sh, &sw, &out_obj, &oh, &ow))
        return NULL;
    Call call = {0};
    if (find_isa(&call, isa) < 0 || AT_LEAST(1, n, h, w, c, kh, kw, oc, sh, sw, oh, ow) < 0
        || windows_inside("rows", oh, sh, kh, h) < 0 || windows_inside("columns", ow, sw, kw, w) < 0)
        return NULL;
    const Py_ssize_t x_size = PRODUCT(n, h, w, c);
    if (x_size < 0) return NULL;
    const void *x = take(&call, x_obj, "x", REALS, 0, x_size, 0, NULL);
    if (!x) goto fail;
    const Py_ssize_t lanes = call.k->lanes, blocks = (oc + lanes - 1) / lanes;
    const Py_ssize_t w_size = PRODUCT(blocks, kh, kw, c, lanes), out_size = PRODUCT(n, oh, ow, oc);
    if (w_size < 0 || out_size < 0) goto fail;
    const void *wp = take(&call, w_obj, "w_packed", REALS, 0, w_size, 0, NULL);
    const void *bias = wp ? take(&call, b_obj, "bias", REALS, 0, blocks * lanes, 0, NULL) : NULL;
    void *out = bias ? take(&call, out_obj, "out", REALS, 1, out_size, 0, NULL) : NULL;
    if (!out) goto fail;
    Py_BEGIN_ALLOW_THREADS
    call.k->conv_forward(x, n, h, w, c, wp, kh, kw, oc, bias, sh, sw, out, oh, ow);
    Py_END_ALLOW_THREADS
    release(&call);
    Py_RETURN_NONE;
fail:
    release(&call);
    return NULL;
}

PyDoc_STRVAR(conv_weight_grad_doc,
"conv_weight_grad(isa, x, n, h, w, c, dout, oh, ow, oc, kh, kw, sh, sw, dw)\n--\n\n"
"dw (KH, KW*C, OC), rows (i, j, c): the weight gradient of conv_forward for x, the padded\n"
"NHWC input (N, H, W, C), and dout (N, OH, OW, OC).");

static PyObject *py_conv_weight_grad(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"isa", "x", "n", "h", "w", "c", "dout", "oh", "ow", "oc", "kh", "kw",
                               "sh", "sw", "dw", NULL};
    const char *isa;
    PyObject *x_obj, *d_obj, *dw_obj;
    Py_ssize_t n, h, w, c, oh, ow, oc, kh, kw, sh, sw;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sOnnnnOnnnnnnnO:conv_weight_grad", keywords, &isa,
                                     &x_obj, &n, &h, &w, &c, &d_obj, &oh, &ow, &oc, &kh, &kw, &sh, &sw, &dw_obj))
        return NULL;
    Call call = {0};
    if (find_isa(&call, isa) < 0 || AT_LEAST(1, n, h, w, c, oh, ow, oc, kh, kw, sh, sw) < 0
        || windows_inside("rows", oh, sh, kh, h) < 0 || windows_inside("columns", ow, sw, kw, w) < 0)
        return NULL;
    const Py_ssize_t x_size = PRODUCT(n, h, w, c), d_size = PRODUCT(n, oh, ow, oc);
    const Py_ssize_t dw_size = PRODUCT(kh, kw, c, oc);
    if (x_size < 0 || d_size < 0 || dw_size < 0) return NULL;
    const void *x = take(&call, x_obj, "x", REALS, 0, x_size, 0, NULL);
    const void *d = x ? take(&call, d_obj, "dout", REALS, 0, d_size, 0, NULL) : NULL;
    void *dw = d ? take(&call, dw_obj, "dw", REALS, 1, dw_size, 0, NULL) : NULL;
    if (!dw) goto fail;
    Py_BEGIN_ALLOW_THREADS
    call.k->conv_weight_grad(x, n, h, w, c, d, oh, ow, oc, kh, kw, sh, sw, dw);
    Py_END_ALLOW_THREADS
    release(&call);
    Py_RETURN_NONE;
fail:
    release(&call);
    return NULL;
}

PyDoc_STRVAR(conv_input_grad_doc,
"conv_input_grad(isa, dout, n, oh, ow, oc, wt, kh, kw, c, sh, sw, dx, h, w)\n--\n\n"
"dx (N, H, W, C) in padded coordinates, of conv_forward for dout (N, OH, OW, OC), by\n"
"scattering each output pixel into its window: for window rows of NV = ceil(KW*C/L) <=\n"
"MAX_RUN_VECTORS vectors. wt: (OC, KH, NV*L), zero past KW*C in each row. dx is a flat\n"
"buffer of at least N*H*W*C + NV*L - KW*C values (the slack the last window's vectors\n"
"reach); all of it is cleared first.");

static PyObject *py_conv_input_grad(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"isa", "dout", "n", "oh", "ow", "oc", "wt", "kh", "kw", "c", "sh", "sw",
                               "dx", "h", "w", NULL};
    const char *isa;
    PyObject *d_obj, *wt_obj, *dx_obj;
    Py_ssize_t n, oh, ow, oc, kh, kw, c, sh, sw, h, w, total;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sOnnnnOnnnnnOnn:conv_input_grad", keywords, &isa, &d_obj,
                                     &n, &oh, &ow, &oc, &wt_obj, &kh, &kw, &c, &sh, &sw, &dx_obj, &h, &w))
        return NULL;
    Call call = {0};
    if (find_isa(&call, isa) < 0 || AT_LEAST(1, n, oh, ow, oc, kh, kw, c, sh, sw, h, w) < 0
        || windows_inside("rows", oh, sh, kh, h) < 0 || windows_inside("columns", ow, sw, kw, w) < 0)
        return NULL;
    const Py_ssize_t d_size = PRODUCT(n, oh, ow, oc), run = PRODUCT(kw, c), dx_size = PRODUCT(n, h, w, c);
    if (d_size < 0 || run < 0 || dx_size < 0) return NULL;
    const void *d = take(&call, d_obj, "dout", REALS, 0, d_size, 0, NULL);
    if (!d) goto fail;
    const Py_ssize_t lanes = call.k->lanes, nv = (run + lanes - 1) / lanes;
    if (nv > call.k->max_run_vectors) {
        PyErr_Format(PyExc_ValueError, "conv_input_grad serves window rows of at most %d vectors "
                     "(KW*C <= %zd); got KW*C = %zd", call.k->max_run_vectors,
                     (Py_ssize_t)call.k->max_run_vectors * lanes, run);
        goto fail;
    }
    const Py_ssize_t wt_size = PRODUCT(oc, kh, nv, lanes);
    if (wt_size < 0) goto fail;
    const void *wt = take(&call, wt_obj, "wt", REALS, 0, wt_size, 0, NULL);
    void *dx = wt ? take(&call, dx_obj, "dx", REALS, 1, dx_size + nv * lanes - run, 1, &total) : NULL;
    if (!dx) goto fail;
    Py_BEGIN_ALLOW_THREADS
    call.k->conv_input_grad(d, n, oh, ow, oc, wt, kh, kw, c, sh, sw, dx, h, w, total);
    Py_END_ALLOW_THREADS
    release(&call);
    Py_RETURN_NONE;
fail:
    release(&call);
    return NULL;
}

PyDoc_STRVAR(channel_sums_doc,
"channel_sums(isa, d, pixels, c, sums)\n--\n\n"
"sums (C,) = the sum over the rows of d (pixels, C): a conv's bias gradient, summed in\n"
"blocks so that float32 rounding errors stay near those of a pairwise sum.");

static PyObject *py_channel_sums(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"isa", "d", "pixels", "c", "sums", NULL};
    const char *isa;
    PyObject *d_obj, *sums_obj;
    Py_ssize_t pixels, c;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sOnnO:channel_sums", keywords, &isa, &d_obj, &pixels, &c,
                                     &sums_obj))
        return NULL;
    Call call = {0};
    if (find_isa(&call, isa) < 0 || AT_LEAST(1, pixels, c) < 0) return NULL;
    const Py_ssize_t d_size = PRODUCT(pixels, c);
    if (d_size < 0) return NULL;
    const void *d = take(&call, d_obj, "d", REALS, 0, d_size, 0, NULL);
    void *sums = d ? take(&call, sums_obj, "sums", REALS, 1, c, 0, NULL) : NULL;
    if (!sums) goto fail;
    /* blocks of lcm(C, L) values: whole vectors and whole pixels */
    const Py_ssize_t lanes = call.k->lanes;
    Py_ssize_t a = c, b = lanes;
    while (b) { const Py_ssize_t t = a % b; a = b; b = t; }
    const Py_ssize_t block = c / a * lanes;
    void *scratch = PyMem_RawMalloc((size_t)(2 * block * call.k->itemsize));
    if (!scratch) {
        PyErr_NoMemory();
        goto fail;
    }
    Py_BEGIN_ALLOW_THREADS
    call.k->channel_sums(d, pixels, c, block, sums, scratch);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(scratch);
    release(&call);
    Py_RETURN_NONE;
fail:
    release(&call);
    return NULL;
}

PyDoc_STRVAR(maxpool_forward_doc,
"maxpool_forward(isa, x, n, h, w, c, kh, kw, sh, sw, ph, pw, out, argmax, oh, ow)\n--\n\n"
"Max pooling of NHWC x (N, H, W, C), unpadded in memory (padding (ph, pw) counts as -inf):\n"
"out (N, OH, OW, C) gets each window's maximum, argmax (N, OH, OW, C) the row-major offset\n"
"i*KW + j of its first maximum (a NaN counts as the maximum; the first NaN wins). argmax is\n"
"int32 for float32 values, int64 for float64. out and argmax are flat buffers of at least\n"
"N*OH*OW*C + (ceil(C/L)*L - C) values: whole vectors are stored past the last pixel.");

static PyObject *py_maxpool_forward(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"isa", "x", "n", "h", "w", "c", "kh", "kw", "sh", "sw", "ph", "pw", "out",
                               "argmax", "oh", "ow", NULL};
    const char *isa;
    PyObject *x_obj, *out_obj, *at_obj;
    Py_ssize_t n, h, w, c, kh, kw, sh, sw, ph, pw, oh, ow;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sOnnnnnnnnnnOOnn:maxpool_forward", keywords, &isa, &x_obj,
                                     &n, &h, &w, &c, &kh, &kw, &sh, &sw, &ph, &pw, &out_obj, &at_obj, &oh, &ow))
        return NULL;
    Call call = {0};
    if (find_isa(&call, isa) < 0 || AT_LEAST(1, n, h, w, c, kh, kw, sh, sw, oh, ow) < 0
        || AT_LEAST(0, ph, pw) < 0 || pooled_size("rows", oh, h, kh, sh, ph) < 0
        || pooled_size("columns", ow, w, kw, sw, pw) < 0 || PRODUCT(kh, kw) < 0)
        return NULL;
    if (kh * kw > (Py_ssize_t)INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "pooling windows of 2**31 values or more");
        return NULL;
    }
    const Py_ssize_t x_size = PRODUCT(n, h, w, c), out_size = PRODUCT(n, oh, ow, c);
    if (x_size < 0 || out_size < 0) return NULL;
    const void *x = take(&call, x_obj, "x", REALS, 0, x_size, 0, NULL);
    if (!x) goto fail;
    const Py_ssize_t slack = round_up(c, call.k->lanes) - c;
    void *out = take(&call, out_obj, "out", REALS, 1, out_size + slack, 1, NULL);
    void *argmax = out ? take(&call, at_obj, "argmax", INDICES, 1, out_size + slack, 1, NULL) : NULL;
    if (!argmax) goto fail;
    Py_BEGIN_ALLOW_THREADS
    call.k->maxpool_forward(x, n, h, w, c, kh, kw, sh, sw, ph, pw, out, argmax, oh, ow);
    Py_END_ALLOW_THREADS
    release(&call);
    Py_RETURN_NONE;
fail:
    release(&call);
    return NULL;
}

PyDoc_STRVAR(maxpool_backward_doc,
"maxpool_backward(isa, dout, argmax, n, oh, ow, c, kh, kw, sh, sw, ph, pw, dx, h, w)\n--\n\n"
"dx (N, H, W, C) of maxpool_forward for dout (N, OH, OW, C): each output's gradient is added\n"
"at its window's argmax (offsets outside 0 .. KH*KW-1, or in the padding, add nothing). dx\n"
"is a flat buffer of at least N*H*W*C + (ceil(C/L)*L - C) values, all cleared first.");

static PyObject *py_maxpool_backward(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"isa", "dout", "argmax", "n", "oh", "ow", "c", "kh", "kw", "sh", "sw", "ph",
                               "pw", "dx", "h", "w", NULL};
    const char *isa;
    PyObject *d_obj, *at_obj, *dx_obj;
    Py_ssize_t n, oh, ow, c, kh, kw, sh, sw, ph, pw, h, w, total;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sOOnnnnnnnnnnOnn:maxpool_backward", keywords, &isa, &d_obj,
                                     &at_obj, &n, &oh, &ow, &c, &kh, &kw, &sh, &sw, &ph, &pw, &dx_obj, &h, &w))
        return NULL;
    Call call = {0};
    if (find_isa(&call, isa) < 0 || AT_LEAST(1, n, oh, ow, c, kh, kw, sh, sw, h, w) < 0
        || AT_LEAST(0, ph, pw) < 0 || pooled_size("rows", oh, h, kh, sh, ph) < 0
        || pooled_size("columns", ow, w, kw, sw, pw) < 0)
        return NULL;
    const Py_ssize_t d_size = PRODUCT(n, oh, ow, c), dx_size = PRODUCT(n, h, w, c);
    if (d_size < 0 || dx_size < 0) return NULL;
    const void *d = take(&call, d_obj, "dout", REALS, 0, d_size, 0, NULL);
    const void *argmax = d ? take(&call, at_obj, "argmax", INDICES, 0, d_size, 0, NULL) : NULL;
    if (!argmax) goto fail;
    const Py_ssize_t slack = round_up(c, call.k->lanes) - c;
    void *dx = take(&call, dx_obj, "dx", REALS, 1, dx_size + slack, 1, &total);
    if (!dx) goto fail;
    Py_BEGIN_ALLOW_THREADS
    call.k->maxpool_backward(d, argmax, n, oh, ow, c, kh, kw, sh, sw, ph, pw, dx, h, w, total);
    Py_END_ALLOW_THREADS
    release(&call);
    Py_RETURN_NONE;
fail:
    release(&call);
    return NULL;
}

/* ---- variants, lanes, denormals --------------------------------------------------------- */

PyDoc_STRVAR(isas_doc, "isas()\n--\n\nThe kernel variants compiled in, lowest first.");

static PyObject *py_isas(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("(sss)", ISA_NAMES[0], ISA_NAMES[1], ISA_NAMES[2]);
}

PyDoc_STRVAR(supported_isas_doc,
"supported_isas()\n--\n\nThe variants this CPU (and its OS) can run, lowest first.");

static PyObject *py_supported_isas(PyObject *self, PyObject *unused)
{
    PyObject *names = PyList_New(0);
    if (!names) return NULL;
    for (int i = 0; i < ISAS; i++) {
        if (!isa_supported[i]) continue;
        PyObject *name = PyUnicode_FromString(ISA_NAMES[i]);
        if (!name || PyList_Append(names, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(name);
    }
    PyObject *result = PyList_AsTuple(names);
    Py_DECREF(names);
    return result;
}

PyDoc_STRVAR(lanes_doc,
"lanes(isa, itemsize)\n--\n\nValues of one vector in variant isa for items of itemsize bytes\n"
"(4: float32, 8: float64): the output-channel block the packed weights use.");

static PyObject *py_lanes(PyObject *self, PyObject *args)
{
    const char *isa;
    Py_ssize_t itemsize;
    if (!PyArg_ParseTuple(args, "sn:lanes", &isa, &itemsize)) return NULL;
    Call call = {0};
    if (find_isa(&call, isa) < 0) return NULL;
    if (itemsize != 4 && itemsize != 8) {
        PyErr_Format(PyExc_ValueError, "itemsize must be 4 (float32) or 8 (float64), got %zd", itemsize);
        return NULL;
    }
    return PyLong_FromLong(TABLES[call.isa][itemsize == 8]->lanes);
}

PyDoc_STRVAR(flush_denormals_doc,
"flush_denormals(enabled)\n--\n\n"
"Set (True) or clear (False) the flush-to-zero and denormals-are-zero bits of the calling\n"
"thread's MXCSR register; returns whether both were set before. Per thread: running threads\n"
"keep their own setting; a thread started later by this one inherits it (the OS copies the\n"
"register). It governs every SSE/AVX float operation of this thread, NumPy's included:\n"
"subnormal results become zero and subnormal inputs count as zero.");

static PyObject *py_flush_denormals(PyObject *self, PyObject *arg)
{
    if (!PyBool_Check(arg) && !PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "flush_denormals expects a bool, got %.80s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    const int enable = PyObject_IsTrue(arg);
    if (enable < 0) return NULL;
    const unsigned int csr = _mm_getcsr();
    const int previous = (csr & MXCSR_FTZ_DAZ) == MXCSR_FTZ_DAZ;
    _mm_setcsr(enable ? csr | MXCSR_FTZ_DAZ : csr & ~MXCSR_FTZ_DAZ);
    return PyBool_FromLong(previous);
}

PyDoc_STRVAR(denormals_flushed_doc,
"denormals_flushed()\n--\n\nWhether the calling thread flushes denormals (see flush_denormals).");

static PyObject *py_denormals_flushed(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong((_mm_getcsr() & MXCSR_FTZ_DAZ) == MXCSR_FTZ_DAZ);
}

#define KERNEL(name) {#name, (PyCFunction)(void (*)(void))py_##name, METH_VARARGS | METH_KEYWORDS, name##_doc}
static PyMethodDef methods[] = {
    KERNEL(conv_forward),
    KERNEL(conv_weight_grad),
    KERNEL(conv_input_grad),
    KERNEL(channel_sums),
    KERNEL(maxpool_forward),
    KERNEL(maxpool_backward),
    {"isas", py_isas, METH_NOARGS, isas_doc},
    {"supported_isas", py_supported_isas, METH_NOARGS, supported_isas_doc},
    {"lanes", py_lanes, METH_VARARGS, lanes_doc},
    {"flush_denormals", py_flush_denormals, METH_O, flush_denormals_doc},
    {"denormals_flushed", py_denormals_flushed, METH_NOARGS, denormals_flushed_doc},
    {NULL, NULL, 0, NULL},
};
#undef KERNEL

PyDoc_STRVAR(module_doc,
"cnn_xp's compiled CPU kernels (direct NHWC convolution and max pooling), built at install.\n\n"
"Every kernel takes the variant to run first ('baseline', 'avx2' or 'avx512'; see\n"
"supported_isas()), then C-contiguous buffers and the geometry they hold, all checked\n"
"before the kernel runs (TypeError / ValueError). The GIL is released during a kernel.\n"
"cnn_xp.kernels.cpu wraps these for NCHW-shaped NumPy arrays.");

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", module_doc, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
    detect_isas();
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "MAX_RUN_VECTORS", cnn_xp_kernels_float_baseline.max_run_vectors) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
