"""The compiled CPU convolution kernels (cnn_xp/ops/cpu_kernels.c): naive results on random
shapes, strides, pads and channel counts (full and partial SIMD channel blocks), in both
dtypes and every memory order; the layer's finite-difference gradients through them; and
the build story: the cache, no compiler, a failing compile, the off switch."""
import ctypes
import functools
import os
import shutil

import naive
import numpy as np
import pytest

from cnn_xp import gradcheck
from cnn_xp.layers import Conv2D
from cnn_xp.ops import conv as conv_ops
from cnn_xp.ops import cpu_kernels
from cnn_xp.ops import pool as pool_ops

HAVE_COMPILER = shutil.which(os.environ.get("CC", "cc").split()[0]) is not None
needs_compiler = pytest.mark.skipif(not HAVE_COMPILER, reason="no C compiler (cc) on this machine")


@pytest.fixture
def kernels_on(monkeypatch):
    """The kernels switched on (built once per test run, see conftest.py)."""
    monkeypatch.delenv(cpu_kernels.ENV_DISABLE, raising=False)
    if cpu_kernels.status()["enabled"] is False:
        cpu_kernels.reset()


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """Kernels built into an empty cache folder, forgotten again afterwards."""
    monkeypatch.setenv(cpu_kernels.ENV_CACHE, str(tmp_path / "kernels"))
    monkeypatch.delenv(cpu_kernels.ENV_DISABLE, raising=False)
    cpu_kernels.reset()
    yield tmp_path / "kernels"
    cpu_kernels.reset()


def _in_memory(x, order):
    """``x`` (N, C, H, W) as an NCHW view of memory laid out as ``order``."""
    axes = {"nchw": (0, 1, 2, 3), "nhwc": (0, 2, 3, 1), "cnhw": (1, 0, 2, 3)}[order]
    return np.ascontiguousarray(x.transpose(axes)).transpose([axes.index(a) for a in range(4)])


def _random_case(seed):
    """A random conv geometry: channels around the SIMD block sizes (8 and 16 lanes),
    kernels 1-5 (rectangular too), strides 1-3, pads below the kernel."""
    rng = np.random.default_rng(seed)
    kh, kw = rng.integers(1, 6, size=2)
    sh, sw = rng.integers(1, 4, size=2)
    ph, pw = rng.integers(0, kh), rng.integers(0, kw)
    c = int(rng.choice([1, 2, 3, 7, 16, 17]))
    oc = int(rng.choice([1, 5, 8, 9, 16, 17, 33]))
    h = int(rng.integers(max(kh - 2 * ph, 1), 12))
    w = int(rng.integers(max(kw - 2 * pw, 1), 12))
    n = int(rng.integers(1, 4))
    x = rng.standard_normal((n, c, h, w))
    W = rng.standard_normal((oc, c, kh, kw))
    b = rng.standard_normal(oc)
    return x, W, b, (int(sh), int(sw)), (int(ph), int(pw))


@needs_compiler
@pytest.mark.parametrize("seed", range(40))
def test_kernels_match_naive_float64(seed, kernels_on):
    x, W, b, stride, pad = _random_case(seed)
    out, cache = conv_ops.conv2d_forward(x, W, b, stride, pad)
    assert cache[4] == "compiled"
    np.testing.assert_allclose(out, naive.conv2d(x, W, b, stride, pad), rtol=1e-12, atol=1e-12)
    dout = np.random.default_rng(seed + 1000).standard_normal(out.shape)
    want = naive.conv2d_backward(dout, x, W, stride, pad)
    got = conv_ops.conv2d_backward(dout, cache, need_dx=True)
    for name, g, w in zip(("dx", "dW", "db"), got, want):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11, err_msg=name)
    dx, dW, _ = conv_ops.conv2d_backward(dout, cache, need_dx=False)
    assert dx is None
    np.testing.assert_allclose(dW, want[1], rtol=1e-11, atol=1e-11)


@functools.lru_cache(maxsize=None)
def _float32_case():
    """A float32 conv with 30 output channels (a partial block of 16 lanes), rectangular
    kernel, stride (1, 2), pad (2, 1), and its naive float64 results."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 14, 13)).astype(np.float32)
    W = rng.standard_normal((30, 6, 5, 3)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    x64, W64 = x.astype(np.float64), W.astype(np.float64)
    out = naive.conv2d(x64, W64, b, (1, 2), (2, 1))
    dout = rng.standard_normal(out.shape).astype(np.float32)
    return x, W, b, out, dout, naive.conv2d_backward(dout.astype(np.float64), x64, W64, (1, 2), (2, 1))


@needs_compiler
@pytest.mark.parametrize("memory", ["nchw", "nhwc", "cnhw"])
@pytest.mark.parametrize("dout_memory", ["nchw", "nhwc"])
def test_kernels_accept_every_memory_order_float32(memory, dout_memory, kernels_on):
    x, W, b, want_out, dout, want_grads = _float32_case()
    out, cache = conv_ops.conv2d_forward(_in_memory(x, memory), W, b, (1, 2), (2, 1))
    assert cache[4] == "compiled" and out.dtype == np.float32
    # the output is an NCHW view of NHWC memory, the layout the next layer reads for free
    assert out.transpose(0, 2, 3, 1).flags.c_contiguous
    np.testing.assert_allclose(out, want_out, rtol=1e-4, atol=1e-4)
    got = conv_ops.conv2d_backward(_in_memory(dout, dout_memory), cache)
    for g, w in zip(got, want_grads):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-3)


@needs_compiler
def test_conv_layer_gradients_through_the_kernels(kernels_on):
    rng = np.random.default_rng(3)
    layer = Conv2D(3, 17, (3, 2), stride=(2, 1), pad=1, rng=0, dtype="float64")
    layer.params["b"] = rng.standard_normal(17)
    x = rng.standard_normal((2, 3, 7, 6))
    layer.forward(x)
    assert layer._cache[4] == "compiled"
    errors = gradcheck.check_layer(layer, x, seed=0)
    assert max(errors.values()) < 1e-7, errors


@needs_compiler
def test_built_once_then_loaded_from_the_cache(fresh_cache):
    x, W, b, stride, pad = _random_case(1)
    conv_ops.conv2d_forward(x, W, b, stride, pad)
    files = sorted(fresh_cache.glob("cpu_kernels_float64_*.so"))
    assert len(files) == 1 and not list(fresh_cache.glob("*.tmp*"))
    built = files[0].stat().st_mtime_ns
    cpu_kernels.reset()  # a new process: the library is loaded, not rebuilt
    _, cache = conv_ops.conv2d_forward(x, W, b, stride, pad)
    assert cache[4] == "compiled" and files[0].stat().st_mtime_ns == built
    status = cpu_kernels.status()
    assert status["enabled"] and str(files[0]) in status["files"]
    assert isinstance(cpu_kernels._library("float64"), ctypes.CDLL)


@pytest.mark.parametrize("compiler", ["/nonexistent/cc", "cc --no-such-option-xyz"])
def test_no_or_broken_compiler_falls_back_to_numpy(compiler, fresh_cache, monkeypatch):
    if compiler.startswith("cc") and not HAVE_COMPILER:
        pytest.skip("no C compiler (cc) on this machine")
    monkeypatch.setenv("CC", compiler)
    x, W, b, stride, pad = _random_case(2)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        out, cache = conv_ops.conv2d_forward(x, W, b, stride, pad)
    assert cache[4] in ("channel_major", "channels_last")
    np.testing.assert_allclose(out, naive.conv2d(x, W, b, stride, pad), rtol=1e-10, atol=1e-10)
    status = cpu_kernels.status()
    assert not status["enabled"] and "could not be built" in status["reason"]
    assert not cpu_kernels.applies(x)
    assert not list(fresh_cache.glob("*.so"))  # nothing half-written is left behind


def test_off_switch_and_what_applies(fresh_cache, monkeypatch):
    x = np.zeros((1, 1, 4, 4))
    monkeypatch.setenv(cpu_kernels.ENV_DISABLE, "1")
    assert not cpu_kernels.applies(x)
    assert cpu_kernels.status() == {"enabled": False, "reason": "CNN_XP_NO_CPU_KERNELS is set"}
    _, cache = conv_ops.conv2d_forward(x, np.ones((2, 1, 3, 3)), np.zeros(2))
    assert cache[4] != "compiled"
    monkeypatch.delenv(cpu_kernels.ENV_DISABLE)
    assert not cpu_kernels.applies(x.astype(np.int64))  # other dtypes
    assert not cpu_kernels.applies(x, x.astype(np.float32))  # mixed dtypes
    assert not cpu_kernels.fits(x, np.ones((2, 1, 3, 3)), 3)  # padding as large as the kernel


@needs_compiler
def test_padding_as_large_as_the_kernel_runs_the_portable_path(kernels_on):
    rng = np.random.default_rng(4)
    x, W, b = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 2, 2)), rng.standard_normal(4)
    out, cache = conv_ops.conv2d_forward(x, W, b, 1, 2)
    assert cache[4] != "compiled"
    np.testing.assert_allclose(out, naive.conv2d(x, W, b, 1, 2), rtol=1e-10, atol=1e-10)


@needs_compiler
@pytest.mark.parametrize("seed", range(24))
def test_maxpool_kernels_match_naive_and_the_portable_path(seed, kernels_on, monkeypatch):
    """Random windows, strides and pads (overlapping, tiling, ragged edges); small integers,
    so that most windows hold ties (the first maximum wins); NHWC memory, as conv gives."""
    rng = np.random.default_rng(seed)
    dtype = (np.float64, np.float32)[seed % 2]
    c = int(rng.choice([1, 6, 16, 30, 33]))  # whole vectors, partial ones and both
    kh, kw = (int(k) for k in rng.integers(1, 5, size=2))
    stride = tuple(int(s) for s in rng.integers(1, 4, size=2))
    pad = (int(rng.integers(0, kh)), int(rng.integers(0, kw)))
    h, w = (int(v) for v in rng.integers(max(kh, kw), 11, size=2))
    x = _in_memory(rng.integers(-2, 3, size=(2, c, h, w)).astype(dtype), "nhwc")
    has_nan = seed % 3 == 0
    if has_nan:
        x[0, 1, 0, 0] = np.nan  # the maximum of its windows (the naive oracle knows no NaN)
    out, cache = pool_ops.maxpool2d_forward(x, kh, kw, stride, pad)
    assert cache[1].dtype == cpu_kernels.INDEX_DTYPES[np.dtype(dtype).name]
    assert out.transpose(0, 2, 3, 1).flags.c_contiguous
    dout = _in_memory(rng.standard_normal(out.shape).astype(dtype), "nhwc")
    dx = pool_ops.maxpool2d_backward(dout, cache)
    if not has_nan:
        want, where = naive.maxpool2d(x.astype(np.float64), kh, kw, stride, pad)
        np.testing.assert_array_equal(out, want)
        np.testing.assert_allclose(dx, naive.maxpool2d_backward(dout.astype(np.float64), x.shape, where, pad),
                                   rtol=1e-6, atol=1e-6)
    monkeypatch.setenv(cpu_kernels.ENV_DISABLE, "1")
    portable_out, portable_cache = pool_ops.maxpool2d_forward(x, kh, kw, stride, pad)
    np.testing.assert_array_equal(out, portable_out)
    np.testing.assert_array_equal(cache[1], portable_cache[1])  # the same argmax offsets
    # overlapping windows: the same sums, added in another order
    same = functools.partial(np.testing.assert_allclose, dx, rtol=1e-6, atol=1e-6)
    same(pool_ops.maxpool2d_backward(dout, portable_cache))
    # an argmax of the kernels is understood by the portable backward, and the reverse
    same(pool_ops.maxpool2d_backward(dout, cache))
    monkeypatch.delenv(cpu_kernels.ENV_DISABLE)
    same(pool_ops.maxpool2d_backward(dout, portable_cache))


@needs_compiler
def test_maxpool_kernels_apply_to_nhwc_memory(kernels_on):
    x = np.zeros((2, 6, 4, 4), dtype=np.float32)
    assert pool_ops.maxpool2d_forward(x, 2, 2)[1][1].dtype == np.uint8  # NCHW memory: portable
    assert pool_ops.maxpool2d_forward(_in_memory(x, "nhwc"), 2, 2)[1][1].dtype == np.int32
    assert pool_ops.maxpool2d_forward(_in_memory(x.astype(np.float64), "nhwc"), 2, 2)[1][1].dtype == np.int64
    inference, no_cache = pool_ops.maxpool2d_forward(_in_memory(x, "nhwc"), 2, 2, with_argmax=False)
    assert no_cache is None and inference.shape == (2, 6, 2, 2)


@needs_compiler
@pytest.mark.parametrize("c, kw, stride, pad", [(1, 3, 1, 0), (3, 5, 2, 2), (5, 4, (1, 3), (0, 3)),
                                                (7, 3, 1, 1), (6, 5, 1, 0), (16, 3, 1, 1), (9, 5, 2, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scattered_input_gradient_matches_naive(c, kw, stride, pad, dtype, kernels_on):
    """dx scattered window row by window row (rows of 1 to 6 vectors, with slack)."""
    lib = cpu_kernels._library(np.dtype(dtype).name)
    assert kw * c <= cpu_kernels.SCATTER_MAX_VECTORS * lib.lanes
    rng = np.random.default_rng(c * 10 + kw)
    x = rng.standard_normal((3, c, 9, 11))
    W = rng.standard_normal((9, c, 3, kw))
    out = naive.conv2d(x, W, np.zeros(9), stride, pad)
    dout = rng.standard_normal(out.shape)
    want_dx = naive.conv2d_backward(dout, x, W, stride, pad)[0]
    d_nhwc = np.ascontiguousarray(dout.transpose(0, 2, 3, 1)).astype(dtype)
    dx = cpu_kernels._input_grad_scattered(lib, d_nhwc, W.astype(dtype), x.shape,
                                           conv_ops.pair(stride), conv_ops.pair(pad))
    tol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(dx.transpose(0, 3, 1, 2), want_dx, rtol=tol, atol=tol)


@needs_compiler
@pytest.mark.parametrize("c", [1, 6, 16, 30, 64])
def test_bias_gradient_sums_are_accurate_in_float32(c, kernels_on):
    """db: 10,007 pixels (whole blocks of lcm(C, lanes) values, then a partial one), summed
    with float32 rounding errors near a pairwise sum's."""
    rng = np.random.default_rng(c)
    dout = rng.standard_normal((10007, c, 1, 1)).astype(np.float32) + 3.0
    x = rng.standard_normal((10007, 1, 1, 1)).astype(np.float32)
    W = np.ones((c, 1, 1, 1), dtype=np.float32)
    _, cache = conv_ops.conv2d_forward(x, W, np.zeros(c, np.float32))
    assert cache[4] == "compiled"
    _, _, db = conv_ops.conv2d_backward(dout, cache, need_dx=False)
    np.testing.assert_allclose(db, dout.astype(np.float64).sum(axis=(0, 2, 3)), rtol=2e-6)


@needs_compiler
def test_switching_the_kernels_off_between_forward_and_backward(kernels_on, monkeypatch):
    x, W, b, stride, pad = _random_case(5)
    out, cache = conv_ops.conv2d_forward(x, W, b, stride, pad)
    assert cache[4] == "compiled"
    monkeypatch.setenv(cpu_kernels.ENV_DISABLE, "1")
    dout = np.ones(out.shape)
    for got, want in zip(conv_ops.conv2d_backward(dout, cache), naive.conv2d_backward(dout, x, W, stride, pad)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


@needs_compiler
def test_kernels_built_without_march_native(tmp_path, monkeypatch):
    """The build without -march=native (the fallback flags; 32-byte vectors, 12 accumulators)
    computes the same: conv forward and backward, max pooling, in both dtypes."""
    monkeypatch.setattr(cpu_kernels, "FLAG_SETS", (["-O3", "-ffp-contract=fast"],))
    monkeypatch.setenv(cpu_kernels.ENV_CACHE, str(tmp_path / "kernels"))
    monkeypatch.delenv(cpu_kernels.ENV_DISABLE, raising=False)
    cpu_kernels.reset()
    try:
        assert cpu_kernels._library("float32").lanes == 8 and cpu_kernels._library("float64").lanes == 4
        for seed in range(12):
            x, W, b, stride, pad = _random_case(seed)
            dtype = (np.float64, np.float32)[seed % 2]
            tol = 1e-11 if dtype == np.float64 else 1e-3
            out, cache = conv_ops.conv2d_forward(x.astype(dtype), W.astype(dtype), b.astype(dtype), stride, pad)
            assert cache[4] == "compiled"
            np.testing.assert_allclose(out, naive.conv2d(x, W, b, stride, pad), rtol=tol, atol=tol)
            dout = np.random.default_rng(seed).standard_normal(out.shape)
            got = conv_ops.conv2d_backward(dout.astype(dtype), cache)
            for g, w in zip(got, naive.conv2d_backward(dout, x, W, stride, pad)):
                np.testing.assert_allclose(g, w, rtol=tol, atol=tol * 10)
            maps = np.random.default_rng(seed).integers(-3, 4, size=(2, x.shape[1], 7, 6)).astype(dtype)
            p_out, p_cache = pool_ops.maxpool2d_forward(_in_memory(maps, "nhwc"), 3, 2, 2, 1)
            assert p_cache[1].dtype == cpu_kernels.INDEX_DTYPES[np.dtype(dtype).name]
            want, where = naive.maxpool2d(maps.astype(np.float64), 3, 2, 2, 1)
            np.testing.assert_array_equal(p_out, want)
            p_dout = np.ones(p_out.shape, dtype=dtype)
            np.testing.assert_array_equal(pool_ops.maxpool2d_backward(p_dout, p_cache),
                                          naive.maxpool2d_backward(p_dout.astype(np.float64), maps.shape, where, 1))
    finally:
        cpu_kernels.reset()


@needs_compiler
@pytest.mark.parametrize("oc, k, pad", [(6, 5, 2), (30, 5, 0), (16, 3, 1), (33, 3, 0)])
def test_one_channel_weight_gradients_float32(oc, k, pad, kernels_on):
    """The first layers' short window rows (tiles of several kernel rows), float32."""
    rng = np.random.default_rng(oc)
    x = rng.standard_normal((3, 1, 12, 11))
    W = rng.standard_normal((oc, 1, k, k))
    out, cache = conv_ops.conv2d_forward(x.astype(np.float32), W.astype(np.float32), np.zeros(oc, np.float32), 1, pad)
    assert cache[4] == "compiled"
    dout = rng.standard_normal(out.shape)
    _, dW, _ = conv_ops.conv2d_backward(dout.astype(np.float32), cache, need_dx=False)
    np.testing.assert_allclose(dW, naive.conv2d_backward(dout, x, W, 1, pad)[1], rtol=1e-4, atol=1e-3)
