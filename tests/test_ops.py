"""cnn_xp.ops against the naive loop references in tests/naive.py (float64, random configurations)."""
import math

import numpy as np
import pytest

import naive
from cnn_xp import ops

N_CONFIGS = 16


def _stride_or_pad(a, b):
    """The contract accepts an int or an (h, w) pair: use the int form when both agree."""
    return a if a == b else (a, b)


def random_config(seed, pool=False):
    """A random non-empty sliding-window configuration with H != W.

    For pooling the padding is at most half the kernel, so no window lies entirely in padding.
    """
    rng = np.random.default_rng(seed)
    while True:
        n, c = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        if pool:
            ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
        else:
            ph, pw = int(rng.integers(0, 3)), int(rng.integers(0, 3))
        h, w = int(rng.integers(2, 10)), int(rng.integers(2, 10))
        if h == w:
            continue
        oh, ow = naive.out_size(h, w, kh, kw, (sh, sw), (ph, pw))
        if oh >= 1 and ow >= 1:
            return dict(n=n, c=c, h=h, w=w, kh=kh, kw=kw,
                        stride=_stride_or_pad(sh, sw), pad=_stride_or_pad(ph, pw), rng=rng)


def cfg_id(seed):
    cfg = random_config(seed)
    return "s{}-N{n}C{c}H{h}W{w}k{kh}x{kw}st{stride}p{pad}".format(seed, **cfg).replace(" ", "")


SEEDS = list(range(100, 100 + N_CONFIGS))
POOL_SEEDS = list(range(200, 200 + N_CONFIGS))


def test_configs_cover_the_ranges():
    """The random configurations really exercise rectangular kernels, strides, pads."""
    cfgs = [random_config(s) for s in SEEDS]
    assert any(c["kh"] != c["kw"] for c in cfgs)
    assert any(naive.pair(c["stride"]) != (1, 1) for c in cfgs)
    assert any(naive.pair(c["pad"]) != (0, 0) for c in cfgs)
    assert any(isinstance(c["stride"], tuple) or isinstance(c["pad"], tuple) for c in cfgs)
    pcfgs = [random_config(s, pool=True) for s in POOL_SEEDS]
    assert any(naive.pair(c["pad"]) != (0, 0) for c in pcfgs)
    assert any(naive.pair(c["stride"])[0] < c["kh"] for c in pcfgs)   # overlapping windows


# ---------------------------------------------------------------- im2col / col2im

@pytest.mark.parametrize("seed", SEEDS, ids=cfg_id)
def test_im2col_matches_naive(seed):
    c = random_config(seed)
    x = c["rng"].standard_normal((c["n"], c["c"], c["h"], c["w"]))
    x_before = x.copy()
    col = ops.im2col(x, c["kh"], c["kw"], stride=c["stride"], pad=c["pad"])
    ref = naive.im2col(x, c["kh"], c["kw"], c["stride"], c["pad"])
    assert col.shape == ref.shape
    np.testing.assert_array_equal(np.asarray(col), ref)
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("seed", SEEDS, ids=cfg_id)
def test_col2im_matches_naive(seed):
    c = random_config(seed)
    shape = (c["n"], c["c"], c["h"], c["w"])
    oh, ow = naive.out_size(c["h"], c["w"], c["kh"], c["kw"], c["stride"], c["pad"])
    col = c["rng"].standard_normal((c["n"] * oh * ow, c["c"] * c["kh"] * c["kw"]))
    dx = ops.col2im(col, shape, c["kh"], c["kw"], stride=c["stride"], pad=c["pad"])
    assert dx.shape == shape
    np.testing.assert_allclose(dx, naive.col2im(col, shape, c["kh"], c["kw"], c["stride"], c["pad"]),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS, ids=cfg_id)
def test_im2col_col2im_adjoint(seed):
    c = random_config(seed)
    shape = (c["n"], c["c"], c["h"], c["w"])
    x = c["rng"].standard_normal(shape)
    oh, ow = naive.out_size(c["h"], c["w"], c["kh"], c["kw"], c["stride"], c["pad"])
    y = c["rng"].standard_normal((c["n"] * oh * ow, c["c"] * c["kh"] * c["kw"]))
    lhs = float(np.sum(ops.col2im(y, shape, c["kh"], c["kw"], stride=c["stride"], pad=c["pad"]) * x))
    rhs = float(np.sum(y * ops.im2col(x, c["kh"], c["kw"], stride=c["stride"], pad=c["pad"])))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def test_im2col_row_and_column_order():
    """Rows run (n, oh, ow), columns run (c, i, j): check one entry by hand."""
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    col = np.asarray(ops.im2col(x, 2, 3, stride=1, pad=0))   # OH=3, OW=3
    # row of (n=1, oh=2, ow=1); column of (c=2, i=1, j=2)
    assert col[(1 * 3 + 2) * 3 + 1, (2 * 2 + 1) * 3 + 2] == x[1, 2, 2 + 1, 1 + 2]


# ---------------------------------------------------------------- conv2d

def _conv_case(seed):
    c = random_config(seed)
    rng = c["rng"]
    oc = int(rng.integers(1, 5))
    x = rng.standard_normal((c["n"], c["c"], c["h"], c["w"]))
    W = rng.standard_normal((oc, c["c"], c["kh"], c["kw"]))
    b = rng.standard_normal(oc)
    return c, x, W, b


@pytest.mark.parametrize("seed", SEEDS, ids=cfg_id)
def test_conv2d_forward_matches_naive(seed):
    c, x, W, b = _conv_case(seed)
    out, _ = ops.conv2d_forward(x, W, b, stride=c["stride"], pad=c["pad"])
    ref = naive.conv2d(x, W, b, c["stride"], c["pad"])
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", SEEDS, ids=cfg_id)
def test_conv2d_backward_matches_naive(seed):
    c, x, W, b = _conv_case(seed)
    saved = (x.copy(), W.copy(), b.copy())
    out, cache = ops.conv2d_forward(x, W, b, stride=c["stride"], pad=c["pad"])
    dout = c["rng"].standard_normal(out.shape)
    dout_before = dout.copy()
    dx, dW, db = ops.conv2d_backward(dout, cache)
    rdx, rdW, rdb = naive.conv2d_backward(dout, x, W, c["stride"], c["pad"])
    assert dx.shape == x.shape and dW.shape == W.shape and db.shape == b.shape
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dW, rdW, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, rdb, rtol=1e-10, atol=1e-10)
    # inputs are not modified
    for before, now in zip(saved + (dout_before,), (x, W, b, dout)):
        np.testing.assert_array_equal(before, now)


@pytest.mark.parametrize("seed", SEEDS[:4], ids=cfg_id)
def test_conv2d_backward_without_dx(seed):
    c, x, W, b = _conv_case(seed)
    out, cache = ops.conv2d_forward(x, W, b, stride=c["stride"], pad=c["pad"])
    dout = c["rng"].standard_normal(out.shape)
    dx, dW, db = ops.conv2d_backward(dout, cache, need_dx=False)
    assert dx is None
    _, rdW, rdb = naive.conv2d_backward(dout, x, W, c["stride"], c["pad"])
    np.testing.assert_allclose(dW, rdW, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, rdb, rtol=1e-10, atol=1e-10)


def test_conv2d_backward_accepts_noncontiguous_dout():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 6, 7))
    W = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    out, cache = ops.conv2d_forward(x, W, b, stride=(2, 1), pad=(1, 0))
    big = rng.standard_normal((out.shape[0], out.shape[2], out.shape[3], out.shape[1]))
    dout = big.transpose(0, 3, 1, 2)     # a non-contiguous view, as an upstream layer may give
    dx, dW, db = ops.conv2d_backward(dout, cache)
    rdx, rdW, rdb = naive.conv2d_backward(np.ascontiguousarray(dout), x, W, (2, 1), (1, 0))
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dW, rdW, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, rdb, rtol=1e-10, atol=1e-10)


def test_conv2d_dx_is_full_correlation_with_rotated_kernel():
    """Stride 1, no pad: dX = full correlation of dOut with the kernel rotated 180 degrees."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 5))
    W = rng.standard_normal((4, 3, 3, 2))
    out, cache = ops.conv2d_forward(x, W, np.zeros(4))
    dout = rng.standard_normal(out.shape)
    dx, _, _ = ops.conv2d_backward(dout, cache)
    W_rot = W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).copy()    # (C, OC, kh, kw)
    full, _ = ops.conv2d_forward(dout, W_rot, np.zeros(3), stride=1, pad=(2, 1))
    np.testing.assert_allclose(dx, full, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- pooling

def _pool_case(seed):
    c = random_config(seed, pool=True)
    x = c["rng"].standard_normal((c["n"], c["c"], c["h"], c["w"]))
    return c, x


@pytest.mark.parametrize("seed", POOL_SEEDS, ids=lambda s: f"s{s}")
def test_maxpool_matches_naive(seed):
    c, x = _pool_case(seed)
    x_before = x.copy()
    out, cache = ops.maxpool2d_forward(x, c["kh"], c["kw"], c["stride"], c["pad"])
    ref, where = naive.maxpool2d(x, c["kh"], c["kw"], c["stride"], c["pad"])
    assert out.shape == ref.shape
    np.testing.assert_array_equal(np.asarray(out), ref)
    inference, no_cache = ops.maxpool2d_forward(x, c["kh"], c["kw"], c["stride"], c["pad"], train=False)
    np.testing.assert_array_equal(np.asarray(inference), ref)
    assert no_cache is None
    dout = c["rng"].standard_normal(out.shape)
    dx = ops.maxpool2d_backward(dout, cache)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, naive.maxpool2d_backward(dout, x.shape, where, c["pad"]),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("seed", POOL_SEEDS[:6], ids=lambda s: f"s{s}")
def test_maxpool_ties_go_to_first_max(seed):
    """Small integer inputs have many ties: the gradient must go to the first max (row-major)."""
    c, _ = _pool_case(seed)
    x = c["rng"].integers(0, 2, size=(c["n"], c["c"], c["h"], c["w"])).astype(np.float64)
    out, cache = ops.maxpool2d_forward(x, c["kh"], c["kw"], c["stride"], c["pad"])
    ref, where = naive.maxpool2d(x, c["kh"], c["kw"], c["stride"], c["pad"])
    np.testing.assert_array_equal(np.asarray(out), ref)
    dout = c["rng"].standard_normal(out.shape)
    np.testing.assert_allclose(ops.maxpool2d_backward(dout, cache),
                               naive.maxpool2d_backward(dout, x.shape, where, c["pad"]),
                               rtol=1e-12, atol=1e-12)


def test_maxpool_all_equal_window_routes_to_top_left():
    x = np.ones((1, 1, 2, 2))
    out, cache = ops.maxpool2d_forward(x, 2, 2, 2, 0)
    dx = ops.maxpool2d_backward(np.full((1, 1, 1, 1), 5.0), cache)
    np.testing.assert_array_equal(dx, [[[[5.0, 0.0], [0.0, 0.0]]]])


def test_maxpool_pads_with_minus_infinity():
    """All-negative input with padding: zero padding would wrongly return 0."""
    x = -1.0 - np.arange(12, dtype=np.float64).reshape(1, 1, 3, 4)
    out, _ = ops.maxpool2d_forward(x, 2, 2, 2, 1)
    np.testing.assert_array_equal(np.asarray(out), [[[[-1.0, -2.0, -4.0], [-5.0, -6.0, -8.0]]]])


def test_maxpool_window_of_more_than_256_offsets():
    """A window of more offsets than a byte can count (272) routes to its first maximum."""
    rng = np.random.default_rng(12)
    x = rng.integers(0, 3, size=(2, 2, 19, 18)).astype(np.float64)  # ties in every window
    out, cache = ops.maxpool2d_forward(x, 17, 16, 1, 0)
    ref, where = naive.maxpool2d(x, 17, 16, 1, 0)
    np.testing.assert_array_equal(np.asarray(out), ref)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(ops.maxpool2d_backward(dout, cache),
                               naive.maxpool2d_backward(dout, x.shape, where, 0), atol=1e-12)


def test_maxpool_overlapping_3x3_stride_2():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 7, 9))
    out, cache = ops.maxpool2d_forward(x, 3, 3, 2, 0)
    ref, where = naive.maxpool2d(x, 3, 3, 2, 0)
    np.testing.assert_array_equal(np.asarray(out), ref)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(ops.maxpool2d_backward(dout, cache),
                               naive.maxpool2d_backward(dout, x.shape, where, 0), atol=1e-12)


@pytest.mark.parametrize("seed", POOL_SEEDS, ids=lambda s: f"s{s}")
def test_avgpool_matches_naive(seed):
    c, x = _pool_case(seed)
    out, cache = ops.avgpool2d_forward(x, c["kh"], c["kw"], c["stride"], c["pad"])
    ref = naive.avgpool2d(x, c["kh"], c["kw"], c["stride"], c["pad"])
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    dout = c["rng"].standard_normal(out.shape)
    dx = ops.avgpool2d_backward(dout, cache)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, naive.avgpool2d_backward(dout, x.shape, c["kh"], c["kw"],
                                                            c["stride"], c["pad"]),
                               rtol=1e-12, atol=1e-12)


def test_avgpool_counts_zero_padding():
    x = np.ones((1, 1, 2, 2))
    out, _ = ops.avgpool2d_forward(x, 2, 2, 2, 1)
    np.testing.assert_allclose(out, np.full((1, 1, 2, 2), 0.25))


# ---------------------------------------------------------------- softmax / cross-entropy

@pytest.mark.parametrize("shape", [(5, 7), (1, 3), (4, 1)])
def test_softmax_and_log_softmax_match_naive(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * 3
    np.testing.assert_allclose(ops.softmax(x), naive.softmax_rows(x), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ops.log_softmax(x), naive.log_softmax_rows(x), rtol=1e-12, atol=1e-12)


def test_softmax_axis():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 5))
    moved = np.moveaxis(x, 1, -1).reshape(-1, 4)
    ref = np.moveaxis(naive.softmax_rows(moved).reshape(3, 5, 4), -1, 1)
    np.testing.assert_allclose(ops.softmax(x, axis=1), ref, rtol=1e-12, atol=1e-15)
    ref_log = np.moveaxis(naive.log_softmax_rows(moved).reshape(3, 5, 4), -1, 1)
    np.testing.assert_allclose(ops.log_softmax(x, axis=1), ref_log, rtol=1e-12, atol=1e-12)
    x2 = rng.standard_normal((4, 6))
    np.testing.assert_allclose(ops.softmax(x2, axis=0), naive.softmax_rows(x2.T).T, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_softmax_is_stable_for_huge_logits(dtype):
    x = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4 - 1.0, 1e4]], dtype=dtype)
    p = np.asarray(ops.softmax(x))
    lp = np.asarray(ops.log_softmax(x))
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(lp))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], [1.0, 0.0, 0.0], atol=1e-7)
    assert lp[0, 1] == pytest.approx(-1e4, rel=1e-6)
    assert lp[1, 1] == pytest.approx(-(1.0 + math.log1p(math.exp(-1.0))), rel=1e-5)
    loss = float(ops.cross_entropy(x, np.array([1, 0])))
    assert math.isfinite(loss)
    assert loss == pytest.approx((1e4 + 2e4 + math.log1p(math.exp(-1.0))) / 2, rel=1e-6)
    d = np.asarray(ops.cross_entropy_backward(x, np.array([1, 0])))
    assert np.all(np.isfinite(d))


def _ce_case(seed, n=6, k=5):
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, k)) * 2
    labels = rng.integers(0, k, size=n)
    return scores, labels, np.eye(k)[labels]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_entropy_matches_naive(seed):
    scores, labels, onehot = _ce_case(seed)
    ref = naive.cross_entropy(scores, labels)
    assert float(ops.cross_entropy(scores, labels)) == pytest.approx(ref, rel=1e-12)
    assert float(ops.cross_entropy(scores, onehot)) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_entropy_backward(seed):
    scores, labels, onehot = _ce_case(seed)
    expect = (naive.softmax_rows(scores) - onehot) / scores.shape[0]
    np.testing.assert_allclose(ops.cross_entropy_backward(scores, labels), expect, atol=1e-12)
    np.testing.assert_allclose(ops.cross_entropy_backward(scores, onehot), expect, atol=1e-12)
    np.testing.assert_allclose(ops.cross_entropy_backward(scores, labels, dout=2.5), 2.5 * expect,
                               atol=1e-12)
    s = scores.copy()
    num = naive.numeric_grad(lambda: naive.cross_entropy(s, labels), s)
    assert naive.rel_error(ops.cross_entropy_backward(scores, labels), num) < 1e-7
