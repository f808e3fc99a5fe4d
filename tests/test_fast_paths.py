"""The CuPy fast paths, checked without a GPU.

- every kernel spec builds as a ``cupy.ElementwiseKernel`` (construction needs no GPU);
- dispatch: ``applies`` is False for NumPy arrays, other dtypes and CNN_XP_NO_CUDA_KERNELS=1,
  so the CPU always runs the portable code;
- each kernel body compiles with nvcc for float and double, inside CuPy's own CArray/CIndexer
  headers (skipped without nvcc);
- each kernel body, compiled as host C++ (g++) over the same memory (strided views included),
  computes what the portable NumPy op computes (skipped without g++). This runs the real
  index arithmetic of every kernel on the CPU, so a GPU run only has to confirm it.
The GPU parity of fast vs portable paths is tests/gpu/test_cuda_kernels.py (this file has
another name: pytest here runs without package __init__ files, so basenames must differ).
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cnn_xp import optim
from cnn_xp.ops import cuda_kernels as ck
from cnn_xp.ops import fold_windows, im2col, maxpool2d_backward, maxpool2d_forward, sliding_windows

C_TYPES = {"int32": "int", "int64": "long long"}


def _params(spec):
    """[(is_raw, type, name)] from an ElementwiseKernel parameter string."""
    out = []
    for part in spec.split(","):
        words = part.split()
        raw = words[0] == "raw"
        out.append((raw, *(words[1:] if raw else words)))
    return out


# -- construction and dispatch ------------------------------------------------------------------

def test_every_kernel_builds_as_a_cupy_elementwise_kernel():
    cp = pytest.importorskip("cupy")
    kernels = ck.build_kernels(cp)
    assert set(kernels) == set(ck.KERNEL_SPECS)
    assert {"fold_windows", "maxpool_backward", "adam_update", "adagrad_update", "sgd_update",
            "momentum_update"} <= set(kernels)
    for name, kernel in kernels.items():
        assert isinstance(kernel, cp.ElementwiseKernel)
        assert kernel.name == "cnn_xp_" + name
        n_in, n_out = (len(_params(s)) for s in ck.KERNEL_SPECS[name][:2])
        assert (kernel.nin, kernel.nout) == (n_in, n_out), name


def test_dispatch_chooses_the_portable_path_on_cpu(monkeypatch):
    monkeypatch.delenv(ck.ENV_DISABLE, raising=False)
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    assert not ck.applies(x)
    assert not ck.applies(x.astype(np.float64))
    assert ck.enabled() and ck.status()["enabled"]
    monkeypatch.setenv(ck.ENV_DISABLE, "1")
    assert not ck.enabled()
    assert ck.status() == {"enabled": False, "reason": f"{ck.ENV_DISABLE} is set"}


def test_applies_rejects_other_dtypes_and_devices_without_touching_cupy(monkeypatch):
    class FakeGpuArray:  # device_of() keys on the type's module, like a cupy.ndarray
        __module__ = "cupy._core.core"

        def __init__(self, dtype):
            self.dtype = np.dtype(dtype)

    monkeypatch.delenv(ck.ENV_DISABLE, raising=False)
    assert ck.applies(FakeGpuArray("float32"), FakeGpuArray("float64"))
    assert not ck.applies(FakeGpuArray("float16"))
    assert not ck.applies(FakeGpuArray("float32"), np.zeros(2, np.float32))
    monkeypatch.setenv(ck.ENV_DISABLE, "1")
    assert not ck.applies(FakeGpuArray("float32"))


# -- nvcc: the bodies compile inside CuPy's generated-kernel shape ------------------------------

RAW_NDIM = {"windows": 6, "x": 4, "dout": 4, "argmax": 4, "scores": 2, "labels": 1, "probs": 2,
            "col": 2}
ELEMENTWISE_INPUTS = {"g", "dout", "out", "x", "u"}  # array (not scalar) non-raw inputs


def _cuda_source(name, ctype):
    ins, outs, body = ck.KERNEL_SPECS[name]
    nd = 2 if name == "im2col" else 1 if name.endswith("_update") else 4
    params, refs = [], []
    for raw, typ, var in _params(ins):
        ct = C_TYPES.get(typ, typ)
        if raw:  # CuPy passes raw inputs as const CArrays
            params.append(f"const CArray<{ct}, {RAW_NDIM[var]}, false, false> {var}")
        elif var in ELEMENTWISE_INPUTS:
            params.append(f"CArray<{ct}, {nd}, false, false> _raw_{var}")
            refs.append(f"const {ct} {var} = _raw_{var}[_ind.get()];")
        else:
            params.append(f"{ct} {var}")
    for raw, typ, var in _params(outs):
        if raw:
            params.append(f"CArray<{typ}, {RAW_NDIM[var]}, false, false> {var}")
            continue
        params.append(f"CArray<{typ}, {nd}, true, false> _raw_{var}")
        refs.append(f"{typ} &{var} = _raw_{var}[_ind.get()];")
    return (f"namespace ns_{name} {{ typedef {ctype} T; typedef long long I;\n"
            f"extern \"C\" __global__ void k_{name}({', '.join(params)}, CIndexer<{nd}, false> _ind) {{\n"
            f"  CUPY_FOR(i, _ind.size()) {{ _ind.set(i); {' '.join(refs)}\n{body}\n  }}\n}} }}\n")


@pytest.mark.parametrize("ctype", ["float", "double"])
def test_kernel_bodies_compile_with_nvcc(tmp_path, ctype):
    cp = pytest.importorskip("cupy")
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    include = Path(cp.__file__).parent / "_core" / "include"
    src = tmp_path / "kernels.cu"
    src.write_text("#include <assert.h>\n#include <cupy/carray.cuh>\n" + "".join(
        _cuda_source(name, ctype) for name in ck.KERNEL_SPECS))
    proc = subprocess.run([nvcc, "-std=c++17", "-Werror", "all-warnings", "-I", str(include),
                           "-c", str(src), "-o", str(tmp_path / "kernels.o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


# -- g++: the same bodies run on the host over the same memory ----------------------------------

def _host_function(name, ctype):
    """extern "C" void <name>_<ctype>(...): the kernel body in a loop over i."""
    ins, outs, body = ck.KERNEL_SPECS[name]
    params, refs = [], []
    for raw, typ, var in _params(ins):
        if raw:
            params.append(f"const {typ}* {var}")
        elif var in ELEMENTWISE_INPUTS:
            params.append(f"const {typ}* _raw_{var}")
            refs.append(f"const {typ} {var} = _raw_{var}[i];")
        else:
            params.append(f"{C_TYPES.get(typ, typ)} {var}")
    for raw, typ, var in _params(outs):
        if raw:
            params.append(f"{typ}* {var}")
            continue
        params.append(f"{typ}* _raw_{var}")
        refs.append(f"{typ} &{var} = _raw_{var}[i];")
    return (f"namespace ns_{name}_{ctype} {{ typedef {ctype} T; typedef long long I;\n"
            f"extern \"C\" void {name}_{ctype}({', '.join(params)}, long long size) {{\n"
            f"  for (ptrdiff_t i = 0; i < size; ++i) {{ {' '.join(refs)}\n{body}\n  }}\n}} }}\n")


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed")
    folder = tmp_path_factory.mktemp("host_kernels")
    src = folder / "kernels.cpp"
    src.write_text("#include <cmath>\n#include <cstddef>\nusing std::sqrt;\n" + "".join(
        _host_function(name, ctype) for name in ck.KERNEL_SPECS for ctype in ("float", "double")))
    lib = folder / "kernels.so"
    proc = subprocess.run([gxx, "-O1", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Werror",
                           str(src), "-o", str(lib)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ctypes.CDLL(str(lib))


def _call(lib, name, *args):
    """Call a host kernel: arrays by data pointer (their own strides are the kernel's business),
    ints as int32/int64 per the spec, floats in the arrays' dtype; the output size last."""
    ins, outs, _ = ck.KERNEL_SPECS[name]
    specs = _params(ins) + _params(outs)
    arrays = [a for a in args if isinstance(a, np.ndarray) and a.dtype.kind == "f"]
    ctype = "float" if arrays[0].dtype == np.float32 else "double"
    scalar_t = ctypes.c_float if ctype == "float" else ctypes.c_double
    converted = []
    for (raw, typ, _), value in zip(specs, args, strict=True):
        if isinstance(value, np.ndarray):
            converted.append(ctypes.c_void_p(value.ctypes.data))
        elif typ == "int32":
            converted.append(ctypes.c_int(value))
        elif typ == "int64":
            converted.append(ctypes.c_longlong(value))
        else:
            converted.append(scalar_t(value))
    getattr(lib, f"{name}_{ctype}")(*converted, ctypes.c_longlong(args[-1].size))


def _geometry(x_shape, oh, ow, kh, kw, stride, pad):
    return (x_shape[1], x_shape[2], x_shape[3], oh, ow, kh, kw, *stride, *pad)


WINDOW_CASES = [  # (x shape, kh, kw, stride, pad)
    ((2, 3, 7, 7), 3, 3, (1, 1), (0, 0)),
    ((2, 3, 8, 9), 3, 2, (2, 1), (1, 2)),
    ((1, 2, 6, 6), 2, 2, (2, 2), (0, 0)),
    ((2, 1, 9, 7), 5, 3, (3, 2), (2, 1)),
    ((1, 2, 5, 5), 1, 1, (2, 2), (0, 0)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, kh, kw, stride, pad", WINDOW_CASES)
def test_host_fold_windows_matches_portable(host_kernels, x_shape, kh, kw, stride, pad, dtype):
    rng = np.random.default_rng(1)
    windows_shape = sliding_windows(np.zeros(x_shape, dtype), kh, kw, stride, pad).shape
    # A transposed (non-contiguous) view, as col2im hands over.
    base = rng.standard_normal((windows_shape[0], *windows_shape[2:4], windows_shape[1],
                                *windows_shape[4:])).astype(dtype)
    windows = base.transpose(0, 3, 1, 2, 4, 5)
    expected = fold_windows(windows, x_shape, stride, pad)
    image = np.full(x_shape, np.nan, dtype)
    strides = [s // windows.itemsize for s in windows.strides]
    _call(host_kernels, "fold_windows", windows,
          *_geometry(x_shape, *windows_shape[2:4], kh, kw, stride, pad), *strides, image)
    np.testing.assert_array_equal(image, expected)  # same summation order: bit-identical


@pytest.mark.parametrize("x_shape, kh, kw, stride, pad", WINDOW_CASES)
def test_host_im2col_matches_portable(host_kernels, x_shape, kh, kw, stride, pad):
    rng = np.random.default_rng(2)
    # An NCHW view of NHWC memory, as conv2d_forward returns.
    x = rng.standard_normal((x_shape[0], *x_shape[2:], x_shape[1])).astype(np.float32)
    x = x.transpose(0, 3, 1, 2)
    expected = im2col(x, kh, kw, stride, pad)
    oh, ow = sliding_windows(x, kh, kw, stride, pad).shape[2:4]
    rows = expected.shape[0]
    for per_thread in (1, 2, 3, 8, rows + 5):  # whole and partial last groups of rows
        col = np.full(expected.shape, np.nan, np.float32)
        _call(host_kernels, "im2col", x, *_geometry(x_shape, oh, ow, kh, kw, stride, pad),
              rows, per_thread, *[s // x.itemsize for s in x.strides], col)
        np.testing.assert_array_equal(col, expected)


def test_im2col_rows_per_thread_keeps_enough_threads():
    assert ck.rows_per_thread(1000) == 1
    assert ck.rows_per_thread(3 << 18) == 3
    assert ck.rows_per_thread(83_000_000) == 8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, kh, kw, stride, pad",
                         [case for case in WINDOW_CASES if case[1] > 1])
def test_host_maxpool_matches_portable(host_kernels, x_shape, kh, kw, stride, pad, dtype):
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, size=x_shape).astype(dtype)  # many ties: first maximum must win
    out, cache = maxpool2d_forward(x, kh, kw, stride, pad)
    oh, ow = out.shape[2:]
    got_out = np.full(out.shape, np.nan, dtype)
    got_arg = np.full(out.shape, -1, np.int64)
    _call(host_kernels, "maxpool_forward", x, *_geometry(x_shape, oh, ow, kh, kw, stride, pad),
          *[s // x.itemsize for s in x.strides], float("-inf"), got_out, got_arg)
    np.testing.assert_array_equal(got_out, out)
    np.testing.assert_array_equal(got_arg, cache[1])

    dout = rng.standard_normal(out.shape).astype(dtype)
    expected = maxpool2d_backward(dout, cache)
    dx = np.full(x_shape, np.nan, dtype)
    _call(host_kernels, "maxpool_backward", dout, np.ascontiguousarray(cache[1], dtype=np.int64),
          *_geometry(x_shape, oh, ow, kh, kw, stride, pad), dx)
    np.testing.assert_allclose(dx, expected, rtol=1e-6, atol=0)


def test_host_maxpool_forward_nan_and_all_padding_windows(host_kernels):
    x = np.array([[[[1.0, np.nan], [np.nan, 5.0]]]], dtype=np.float32)
    out = np.zeros((1, 1, 2, 2), np.float32)
    arg = np.zeros((1, 1, 2, 2), np.int64)
    # 2x2 windows, stride 2, pad 1: every window holds one real pixel and three -inf pads.
    _call(host_kernels, "maxpool_forward", x, 1, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1,
          *[s // 4 for s in x.strides], float("-inf"), out, arg)
    ref_out, ref_cache = maxpool2d_forward(x, 2, 2, 2, 1)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(arg, ref_cache[1])


class _OneParam:
    """A minimal model for the optimizers: one layer with one parameter."""

    device = "cpu"

    def __init__(self, p, g):
        self.layer = type("L", (), {})()
        self.layer.params, self.layer.grads = {"W": p}, {"W": g}

    def params_and_grads(self):
        yield "0.W", self.layer, "W"


OPTIMIZER_CASES = {
    "sgd_update": (optim.SGD, {"lr": 0.1}, (), lambda o: (o.lr,)),
    "momentum_update": (optim.Momentum, {"lr": 0.1, "momentum": 0.9}, ("v",),
                        lambda o: (o.lr, o.momentum)),
    "nesterov_update": (optim.Nesterov, {"lr": 0.1, "momentum": 0.9}, ("v",),
                        lambda o: (o.lr, o.momentum)),
    "adagrad_update": (optim.AdaGrad, {"lr": 0.1}, ("h",), lambda o: (o.lr, o.eps)),
    "rmsprop_update": (optim.RMSProp, {"lr": 0.01}, ("h",),
                       lambda o: (o.lr, o.decay, 1.0 - o.decay, o.eps)),
    "adam_update": (optim.Adam, {"lr": 0.01}, ("m", "v"),
                    lambda o: (1.0 - o.beta1, 1.0 - o.beta2, o.lr / (1.0 - o.beta1 ** o.t),
                               1.0 / (1.0 - o.beta2 ** o.t) ** 0.5, o.eps)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(OPTIMIZER_CASES))
def test_host_optimizer_kernels_match_the_optimizers(host_kernels, name, dtype):
    cls, kwargs, slots, scalars = OPTIMIZER_CASES[name]
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal(50).astype(dtype)
    grads = [rng.standard_normal(50).astype(dtype) for _ in range(3)]
    model = _OneParam(p0.copy(), grads[0])
    opt = cls(model, **kwargs)
    fused_p = p0.copy()
    fused_state = {slot: np.zeros_like(p0) for slot in slots}
    for g in grads:  # three steps: the state carries over
        model.layer.grads["W"] = g
        opt.step()
        # the C body reads the kernel's inputs in spec order: g, scalars..., then p and state
        _call(host_kernels, name, g, *scalars(opt), fused_p, *fused_state.values())
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(fused_p, model.layer.params["W"], rtol=tol, atol=tol)
    for slot, value in fused_state.items():
        np.testing.assert_allclose(value, opt.state["0.W"][slot], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, classes", [(7, 10), (1, 3), (33, 1)])
def test_host_softmax_cross_entropy_kernels_match_portable(host_kernels, n, classes, dtype):
    from cnn_xp import ops
    rng = np.random.default_rng(5)
    scores = (rng.standard_normal((n, classes)) * 30).astype(dtype)  # large: stability
    labels = rng.integers(0, classes, n).astype(np.int64)
    probs = np.empty_like(scores)
    row_loss = np.empty(n, dtype=dtype)
    _call(host_kernels, "softmax_xent_rows", scores, labels, classes, probs, row_loss)
    loss, want_probs = ops.softmax_cross_entropy(scores, labels)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(probs, want_probs, rtol=tol, atol=tol)
    np.testing.assert_allclose(row_loss.sum() / n, loss, rtol=tol, atol=tol)
    _call(host_kernels, "softmax_xent_grad", labels, classes, 0.5 / n, probs)
    want_grad = ops.cross_entropy_backward(scores, labels, 0.5)
    np.testing.assert_allclose(probs, want_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_relu_backward_and_dropout_kernels_match_the_layers(host_kernels, dtype):
    from cnn_xp.layers import Dropout, ReLU
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3, 5, 5)).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    relu = ReLU()
    out = relu.forward(x)
    dx = np.empty_like(x)
    _call(host_kernels, "relu_backward", dout, out, dx)
    np.testing.assert_array_equal(dx, relu.backward(dout))

    layer = Dropout(0.3, seed=11)
    state = layer.rng_state()
    want = layer.forward(x, train=True)
    layer.set_rng_state(state)
    u = layer.rng.uniform(x.shape, x.dtype)  # the same draws the forward used
    y, mask = np.empty_like(x), np.empty_like(x)
    _call(host_kernels, "dropout_forward", x, u, 0.3, 1.0 / 0.7, y, mask)
    np.testing.assert_array_equal(mask, layer._mask)
    np.testing.assert_array_equal(y, want)


def test_launch_declines_arrays_too_large_for_32_bit_indices():
    class Huge:  # only its size is looked at, before cupy is touched
        size = ck.INDEX_LIMIT + 1

    assert ck._launch("relu_backward", Huge(), Huge(), Huge()) is None
    assert ck._broken is None  # this call falls back; the fast paths stay on
