"""The CUDA kernels' source (cnn_xp/kernels/cuda/sources.py), checked without a GPU.

- every spec makes a ``cupy.ElementwiseKernel`` (making one compiles nothing);
- every body compiles with nvcc for float and double, inside CuPy's own CArray / CIndexer
  headers, warnings as errors (skipped without nvcc);
- every body, compiled as host C++ (g++) and called with raw launch arguments over the same
  memory (strided views, broadcast zero strides, ties, NaN, all-padding windows, out-of-range
  labels flagged), computes what the naive loops and the reference compute (skipped without g++).
  This runs each kernel's real index arithmetic on the CPU, including launch geometries the
  module picks only for large arrays (several im2col rows per thread).

The accelerator module as a whole, run on these host kernels, is tests/test_kernels_cuda.py;
on a real GPU, tests/gpu/.
"""
import ctypes
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cuda_host  # noqa: E402
import naive  # noqa: E402

from cnn_xp import ops  # noqa: E402
from cnn_xp.kernels.cuda import conv as cuda_conv  # noqa: E402
from cnn_xp.kernels.cuda import launch  # noqa: E402
from cnn_xp.kernels.cuda.sources import KERNEL_SPECS  # noqa: E402


# -- construction -------------------------------------------------------------------------------

def test_every_spec_makes_a_cupy_elementwise_kernel():
    cp = pytest.importorskip("cupy")
    kernels = launch.build_kernels(cp)
    assert set(kernels) == set(KERNEL_SPECS)
    for name, kernel in kernels.items():
        assert isinstance(kernel, cp.ElementwiseKernel)
        assert kernel.name == "cnn_xp_" + name
        n_in, n_out = (len(cuda_host.params(s)) for s in KERNEL_SPECS[name][:2])
        assert (kernel.nin, kernel.nout) == (n_in, n_out), name


def test_the_specs_cover_every_kernel_the_module_launches():
    """Every kernel name passed to launch.launch in the package has a spec, and every spec
    is launched somewhere (no dead kernels)."""
    package = Path(launch.__file__).parent
    source = "".join(p.read_text() for p in package.glob("*.py") if p.name != "sources.py")
    launched = set(re.findall(r'launch\.launch\(\s*"(\w+)"', source))
    launched |= set(re.findall(r'_(?:fused|resampled)\(\s*"(\w+)"', source))
    if re.search(r'launch\.launch\(f"\{rule\}_update_all"', source):  # one per rule of the optimizers
        launched |= {f"{rule}_update_all" for rule in ops.updates.RULES}
    assert launched == set(KERNEL_SPECS)


# -- nvcc ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ctype, contiguous, itype", [("float", False, "long long"), ("double", False, "long long"),
                                                     ("float", True, "int"), ("double", True, "unsigned char")])
def test_kernel_bodies_compile_with_nvcc(tmp_path, ctype, contiguous, itype):
    cp = pytest.importorskip("cupy")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    include = Path(cp.__file__).parent / "_core" / "include"
    src = tmp_path / "kernels.cu"
    src.write_text("#include <assert.h>\n#include <cupy/carray.cuh>\n" + "".join(
        cuda_host.cuda_source(name, ctype, contiguous, itype) for name in KERNEL_SPECS))
    proc = subprocess.run([nvcc, "-std=c++17", "-Werror", "all-warnings", "-I", str(include),
                           "-c", str(src), "-o", str(tmp_path / "kernels.o")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


# -- g++: raw launches of the host bodies -------------------------------------------------------

@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    return cuda_host.host_library(tmp_path_factory.mktemp("cuda_host"))


def call(lib, name, *args, size=None):
    """Call host kernel ``name`` with launch arguments in spec order (inputs, then outputs):
    arrays by data pointer (their strides are the kernel's business), scalars converted to
    the spec's type; the loop runs over ``size`` (default: the last array's size)."""
    specs = cuda_host.params(KERNEL_SPECS[name][0]) + cuda_host.params(KERNEL_SPECS[name][1])
    bound = {}
    for (_, typ, _), value in zip(specs, args, strict=True):
        if isinstance(value, np.ndarray) and typ in cuda_host.PLACEHOLDERS:
            bound.setdefault(typ, value.dtype)
    converted = [ctypes.c_void_p(v.ctypes.data) if isinstance(v, np.ndarray)
                 else cuda_host._ctype_of(typ, bound)(v) for (_, typ, _), v in zip(specs, args)]
    int_dtype = str(bound["I"]) if "I" in bound else None
    fn = getattr(lib, cuda_host.host_symbol(name, str(bound["T"]), int_dtype))
    fn(*converted, ctypes.c_longlong(args[-1].size if size is None else size))


def geometry(x_shape, kh, kw, stride, pad):
    oh, ow = ops.output_shape(x_shape, kh, kw, stride, pad)
    return (x_shape[1], x_shape[2], x_shape[3], oh, ow, kh, kw, *naive.pair(stride), *naive.pair(pad))


def element_strides(a):
    return [s // a.itemsize for s in a.strides]


WINDOW_CASES = [  # (x shape, kh, kw, stride, pad)
    ((2, 3, 7, 7), 3, 3, (1, 1), (0, 0)),
    ((2, 3, 8, 9), 3, 2, (2, 1), (1, 2)),
    ((1, 2, 6, 6), 2, 2, (2, 2), (0, 0)),
    ((2, 1, 9, 7), 5, 3, (3, 2), (2, 1)),
    ((1, 2, 5, 5), 1, 1, (2, 2), (0, 0)),
    ((1, 2, 4, 4), 3, 3, (1, 1), (2, 2)),   # padding wider than the map's border
]


def nhwc_view(rng, shape, dtype):
    """An NCHW-shaped view of NHWC memory (what the conv forward hands to the next layer)."""
    n, c, h, w = shape
    return rng.standard_normal((n, h, w, c)).astype(dtype).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("x_shape, kh, kw, stride, pad", WINDOW_CASES)
def test_im2col_kernel_matches_the_naive_loops(lib, x_shape, kh, kw, stride, pad):
    rng = np.random.default_rng(2)
    x = nhwc_view(rng, x_shape, np.float32)
    want = naive.im2col(x.astype(np.float64), kh, kw, stride, pad).astype(np.float32)
    rows, width_col = want.shape
    ld = width_col + 1
    oc = 4
    W = rng.standard_normal((oc, width_col)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    for per_thread in (1, 2, 3, 8, rows + 5):  # whole and partial last groups of rows
        col = np.full((rows, ld), np.nan, np.float32)
        w_aug = np.full((oc, ld), np.nan, np.float32)
        col_threads = -(-rows // per_thread) * ld
        call(lib, "im2col", x, *geometry(x_shape, kh, kw, stride, pad), rows, per_thread, ld,
             *element_strides(x), W, b, col_threads, col, w_aug, size=col_threads + oc * ld)
        np.testing.assert_array_equal(col[:, :-1], want)
        np.testing.assert_array_equal(col[:, -1], np.ones(rows, np.float32))
        np.testing.assert_array_equal(w_aug, np.concatenate([W, b[:, None]], axis=1))


def test_rows_per_thread_keeps_enough_threads():
    assert cuda_conv.rows_per_thread(1000) == 1
    assert cuda_conv.rows_per_thread(3 << 18) == 3
    assert cuda_conv.rows_per_thread(83_000_000) == 8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, kh, kw, stride, pad", WINDOW_CASES)
def test_fold_kernel_matches_the_reference_col2im(lib, x_shape, kh, kw, stride, pad, dtype):
    rng = np.random.default_rng(1)
    oh, ow = ops.output_shape(x_shape, kh, kw, stride, pad)
    n, c = x_shape[:2]
    col = rng.standard_normal((n * oh * ow, c * kh * kw)).astype(dtype)
    want = ops.col2im(col, x_shape, kh, kw, stride, pad)
    np.testing.assert_allclose(want, naive.col2im(col, x_shape, kh, kw, stride, pad), rtol=1e-5, atol=1e-5)
    # The two layouts the module folds: col2im's (N*OH*OW, C*KH*KW) view and col2im_t's
    # transposed columns (C*KH*KW, N*OH*OW), both as strided (N, C, OH, OW, KH, KW) windows.
    col_t = np.ascontiguousarray(col.T)
    views = {"col": col.reshape(n, oh, ow, c, kh, kw).transpose(0, 3, 1, 2, 4, 5),
             "col_t": col_t.reshape(c, kh, kw, n, oh, ow).transpose(3, 0, 4, 5, 1, 2)}
    for name, windows in views.items():
        image = np.full(x_shape, np.nan, dtype)
        call(lib, "fold_windows", windows, *geometry(x_shape, kh, kw, stride, pad),
             *element_strides(windows), image)
        # the reference adds its kernel-offset slabs in the kernel's order: bit-identical
        np.testing.assert_array_equal(image, want, err_msg=name)


def test_fold_kernel_reads_a_broadcast_share(lib):
    """Zero strides (average pooling's backward) read the same value for every offset."""
    x_shape, k, stride, pad = (2, 3, 7, 6), 3, 2, 1
    oh, ow = ops.output_shape(x_shape, k, k, stride, pad)
    share = np.random.default_rng(4).standard_normal((2, 3, oh, ow))
    windows = np.broadcast_to(share[..., None, None], (2, 3, oh, ow, k, k))
    assert windows.strides[4:] == (0, 0)
    image = np.full(x_shape, np.nan)
    call(lib, "fold_windows", windows, *geometry(x_shape, k, k, stride, pad), *element_strides(windows), image)
    want = naive.avgpool2d_backward(share * (k * k), x_shape, k, k, stride, pad)
    np.testing.assert_allclose(image, want, rtol=1e-12, atol=1e-12)


def maxpool_host(lib, x, kh, kw, stride, pad):
    oh, ow = ops.output_shape(x.shape, kh, kw, stride, pad)
    out = np.full((*x.shape[:2], oh, ow), np.nan, x.dtype)
    arg = np.full(out.shape, -1, np.int64)
    call(lib, "maxpool_forward", x, *geometry(x.shape, kh, kw, stride, pad), *element_strides(x),
         float("-inf"), out, arg)
    return out, arg


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, kh, kw, stride, pad", [c for c in WINDOW_CASES if c[1] > 1])
def test_maxpool_kernels_match_the_naive_loops(lib, x_shape, kh, kw, stride, pad, dtype):
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, size=x_shape).astype(dtype)  # many ties: the first maximum wins
    x = np.asfortranarray(x)                             # and another memory order
    out, arg = maxpool_host(lib, x, kh, kw, stride, pad)
    want, where = naive.maxpool2d(x, kh, kw, stride, pad)
    np.testing.assert_array_equal(out, want)
    sh, sw = naive.pair(stride)
    oh, ow = out.shape[2:]
    window_origin = np.stack(np.meshgrid(np.arange(oh) * sh, np.arange(ow) * sw, indexing="ij"), -1)
    offset = where - window_origin  # (i, j) inside the window
    np.testing.assert_array_equal(arg, offset[..., 0] * kw + offset[..., 1])

    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = np.full(x_shape, np.nan, dtype)
    call(lib, "maxpool_backward", dout, arg, *geometry(x_shape, kh, kw, stride, pad), dx)
    np.testing.assert_allclose(dx, naive.maxpool2d_backward(dout, x_shape, where, pad), rtol=1e-6, atol=1e-6)


def test_maxpool_kernel_nan_wins_and_all_padding_windows(lib):
    x = np.array([[[[1.0, np.nan], [np.nan, 5.0]]]], dtype=np.float32)
    # 2x2 windows, stride 2, pad 1: every window holds one real pixel and three -inf pads.
    out, arg = maxpool_host(lib, x, 2, 2, 2, 1)
    np.testing.assert_array_equal(out, [[[[1.0, np.nan], [np.nan, 5.0]]]])
    np.testing.assert_array_equal(arg, [[[[3, 2], [1, 0]]]])
    # a window holding a NaN after its maximum: the (first) NaN wins
    x = np.array([[[[2.0, 7.0, np.nan, np.nan]]]], dtype=np.float64)
    out, arg = maxpool_host(lib, x, 1, 4, 1, 0)
    assert math.isnan(out.item()) and arg.item() == 2
    ref_out, _ = ops.maxpool2d_forward(x, 1, 4, 1, 0)
    assert math.isnan(float(ref_out.item()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, kh, kw, stride, pad", WINDOW_CASES)
def test_avgpool_kernel_matches_the_naive_loops(lib, x_shape, kh, kw, stride, pad, dtype):
    x = nhwc_view(np.random.default_rng(5), x_shape, dtype)
    oh, ow = ops.output_shape(x_shape, kh, kw, stride, pad)
    out = np.full((*x_shape[:2], oh, ow), np.nan, dtype)
    call(lib, "avgpool_forward", x, *geometry(x_shape, kh, kw, stride, pad), *element_strides(x), out)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out, naive.avgpool2d(x, kh, kw, stride, pad), rtol=tol, atol=tol)


def softmax_step(lib, scores, labels, add_totals=True, totals=None):
    """Launch ``softmax_xent_step`` over the rows of ``scores``; its outputs as a dict (the
    ticket checked back at 0)."""
    n, classes = scores.shape
    out = {"probs": np.full_like(scores, np.nan), "grad": np.full_like(scores, np.nan),
           "labels_copy": np.zeros_like(labels), "row_loss": np.full(n, np.nan, scores.dtype),
           "row_hit": np.full(n, -1, np.int32), "loss": np.full(1, np.nan, scores.dtype),
           "totals": np.array([1.5, 2.0]) if totals is None else totals}
    ticket = np.zeros(1, np.int32)
    call(lib, "softmax_xent_step", scores, labels, classes, n, 1.0 / n, int(add_totals), out["probs"], out["grad"],
         out["labels_copy"], out["row_loss"], out["row_hit"], out["loss"], out["totals"], ticket, size=n)
    assert ticket[0] == 0  # reset for the next launch
    return out


@pytest.mark.parametrize("label_dtype", ["int64", "int32", "uint8"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, classes", [(7, 10), (1, 3), (33, 1), (100, 10)])
def test_softmax_cross_entropy_step_kernel_matches_the_naive_loops(lib, n, classes, dtype, label_dtype):
    rng = np.random.default_rng(5)
    scores = (rng.standard_normal((n, classes)) * 30).astype(dtype)  # large: stability
    scores[0, -1] = scores[0, 0] = scores[0].max() + 1  # a tie: the first maximum is the prediction
    labels = rng.integers(0, classes, n).astype(label_dtype)
    out = softmax_step(lib, scores, labels)
    want_p = naive.softmax_rows(scores)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out["probs"], want_p, rtol=tol, atol=tol)
    want_rows = -naive.log_softmax_rows(scores)[np.arange(n), labels]
    np.testing.assert_allclose(out["row_loss"], want_rows, rtol=tol, atol=tol)
    np.testing.assert_allclose(out["grad"], (want_p - np.eye(classes)[labels]) / n, rtol=tol, atol=tol)
    np.testing.assert_array_equal(out["labels_copy"], labels)
    hits = [int(np.argmax(row) == label) for row, label in zip(scores, labels)]
    np.testing.assert_array_equal(out["row_hit"], hits)
    np.testing.assert_allclose(out["loss"][0], want_rows.mean(), rtol=tol, atol=tol)
    np.testing.assert_allclose(out["totals"], [1.5 + want_rows.sum(), 2.0 + sum(hits)], rtol=tol)
    unchanged = softmax_step(lib, scores, labels, add_totals=False)["totals"]
    np.testing.assert_array_equal(unchanged, [1.5, 2.0])


@pytest.mark.parametrize("label_dtype", ["int64", "int32", "uint8", "uint64"])
def test_softmax_cross_entropy_step_kernel_flags_out_of_range_labels_with_nan(lib, label_dtype):
    """A label outside 0..K-1 is never read through: its row's loss and gradient are NaN and
    it is no hit, where a wrapped or clamped label would give a plausible finite number (the
    Python side refuses such labels before a launch; this is the kernel's own guard)."""
    rng = np.random.default_rng(6)
    too_big = {"int64": -1, "int32": -1, "uint8": 255, "uint64": 2**64 - 1}[label_dtype]  # uint64: -1 as long long
    labels = np.array([7, too_big, 4, 5, 0], dtype=label_dtype)
    labels[3] = -12 if np.dtype(label_dtype).kind == "i" else 5
    bad = np.array([True, True, False, True, False])
    scores = rng.standard_normal((5, 5))
    out = softmax_step(lib, scores, labels)
    assert np.isnan(out["row_loss"][bad]).all() and np.isnan(out["grad"][bad]).all()
    assert not out["row_hit"][bad].any() and np.isnan(out["loss"][0])
    good = ~bad
    want = -naive.log_softmax_rows(scores)[np.arange(5)[good], labels[good].astype(np.int64)]
    np.testing.assert_allclose(out["row_loss"][good], want, rtol=1e-12)
    np.testing.assert_allclose(out["probs"], naive.softmax_rows(scores), rtol=1e-12)  # every row's softmax
    onehot = np.eye(5)[labels.astype(np.int64) % 5]
    np.testing.assert_allclose(out["grad"][good], ((naive.softmax_rows(scores) - onehot) / 5)[good], atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_and_dropout_kernels_match_the_reference(lib, dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3, 5, 5)).astype(dtype)
    x[0, 0, 0, :3] = [np.nan, 0.0, -0.0]
    dout = rng.standard_normal(x.shape).astype(dtype)
    out = np.maximum(x, 0)
    dx = np.empty_like(x)
    call(lib, "relu_backward", dout, out, dx)
    np.testing.assert_array_equal(dx, dout * (out > 0))

    p = 0.3
    u = rng.random(x.shape).astype(dtype)
    y, mask = np.empty_like(x), np.empty_like(x)
    call(lib, "dropout_forward", x, u, p, 1.0 / (1.0 - p), y, mask)
    want_mask = (u >= dtype(p)).astype(dtype) * dtype(1.0 / (1.0 - p))
    np.testing.assert_array_equal(mask, want_mask)
    np.testing.assert_array_equal(y, x * want_mask)


UPDATE_CASES = {  # kernel -> (reference function, state slots, hyperparameters, kernel scalars)
    "sgd_update": (ops.sgd_update, 0, (0.1,), lambda lr: (lr,)),
    "momentum_update": (ops.momentum_update, 1, (0.1, 0.9), lambda lr, m: (lr, m)),
    "nesterov_update": (ops.nesterov_update, 1, (0.1, 0.9), lambda lr, m: (lr, m)),
    "adagrad_update": (ops.adagrad_update, 1, (0.1, 1e-7), lambda lr, eps: (lr, eps)),
    "rmsprop_update": (ops.rmsprop_update, 1, (0.01, 0.99, 1e-7),
                       lambda lr, d, eps: (lr, d, 1.0 - d, eps)),
    "adam_update": (ops.adam_update, 2, (0.01 / (1 - 0.9), 0.9, 0.999, 1 / math.sqrt(1 - 0.999), 1e-8),
                    lambda lr_t, b1, b2, vs, eps: (1.0 - b1, 1.0 - b2, lr_t, vs, eps)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(UPDATE_CASES))
def test_update_kernels_match_the_reference_rules(lib, name, dtype):
    rule, slots, hyper, scalars = UPDATE_CASES[name]
    rng = np.random.default_rng(8)
    p0 = rng.standard_normal(50).astype(dtype)
    p_ref = p0.copy()
    state_ref = [np.zeros_like(p_ref) for _ in range(slots)]
    p_host, state_host = p0.copy(), [s.copy() for s in state_ref]
    for _ in range(3):  # the state carries over
        g = rng.standard_normal(50).astype(dtype)
        rule(p_ref, g, *state_ref, *hyper)
        call(lib, name, g, *scalars(*hyper), p_host, *state_host)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(p_host, p_ref, rtol=tol, atol=tol)
    for got, want in zip(state_host, state_ref):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert np.abs(p_host - p0).min() > 0  # every entry moved
