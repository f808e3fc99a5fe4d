"""cnn_xp.kernels.cpu, the compiled CPU kernels behind the seam.

- Results: naive loops (tests/naive.py) on random geometries (strides, pads, channel counts
  around the vector widths: full and partial SIMD blocks), both dtypes, every memory order,
  ties and NaN in max pooling, the scattered and the full-correlation input gradient; each in
  every variant (baseline, AVX2, AVX-512) this CPU runs.
- The seam's rules: calls the kernels do not serve run the reference and their caches say
  so; ``train=False`` keeps nothing; wrong douts and foreign caches raise.
- The typed boundary: wrong dtypes, shapes, contiguity and buffers one value too small,
  given straight to the extension, raise Python exceptions (in a subprocess, so a crash
  would show as one).
- The build: at install, never at run time. A library planted where the old run-time
  builds were cached is never loaded; no compiler on PATH still runs the kernels; a package
  installed without a working compiler imports, says why in ``status()`` and runs the
  reference; the sdist ships the C sources.
"""
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import naive
import numpy as np
import pytest

from cnn_xp import ops
from cnn_xp.kernels import cpu
from cnn_xp.kernels.cpu import _variant
from cnn_xp.kernels.cpu import conv as cpu_conv
from cnn_xp.kernels.cpu import pool as cpu_pool

ROOT = Path(__file__).resolve().parents[1]
BUILT = _variant.native is not None
NOT_BUILT = f"the CPU kernels' extension is not built here ({_variant.load_error})"
needs_extension = pytest.mark.skipif(not BUILT, reason=NOT_BUILT)
C_COMPILER = shutil.which(os.environ.get("CC", "cc").split()[0]) if os.environ.get("CC", "cc").split() else None


@pytest.fixture(params=_variant.supported() or [None], ids=lambda isa: str(isa))
def isa(request):
    """Each kernel variant this CPU runs, in turn."""
    if request.param is None:
        pytest.skip(NOT_BUILT)
    with _variant.forced(request.param):
        yield request.param


def in_memory(x, order):
    """``x`` (N, C, H, W) as an NCHW-shaped view of memory laid out as ``order``."""
    axes = {"nchw": (0, 1, 2, 3), "nhwc": (0, 2, 3, 1), "cnhw": (1, 0, 2, 3)}[order]
    return np.ascontiguousarray(x.transpose(axes)).transpose([axes.index(a) for a in range(4)])


def is_nhwc_memory(a):
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


def random_conv_case(seed):
    """A random conv geometry: channels around the vector widths (4, 8 and 16 lanes),
    kernels 1-5 (rectangular too), strides 1-3, pads below the kernel; float64."""
    rng = np.random.default_rng(seed)
    kh, kw = (int(k) for k in rng.integers(1, 6, size=2))
    stride = tuple(int(s) for s in rng.integers(1, 4, size=2))
    pad = (int(rng.integers(0, kh)), int(rng.integers(0, kw)))
    c = int(rng.choice([1, 2, 3, 7, 16, 17]))
    oc = int(rng.choice([1, 5, 8, 9, 16, 17, 33]))
    h = int(rng.integers(max(kh - 2 * pad[0], 1), 12))
    w = int(rng.integers(max(kw - 2 * pad[1], 1), 12))
    n = int(rng.integers(1, 4))
    x = rng.standard_normal((n, c, h, w))
    W = rng.standard_normal((oc, c, kh, kw))
    b = rng.standard_normal(oc)
    return x, W, b, stride, pad


@functools.lru_cache(maxsize=None)
def conv_oracle(seed):
    """The random case of ``seed``, a dout for it, and the naive (out, (dx, dW, db))."""
    x, W, b, stride, pad = random_conv_case(seed)
    out = naive.conv2d(x, W, b, stride, pad)
    dout = np.random.default_rng(seed + 1000).standard_normal(out.shape)
    return (x, W, b, stride, pad), dout, out, naive.conv2d_backward(dout, x, W, stride, pad)


# -- convolution against naive loops ------------------------------------------------------

@pytest.mark.parametrize("seed", range(32))
def test_conv_matches_naive_float64(seed, isa):
    (x, W, b, stride, pad), dout, want_out, want_grads = conv_oracle(seed)
    x = in_memory(x, ("nchw", "nhwc", "cnhw")[seed % 3])
    out, cache = cpu.conv2d_forward(x, W, b, stride, pad)
    assert isinstance(cache, cpu_conv.KernelCache) and cache.isa == isa
    assert is_nhwc_memory(out)
    np.testing.assert_allclose(out, want_out, rtol=1e-12, atol=1e-12)
    dout = in_memory(dout, ("nchw", "nhwc")[seed % 2])
    got = cpu.conv2d_backward(dout, cache, need_dx=True)
    for name, g, w in zip(("dx", "dW", "db"), got, want_grads):
        assert g.shape == w.shape and g.dtype == np.float64, name
        np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11, err_msg=name)
    dx, dW, db = cpu.conv2d_backward(dout, cache, need_dx=False)
    assert dx is None
    np.testing.assert_allclose(dW, want_grads[1], rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(db, want_grads[2], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("seed", range(12))
def test_conv_matches_naive_float32(seed, isa):
    (x, W, b, stride, pad), dout, want_out, (dx, dW, db) = conv_oracle(seed)
    f32 = [a.astype(np.float32) for a in (x, W, b, dout)]
    out, cache = cpu.conv2d_forward(*f32[:3], stride, pad)
    assert isinstance(cache, cpu_conv.KernelCache) and out.dtype == np.float32
    np.testing.assert_allclose(out, want_out, rtol=1e-3, atol=1e-3)
    # the oracle's gradients for the float32-rounded inputs
    want = naive.conv2d_backward(f32[3].astype(np.float64), f32[0].astype(np.float64),
                                 f32[1].astype(np.float64), stride, pad)
    for name, g, w in zip(("dx", "dW", "db"), cpu.conv2d_backward(f32[3], cache), want):
        assert g.dtype == np.float32, name
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3, err_msg=name)


@functools.lru_cache(maxsize=None)
def float32_case():
    """A float32 conv with 30 output channels (a partial block in every variant),
    rectangular kernel, stride (1, 2), pad (2, 1), and its naive float64 results."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 14, 13)).astype(np.float32)
    W = rng.standard_normal((30, 6, 5, 3)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    x64, W64 = x.astype(np.float64), W.astype(np.float64)
    out = naive.conv2d(x64, W64, b, (1, 2), (2, 1))
    dout = rng.standard_normal(out.shape).astype(np.float32)
    return x, W, b, out, dout, naive.conv2d_backward(dout.astype(np.float64), x64, W64, (1, 2), (2, 1))


@pytest.mark.parametrize("memory", ["nchw", "nhwc", "cnhw"])
@pytest.mark.parametrize("dout_memory", ["nchw", "nhwc", "cnhw"])
def test_conv_accepts_every_memory_order_float32(memory, dout_memory, isa):
    x, W, b, want_out, dout, want_grads = float32_case()
    out, cache = cpu.conv2d_forward(in_memory(x, memory), W, b, (1, 2), (2, 1))
    assert isinstance(cache, cpu_conv.KernelCache) and out.dtype == np.float32
    assert is_nhwc_memory(out)  # the layout the next layer reads without a copy
    np.testing.assert_allclose(out, want_out, rtol=1e-4, atol=1e-4)
    got = cpu.conv2d_backward(in_memory(dout, dout_memory), cache)
    for g, w in zip(got, want_grads):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("c, kw, stride, pad", [(1, 3, 1, 0), (3, 5, 2, 2), (5, 4, (1, 3), (0, 3)),
                                                (7, 3, 1, 1), (6, 5, 1, 0), (16, 3, 1, 1), (9, 5, 2, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scattered_input_gradient_matches_naive(c, kw, stride, pad, dtype, isa):
    """dx scattered window row by window row (rows of 1 to 6 vectors, with slack); rows
    longer than the extension's limit are refused by it."""
    lanes = _variant.lanes(isa, np.dtype(dtype))
    rng = np.random.default_rng(c * 10 + kw)
    x = rng.standard_normal((3, c, 9, 11))
    W = rng.standard_normal((9, c, 3, kw))
    out = naive.conv2d(x, W, np.zeros(9), stride, pad)
    dout = rng.standard_normal(out.shape)
    d_nhwc = np.ascontiguousarray(dout.transpose(0, 2, 3, 1)).astype(dtype)
    args = (isa, d_nhwc, W.astype(dtype), x.shape, ops.pair(stride), ops.pair(pad))
    if kw * c > _variant.native.MAX_RUN_VECTORS * lanes:
        with pytest.raises(ValueError, match="at most 6 vectors"):
            cpu_conv.input_grad_scattered(*args)
        return
    dx = cpu_conv.input_grad_scattered(*args)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(dx.transpose(0, 3, 1, 2), naive.conv2d_backward(dout, x, W, stride, pad)[0],
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("kernel, stride, pad", [((3, 3), (1, 1), (1, 1)), ((3, 2), (2, 1), (1, 0)),
                                                 ((2, 3), (2, 3), (0, 2))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_full_correlation_input_gradient_matches_naive(kernel, stride, pad, dtype, isa):
    """Window rows longer than the scatter's limit: dx is conv_forward of the stride-spread,
    padded dout with the flipped kernel."""
    lanes = _variant.lanes(isa, np.dtype(dtype))
    kh, kw = kernel
    c = _variant.native.MAX_RUN_VECTORS * lanes // kw + 1  # one value past the limit
    assert kw * c > _variant.native.MAX_RUN_VECTORS * lanes
    rng = np.random.default_rng(c + kw)
    x = rng.standard_normal((2, c, 7, 6))
    W = rng.standard_normal((5, c, kh, kw))
    b = rng.standard_normal(5)
    out, cache = cpu.conv2d_forward(x.astype(dtype), W.astype(dtype), b.astype(dtype), stride, pad)
    assert isinstance(cache, cpu_conv.KernelCache)
    dout = rng.standard_normal(out.shape)
    dx, dW, db = cpu.conv2d_backward(dout.astype(dtype), cache)
    want = naive.conv2d_backward(dout, x, W, stride, pad)
    tol = 1e-11 if dtype == np.float64 else 2e-3
    for name, g, w in zip(("dx", "dW", "db"), (dx, dW, db), want):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("c", [1, 6, 16, 30, 64])
def test_bias_gradient_sums_are_accurate_in_float32(c, isa):
    """db: 10,007 pixels (whole blocks of lcm(C, lanes) values, then a partial one), summed
    with float32 rounding errors near a pairwise sum's."""
    rng = np.random.default_rng(c)
    dout = rng.standard_normal((10007, c, 1, 1)).astype(np.float32) + 3.0
    x = rng.standard_normal((10007, 1, 1, 1)).astype(np.float32)
    _, cache = cpu.conv2d_forward(x, np.ones((c, 1, 1, 1), np.float32), np.zeros(c, np.float32))
    assert isinstance(cache, cpu_conv.KernelCache)
    _, _, db = cpu.conv2d_backward(dout, cache, need_dx=False)
    np.testing.assert_allclose(db, dout.astype(np.float64).sum(axis=(0, 2, 3)), rtol=2e-6)


@pytest.mark.parametrize("oc, k, pad", [(6, 5, 2), (30, 5, 0), (16, 3, 1), (33, 3, 0)])
def test_one_channel_weight_gradients_float32(oc, k, pad, isa):
    """The first layers' short window rows (tiles of several kernel rows), float32."""
    rng = np.random.default_rng(oc)
    x = rng.standard_normal((3, 1, 12, 11))
    W = rng.standard_normal((oc, 1, k, k))
    out, cache = cpu.conv2d_forward(x.astype(np.float32), W.astype(np.float32), np.zeros(oc, np.float32), 1, pad)
    assert isinstance(cache, cpu_conv.KernelCache)
    dout = rng.standard_normal(out.shape)
    _, dW, _ = cpu.conv2d_backward(dout.astype(np.float32), cache, need_dx=False)
    np.testing.assert_allclose(dW, naive.conv2d_backward(dout, x, W, 1, pad)[1], rtol=1e-4, atol=1e-3)


# -- max pooling against an oracle ---------------------------------------------------------

def maxpool_oracle(x, kh, kw, stride, pad):
    """(out, dx for dout = the given function) by NumPy's argmax over each window, which takes
    the first maximum and counts a NaN as the maximum (the first NaN wins): the seam's rule.
    Padding is -inf. Independent of cnn_xp."""
    (sh, sw), (ph, pw) = naive.pair(stride), naive.pair(pad)
    padded = naive.padded(x.astype(np.float64), (ph, pw), value=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    oh, ow = naive.out_size(x.shape[2], x.shape[3], kh, kw, stride, pad)
    windows = windows[:, :, :oh, :ow].reshape(*windows.shape[:2], oh, ow, kh * kw)
    at = windows.argmax(axis=-1)
    out = np.take_along_axis(windows, at[..., None], axis=-1)[..., 0]

    def backward(dout):
        dx = np.zeros(padded.shape)
        n, c = np.indices(at.shape[:2])
        for y in range(oh):
            for z in range(ow):
                i, j = np.divmod(at[:, :, y, z], kw)
                np.add.at(dx, (n, c, y * sh + i, z * sw + j), dout[:, :, y, z])
        return dx[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]]

    return out, backward


@pytest.mark.parametrize("seed", range(24))
def test_maxpool_matches_the_oracle(seed, isa):
    """Random windows, strides and pads (overlapping, tiling, ragged edges); small integers,
    so that most windows hold ties (the first maximum wins); NaN in a third of the cases;
    channel counts of whole and partial vectors; every memory order."""
    rng = np.random.default_rng(seed)
    dtype = (np.float64, np.float32)[seed % 2]
    c = int(rng.choice([1, 6, 16, 30, 33]))
    kh, kw = (int(k) for k in rng.integers(1, 5, size=2))
    stride = tuple(int(s) for s in rng.integers(1, 4, size=2))
    pad = (int(rng.integers(0, kh)), int(rng.integers(0, kw)))
    h, w = (int(v) for v in rng.integers(max(kh, kw), 11, size=2))
    x = rng.integers(-2, 3, size=(2, c, h, w)).astype(dtype)
    if seed % 3 == 0:
        x[0, c // 2, 1, 1] = np.nan
        x[1, 0, h - 1, 0] = np.nan
        x[1, 0, h - 1, 1] = np.nan  # two NaN in some windows: the first one wins
    x = in_memory(x, ("nhwc", "nchw", "cnhw")[seed % 3])
    want_out, want_backward = maxpool_oracle(x, kh, kw, stride, pad)
    out, cache = cpu.maxpool2d_forward(x, kh, kw, stride, pad)
    assert isinstance(cache, cpu_pool.PoolCache) and cache.isa == isa
    assert out.dtype == dtype and is_nhwc_memory(out)
    assert cache.argmax.dtype == cpu_pool.INDEX_DTYPES[np.dtype(dtype)]
    np.testing.assert_array_equal(out, want_out)
    dout = in_memory(rng.standard_normal(out.shape).astype(dtype), ("nchw", "nhwc")[seed % 2])
    dx = cpu.maxpool2d_backward(dout, cache)
    assert dx.dtype == dtype and dx.shape == x.shape and is_nhwc_memory(dx)
    np.testing.assert_allclose(dx, want_backward(dout.astype(np.float64)), rtol=1e-6, atol=1e-6)
    if seed % 3:  # the seeds' naive loops agree where there is no NaN
        naive_out, where = naive.maxpool2d(x.astype(np.float64), kh, kw, stride, pad)
        np.testing.assert_array_equal(out, naive_out)
        np.testing.assert_allclose(dx, naive.maxpool2d_backward(dout.astype(np.float64), x.shape, where, pad),
                                   rtol=1e-6, atol=1e-6)


def test_maxpool_stride_defaults_to_the_window_and_inference_keeps_nothing(isa):
    x = in_memory(np.random.default_rng(0).standard_normal((2, 6, 8, 8)).astype(np.float32), "nhwc")
    out, cache = cpu.maxpool2d_forward(x, 2, 2)
    assert out.shape == (2, 6, 4, 4) and cache.stride == (2, 2)
    inference, no_cache = cpu.maxpool2d_forward(x, 2, 2, train=False)
    assert no_cache is None
    np.testing.assert_array_equal(inference, out)


# -- the seam's rules ------------------------------------------------------------------------

@needs_extension
def test_status_and_details_when_built():
    assert cpu.NAME == "cpu" and cpu.OPS == ("conv2d", "maxpool2d")
    usable, reason = cpu.status()
    info = cpu.details()
    assert info["isa"] == _variant.isa() and info["isas_supported"][0] == "baseline"
    # the extension is the installed package's own file, not anything from a cache folder
    assert Path(info["file"]).parent == Path(cpu.__file__).parent
    if _variant.requested() in ("", *_variant.ISAS):
        assert (usable, reason) == (True, "") and info["isa"] in info["isas_supported"]
        assert info["lanes"] == {"float32": _variant.lanes(info["isa"], np.dtype("float32")),
                                 "float64": _variant.lanes(info["isa"], np.dtype("float64"))}
        assert info["lanes"]["float32"] == 2 * info["lanes"]["float64"]


def test_unserved_calls_run_the_reference_and_their_caches_say_so(isa, monkeypatch):
    rng = np.random.default_rng(4)
    x, W, b = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 2, 2)), rng.standard_normal(4)
    # padding as large as the kernel
    out, cache = cpu.conv2d_forward(x, W, b, 1, 2)
    assert isinstance(cache, cpu_conv.ReferenceCache)
    np.testing.assert_allclose(out, naive.conv2d(x, W, b, 1, 2), rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(out.shape)
    for got, want in zip(cpu.conv2d_backward(dout, cache), naive.conv2d_backward(dout, x, W, 1, 2)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # another dtype, mixed dtypes
    for args in [(x.astype(np.float16), W.astype(np.float16), b.astype(np.float16)),
                 (x.astype(np.float32), W, b)]:
        assert isinstance(cpu.conv2d_forward(*args, 1, 0)[1], cpu_conv.ReferenceCache)
    out16, cache16 = cpu.maxpool2d_forward(x.astype(np.float16), 2, 2)
    assert isinstance(cache16, cpu_conv.ReferenceCache)
    np.testing.assert_array_equal(out16, maxpool_oracle(x.astype(np.float16), 2, 2, 2, 0)[0].astype(np.float16))
    assert cpu.maxpool2d_backward(np.ones_like(out16), cache16).shape == x.shape
    # inference through the reference keeps nothing either
    assert cpu.conv2d_forward(x, W, b, 1, 2, train=False)[1] is None
    # empty arrays go to the reference, whatever it makes of them
    calls = []
    monkeypatch.setattr(ops, "conv2d_forward", lambda *args, **kwargs: calls.append(kwargs) or ("out", "cache"))
    monkeypatch.setattr(ops, "maxpool2d_forward", lambda *args, **kwargs: calls.append(kwargs) or ("out", "cache"))
    assert cpu.conv2d_forward(np.zeros((0, 3, 5, 5)), W, b, 1, 0, train=False)[1] == cpu_conv.ReferenceCache("cache")
    assert cpu.maxpool2d_forward(np.zeros((2, 0, 4, 4)), 2, 2)[1] == cpu_conv.ReferenceCache("cache")
    assert calls == [{"train": False}, {"train": True}]


def test_inference_keeps_nothing(isa):
    x, W, b, stride, pad = random_conv_case(3)
    out, cache = cpu.conv2d_forward(x, W, b, stride, pad, train=False)
    assert cache is None
    np.testing.assert_array_equal(out, cpu.conv2d_forward(x, W, b, stride, pad)[0])


def test_backward_rejects_wrong_douts_and_foreign_caches(isa):
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    W = np.ones((4, 3, 3, 3), np.float32)
    out, cache = cpu.conv2d_forward(x, W, np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="float32"):
        cpu.conv2d_backward(np.ones(out.shape), cache)
    with pytest.raises(ValueError, match="shape"):
        cpu.conv2d_backward(np.ones((2, 4, 3, 3), np.float32), cache)
    with pytest.raises(TypeError, match="cache"):
        cpu.conv2d_backward(np.ones(out.shape, np.float32), ("some", "tuple"))
    p_out, p_cache = cpu.maxpool2d_forward(x, 2, 2)
    with pytest.raises(TypeError, match="float32"):
        cpu.maxpool2d_backward(np.ones(p_out.shape), p_cache)
    with pytest.raises(ValueError, match="shape"):
        cpu.maxpool2d_backward(np.ones((2, 3, 2, 2), np.float32), p_cache)
    with pytest.raises(TypeError, match="cache"):
        cpu.maxpool2d_backward(np.ones(p_out.shape, np.float32), cache)
    with pytest.raises(ValueError, match="fit|kernel"):  # the reference's geometry check
        cpu.conv2d_forward(x, np.ones((4, 3, 9, 9), np.float32), np.zeros(4, np.float32))


def test_threads_share_the_kernels(isa):
    """Batch slices on threads (the GIL is released in the kernels) compute what one thread does."""
    rng = np.random.default_rng(11)
    W = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    slices = [rng.standard_normal((4, 8, 12, 12)).astype(np.float32) for _ in range(4)]

    def step(x):
        out, cache = cpu.conv2d_forward(x, W, b, 1, 1)
        pooled, p_cache = cpu.maxpool2d_forward(out, 2, 2)
        return (pooled, *cpu.conv2d_backward(cpu.maxpool2d_backward(np.ones_like(pooled), p_cache), cache))

    alone = [step(x) for x in slices]
    together = [None] * len(slices)

    def run(i):
        for _ in range(5):
            together[i] = step(slices[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(slices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(together, alone):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


# -- variants and the CPU's floating-point mode ---------------------------------------------

@needs_extension
def test_isa_override_is_capped_and_checked(monkeypatch):
    try:
        monkeypatch.setattr(_variant, "supported", lambda: ("baseline", "avx2"))
        for wanted, chosen in [("", "avx2"), ("avx512", "avx2"), ("AVX2", "avx2"), ("baseline", "baseline")]:
            monkeypatch.setenv(_variant.ENV_ISA, wanted)
            _variant.reset()
            assert (_variant.isa(), cpu.status()) == (chosen, (True, "")), wanted
        monkeypatch.setenv(_variant.ENV_ISA, "avx3")
        _variant.reset()
        usable, reason = cpu.status()
        assert not usable and "CNN_XP_CPU_ISA='avx3'" in reason and "the reference runs" in reason
        assert cpu.details()["lanes"] == {}
        with pytest.raises(ValueError, match="cannot run"):
            with _variant.forced("avx512"):
                pass
    finally:
        monkeypatch.undo()
        _variant.reset()


@needs_extension
def test_the_extension_refuses_a_variant_the_cpu_lacks():
    missing = [name for name in _variant.ISAS if name not in _variant.supported()]
    if not missing:
        pytest.skip("this CPU runs every variant")
    with pytest.raises(ValueError, match="cannot run"):
        _variant.native.lanes(missing[0], 4)


def test_off_x86_64_the_reason_says_so(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    module, reason = _variant._load()
    assert module is None and "x86-64 only" in reason and "aarch64" in reason


@needs_extension
def test_flush_denormals_is_per_thread():
    tiny = np.array([1e-39], dtype=np.float32)  # subnormal in float32
    before = cpu.flush_denormals(True)
    try:
        assert cpu.flush_denormals(True) is True
        assert (tiny * np.float32(1.0))[0] == 0.0  # DAZ/FTZ: NumPy on this thread flushes
        seen = {}
        started = threading.Event()
        go = threading.Event()

        def other():
            started.set()
            go.wait()
            seen["flushed"] = _variant.native.denormals_flushed()
            seen["product"] = float((tiny * np.float32(1.0))[0])

        cpu.flush_denormals(False)
        thread = threading.Thread(target=other)
        thread.start()  # started while this thread did not flush
        started.wait()
        cpu.flush_denormals(True)
        go.set()
        thread.join()
        assert seen == {"flushed": False, "product": pytest.approx(1e-39, rel=1e-3)}
        assert cpu.flush_denormals(False) is True
        assert (tiny * np.float32(1.0))[0] > 0
    finally:
        cpu.flush_denormals(before)
    with pytest.raises(TypeError):
        _variant.native.flush_denormals("yes")


# -- the typed boundary of the extension -------------------------------------------------------

BOUNDARY_SCRIPT = r'''
import json, sys
import numpy as np
from cnn_xp.kernels.cpu import _variant
n_ = _variant.native
isa = sys.argv[1]
f32, f64, i32, i64 = np.float32, np.float64, np.int32, np.int64
L = n_.lanes(isa, 4)

def conv_forward(x=None, wp=None, bias=None, out=None, n=1, h=5, w=5, c=2, kh=3, kw=3, oc=3, oh=3, ow=3, isa=isa):
    x = np.ones((n * h * w * c,), f32) if x is None else x
    wp = np.ones((3 * 3 * 2 * L,), f32) if wp is None else wp
    bias = np.zeros(L, f32) if bias is None else bias
    out = np.empty(1 * 3 * 3 * 3, f32) if out is None else out
    n_.conv_forward(isa, x, n, h, w, c, wp, kh, kw, oc, bias, 1, 1, out, oh, ow)

def weight_grad(x=None, d=None, dw=None, oh=3):
    x = np.ones(50, f32) if x is None else x
    d = np.ones(27, f32) if d is None else d
    dw = np.empty(3 * 6 * 3, f32) if dw is None else dw
    n_.conv_weight_grad(isa, x, 1, 5, 5, 2, d, oh, 3, 3, 3, 3, 1, 1, dw)

def input_grad(d=None, wt=None, dx=None, kw=3, c=2):
    nv = -(-kw * c // L)
    d = np.ones(27, f32) if d is None else d
    wt = np.zeros(3 * 3 * nv * L, f32) if wt is None else wt
    dx = np.empty(5 * 5 * c + nv * L - kw * c, f32) if dx is None else dx
    n_.conv_input_grad(isa, d, 1, 3, 3, 3, wt, 3, kw, c, 1, 1, dx, 5, 5)

SLACK = -(-2 // L) * L - 2   # whole-vector stores past an (..., 2) NHWC array
def pool_forward(x=None, out=None, at=None, oh=2):
    x = np.ones(32, f32) if x is None else x
    out = np.empty(8 + SLACK, f32) if out is None else out
    at = np.empty(8 + SLACK, i32) if at is None else at
    n_.maxpool_forward(isa, x, 1, 4, 4, 2, 2, 2, 2, 2, 0, 0, out, at, oh, 2)

def pool_backward(d=None, at=None, dx=None):
    d = np.ones(8, f32) if d is None else d
    at = np.zeros(8, i32) if at is None else at
    dx = np.empty(32 + SLACK, f32) if dx is None else dx
    n_.maxpool_backward(isa, d, at, 1, 2, 2, 2, 2, 2, 2, 2, 0, 0, dx, 4, 4)

read_only = np.empty(27, f32)
read_only.flags.writeable = False
CASES = {
    "conv_forward: valid": lambda: conv_forward(),
    "conv_forward: float64 x with float32 weights": lambda: conv_forward(x=np.ones(50, f64)),
    "conv_forward: int32 x": lambda: conv_forward(x=np.ones(50, i32)),
    "conv_forward: a list for x": lambda: conv_forward(x=[1.0] * 50),
    "conv_forward: bytes for x": lambda: conv_forward(x=bytes(200)),
    "conv_forward: non-contiguous x": lambda: conv_forward(x=np.ones((5, 10, 2), f32)[:, :, 0].T),
    "conv_forward: x one value short": lambda: conv_forward(x=np.ones(49, f32)),
    "conv_forward: x one value long": lambda: conv_forward(x=np.ones(51, f32)),
    "conv_forward: packed weights one value short": lambda: conv_forward(wp=np.ones(18 * L - 1, f32)),
    "conv_forward: bias short": lambda: conv_forward(bias=np.zeros(L - 1, f32)),
    "conv_forward: out one value short": lambda: conv_forward(out=np.empty(26, f32)),
    "conv_forward: read-only out": lambda: conv_forward(out=read_only),
    "conv_forward: out rows past the image": lambda: conv_forward(oh=4, out=np.empty(36, f32)),
    "conv_forward: zero images": lambda: conv_forward(n=0, x=np.ones(0, f32)),
    "conv_forward: negative kernel": lambda: conv_forward(kh=-3),
    "conv_forward: sizes that overflow": lambda: conv_forward(x=np.ones(50, f32), n=2**30, h=2**30, w=2**30, c=2**30),
    "conv_forward: a geometry past 2**31": lambda: conv_forward(x=np.ones(50, f32), h=2**40),
    "conv_forward: unknown variant": lambda: conv_forward(isa="avx3"),
    "conv_forward: too few arguments": lambda: n_.conv_forward(isa, np.ones(50, f32)),
    "conv_weight_grad: valid": lambda: weight_grad(),
    "conv_weight_grad: dout one value short": lambda: weight_grad(d=np.ones(26, f32)),
    "conv_weight_grad: dw one value short": lambda: weight_grad(dw=np.empty(53, f32)),
    "conv_weight_grad: dw float64": lambda: weight_grad(dw=np.empty(54, f64)),
    "conv_weight_grad: outputs past the image": lambda: weight_grad(oh=4, d=np.ones(36, f32)),
    "conv_input_grad: valid (the least slack)": lambda: input_grad(),
    "conv_input_grad: slack one value short": lambda: input_grad(dx=np.empty(50 + L - 6 - 1, f32)),
    "conv_input_grad: wt one value short": lambda: input_grad(wt=np.zeros(9 * L - 1, f32)),
    "conv_input_grad: window rows past 6 vectors": lambda: input_grad(c=2 * L, kw=4, dx=np.empty(10**5, f32),
                                                                      wt=np.zeros(9 * 8 * L, f32)),
    "channel_sums: valid": lambda: n_.channel_sums(isa, np.ones(30, f32), 10, 3, np.empty(3, f32)),
    "channel_sums: sums one value short": lambda: n_.channel_sums(isa, np.ones(30, f32), 10, 3, np.empty(2, f32)),
    "channel_sums: d int64": lambda: n_.channel_sums(isa, np.ones(30, i64), 10, 3, np.empty(3, f32)),
    "maxpool_forward: valid (the least slack)": lambda: pool_forward(),
    "maxpool_forward: out slack one value short": lambda: pool_forward(out=np.empty(8 + SLACK - 1, f32)),
    "maxpool_forward: argmax slack one value short": lambda: pool_forward(at=np.empty(8 + SLACK - 1, i32)),
    "maxpool_forward: int64 argmax for float32": lambda: pool_forward(at=np.empty(8 + SLACK, i64)),
    "maxpool_forward: float argmax": lambda: pool_forward(at=np.empty(8 + SLACK, f32)),
    "maxpool_forward: output size off the geometry": lambda: pool_forward(oh=3),
    "maxpool_forward: x one value short": lambda: pool_forward(x=np.ones(31, f32)),
    "maxpool_backward: valid (the least slack)": lambda: pool_backward(),
    "maxpool_backward: argmax offsets out of range": lambda: pool_backward(at=np.array([-7, 99, 2**31 - 1, 3, 0, 1, 2, 3], i32)),
    "maxpool_backward: dx slack one value short": lambda: pool_backward(dx=np.empty(32 + SLACK - 1, f32)),
    "maxpool_backward: argmax one value short": lambda: pool_backward(at=np.zeros(7, i32)),
    "maxpool_backward: uint8 argmax": lambda: pool_backward(at=np.zeros(8, np.uint8)),
    "lanes: itemsize 2": lambda: n_.lanes(isa, 2),
}
results = {}
for name, case in CASES.items():
    try:
        case()
        results[name] = "ok"
    except Exception as exc:
        results[name] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(results))
'''

EXPECTED = {  # case -> the exception (or "ok")
    "conv_forward: valid": "ok",
    "conv_forward: float64 x with float32 weights": "TypeError",
    "conv_forward: int32 x": "TypeError",
    "conv_forward: a list for x": "TypeError",
    "conv_forward: bytes for x": "TypeError",
    "conv_forward: non-contiguous x": "ValueError",
    "conv_forward: x one value short": "ValueError",
    "conv_forward: x one value long": "ValueError",
    "conv_forward: packed weights one value short": "ValueError",
    "conv_forward: bias short": "ValueError",
    "conv_forward: out one value short": "ValueError",
    "conv_forward: read-only out": "ValueError",
    "conv_forward: out rows past the image": "ValueError",
    "conv_forward: zero images": "ValueError",
    "conv_forward: negative kernel": "ValueError",
    "conv_forward: sizes that overflow": "ValueError",
    "conv_forward: a geometry past 2**31": "ValueError",
    "conv_forward: unknown variant": "ValueError",
    "conv_forward: too few arguments": "TypeError",
    "conv_weight_grad: valid": "ok",
    "conv_weight_grad: dout one value short": "ValueError",
    "conv_weight_grad: dw one value short": "ValueError",
    "conv_weight_grad: dw float64": "TypeError",
    "conv_weight_grad: outputs past the image": "ValueError",
    "conv_input_grad: valid (the least slack)": "ok",
    "conv_input_grad: slack one value short": "ValueError",
    "conv_input_grad: wt one value short": "ValueError",
    "conv_input_grad: window rows past 6 vectors": "ValueError",
    "channel_sums: valid": "ok",
    "channel_sums: sums one value short": "ValueError",
    "channel_sums: d int64": "TypeError",
    "maxpool_forward: valid (the least slack)": "ok",
    "maxpool_forward: out slack one value short": "ValueError",
    "maxpool_forward: argmax slack one value short": "ValueError",
    "maxpool_forward: int64 argmax for float32": "TypeError",
    "maxpool_forward: float argmax": "TypeError",
    "maxpool_forward: output size off the geometry": "ValueError",
    "maxpool_forward: x one value short": "ValueError",
    "maxpool_backward: valid (the least slack)": "ok",
    "maxpool_backward: argmax offsets out of range": "ok",
    "maxpool_backward: dx slack one value short": "ValueError",
    "maxpool_backward: argmax one value short": "ValueError",
    "maxpool_backward: uint8 argmax": "TypeError",
    "lanes: itemsize 2": "ValueError",
}


def clean_env(**changes):
    """This process's environment without the kernel switches, with ``changes`` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CNN_XP_KERNELS", _variant.ENV_ISA)}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.fixture(scope="module", params=_variant.supported() or [None], ids=lambda isa: str(isa))
def boundary_results(request):
    """The boundary cases run in a subprocess per variant: a crash fails every case."""
    if request.param is None:
        pytest.skip(NOT_BUILT)
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", BOUNDARY_SCRIPT, request.param],
                          capture_output=True, text=True, timeout=120, env=clean_env())
    assert proc.returncode == 0, f"the boundary script died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_typed_boundary(case, boundary_results):
    got = boundary_results[case]
    assert got.split(":")[0] == EXPECTED[case], f"{case}: {got}"


def test_every_boundary_case_has_an_expectation():
    declared = {line.split('"')[1] for line in BOUNDARY_SCRIPT.splitlines() if line.startswith('    "')}
    assert declared == set(EXPECTED)


# -- built at install, never at run time ------------------------------------------------------

RUN_A_STEP = textwrap.dedent('''
    import json, sys
    import numpy as np
    from cnn_xp import dispatch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    W = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = np.zeros(8, np.float32)
    conv = dispatch.implementation("conv2d", "cpu")
    pool = dispatch.implementation("maxpool2d", "cpu")
    out, cache = conv.conv2d_forward(x, W, b, 1, 1)
    pooled, p_cache = pool.maxpool2d_forward(out, 2, 2)
    dx, dW, db = conv.conv2d_backward(pool.maxpool2d_backward(np.ones_like(pooled), p_cache), cache)
    import cnn_xp, cnn_xp.kernels.cpu as cpu
    maps = open("/proc/self/maps").read().splitlines() if sys.platform.startswith("linux") else []
    print(json.dumps({
        "table": dispatch.table("cpu"), "cache": type(cache).__name__, "status": list(cpu.status()),
        "package": cnn_xp.__file__, "out": out.tolist(),
        "libraries": sorted({line.split()[-1] for line in maps if ".so" in line.split()[-1]}),
    }))
''')

MARKER_LIBRARY = r'''
#include <stdio.h>
__attribute__((constructor)) static void planted(void)
{
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("the planted library ran\n", f); fclose(f); }
}
int kernel_lanes(void) { return 16; }
void conv_forward(void) {}
'''


def snapshot(*folders):
    return {str(p) for folder in folders for p in Path(folder).rglob("*")}


@pytest.mark.skipif(C_COMPILER is None, reason="no C compiler to build the planted library")
def test_a_library_planted_in_the_old_cache_folders_is_never_loaded(tmp_path):
    marker = tmp_path / "marker.txt"
    source = tmp_path / "planted.c"
    source.write_text(MARKER_LIBRARY)
    planted = tmp_path / "planted.so"
    subprocess.run([C_COMPILER, "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(planted), str(source)],
                   check=True, capture_output=True, timeout=60)
    home, xdg, tmp, cache = (tmp_path / name for name in ("home", "xdg", "tmp", "cache"))
    uid = os.getuid()
    folders = [home / ".cache" / "cnn_xp", xdg / "cnn_xp", tmp / f"cnn_xp-{uid}", cache]
    names = [f"cpu_kernels_{dtype}_{key}.so" for dtype in ("float32", "float64")
             for key in ("0123456789abcdef0123", "ffffffffffffffffffff")]
    for folder in folders:
        folder.mkdir(parents=True)
        for name in names:
            shutil.copy(planted, folder / name)
    # the control: loading the planted file does leave the marker
    subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(folders[0] / names[0])!r})"],
                   check=True, timeout=60)
    assert marker.read_text() == "the planted library ran\n"
    marker.unlink()
    before = snapshot(home, xdg, tmp, cache)
    env = clean_env(HOME=str(home), XDG_CACHE_HOME=str(xdg), TMPDIR=str(tmp), CNN_XP_KERNEL_CACHE=str(cache))
    proc = subprocess.run([sys.executable, "-c", RUN_A_STEP], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert not marker.exists(), "a planted library ran"
    assert not [lib for lib in report["libraries"] if str(tmp_path) in lib], report["libraries"]
    assert snapshot(home, xdg, tmp, cache) == before, "files were written into the cache or temporary folders"
    if BUILT:
        assert report["cache"] == "KernelCache" and report["table"]["conv2d"] == "cpu"
        native = [lib for lib in report["libraries"] if "_native" in lib]
        assert native and all(Path(lib).parent == Path(cpu.__file__).parent for lib in native), native


@needs_extension
def test_no_compiler_on_path_still_runs_the_kernels(tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    assert shutil.which("cc", path=bin_dir) is None and shutil.which("gcc", path=bin_dir) is None
    env = clean_env(PATH=bin_dir, CC="/nonexistent/cc")
    proc = subprocess.run([sys.executable, "-c", RUN_A_STEP], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["table"]["conv2d"] == "cpu" and report["table"]["maxpool2d"] == "cpu"
    assert report["cache"] == "KernelCache" and report["status"] == [True, ""]
    assert proc.stderr == ""  # no warning either


@needs_extension
def test_a_variant_chosen_by_the_environment(tmp_path):
    code = "from cnn_xp.kernels import cpu; import json; print(json.dumps(cpu.details()))"
    for variant in _variant.supported():
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              env=clean_env(CNN_XP_CPU_ISA=variant), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        assert (info["isa"], info["isa_requested"], info["usable"]) == (variant, variant, True)


SOURCES = ["setup.py", "pyproject.toml", "cnn_xp/kernels/cpu/_native.c", "cnn_xp/kernels/cpu/kernels.h",
           "cnn_xp/kernels/cpu/kernels_body.h",
           *[f"cnn_xp/kernels/cpu/kernels_{isa}_{real}.c" for isa in ("baseline", "avx2", "avx512")
             for real in ("float", "double")]]


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    """A copy of the package's sources (no built extension, no caches), to build from."""
    pytest.importorskip("setuptools", reason="building the package needs setuptools")
    copy = tmp_path_factory.mktemp("source") / "cnn_xp_src"
    copy.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(ROOT / "cnn_xp", copy / "cnn_xp",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info"))
    return copy


def test_installed_without_a_compiler_the_reference_runs(source_copy, tmp_path):
    site = tmp_path / "site"
    env = clean_env(CC="false", CXX="false", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                           "--no-cache-dir", "--target", str(site), str(source_copy)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    package = site / "cnn_xp" / "kernels" / "cpu"
    assert not list(package.glob("_native*.so")), "the extension was built without a compiler?"
    assert (package / "kernels_body.h").exists() and (package / "_native.c").exists()
    proc = subprocess.run([sys.executable, "-c", RUN_A_STEP], capture_output=True, text=True, timeout=120,
                          env=clean_env(PYTHONPATH=str(site)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert Path(report["package"]).is_relative_to(site)
    assert report["status"][0] is False
    assert "installed without its compiled CPU kernels" in report["status"][1]
    assert report["table"]["conv2d"] == "reference" and report["table"]["maxpool2d"] == "reference"
    assert report["cache"] != "KernelCache"
    assert proc.stderr == ""  # said by doctor, not warned on every run
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    W = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(report["out"], naive.conv2d(x, W, np.zeros(8), 1, 1), rtol=1e-4, atol=1e-4)


def test_the_sdist_ships_the_c_sources(source_copy, tmp_path):
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=source_copy, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    (archive,) = tmp_path.glob("cnn_xp-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    missing = [name for name in SOURCES if name not in names]
    assert not missing, missing
    assert not [name for name in names if name.endswith(".so")]
