"""On a real GPU: every CuPy fast path (cnn_xp/ops/cuda_kernels.py) against the portable CuPy
code it replaces (run with CNN_XP_NO_CUDA_KERNELS=1), float32 and float64, strided views
included; and proof that the fast path really ran (kernels built, no compile fallback)."""
import os
import warnings

import numpy as np
import pytest

from cnn_xp import backend, optim
from cnn_xp.ops import cuda_kernels as ck
from cnn_xp.ops import (col2im, col2im_t, fold_windows, im2col, maxpool2d_backward, maxpool2d_forward,
                        sliding_windows)

pytestmark = pytest.mark.skipif(os.environ.get("CNN_XP_GPU_DRY_RUN") == "1",
                                reason="the fast paths exist only for CuPy arrays (real GPU)")

DTYPES = ["float32", "float64"]
WINDOW_CASES = [  # (x shape, kh, kw, stride, pad)
    ((4, 3, 12, 12), 3, 3, (1, 1), (1, 1)),
    ((2, 5, 9, 11), 3, 2, (2, 1), (1, 2)),
    ((3, 4, 8, 8), 2, 2, (2, 2), (0, 0)),
    ((2, 2, 13, 10), 5, 3, (3, 2), (2, 1)),
    ((100, 30, 24, 24), 2, 2, (2, 2), (0, 0)),   # simple_convnet's pool at batch 100
    ((50, 16, 28, 28), 3, 3, (1, 1), (1, 1)),    # a deep_convnet conv at batch 50
]


@pytest.fixture
def cp():
    ck.reset()
    return backend.cupy()


def _portable(monkeypatch, fn, *args):
    """fn(*args) with the fast paths switched off (the portable CuPy code)."""
    with monkeypatch.context() as m:
        m.setenv(ck.ENV_DISABLE, "1")
        assert not ck.applies(*[a for a in args if hasattr(a, "dtype")][:1])
        return fn(*args)


def _fast(cp, fn, *args):
    """fn(*args) with the fast paths on; fails if a kernel fell back to the portable code."""
    assert os.environ.get(ck.ENV_DISABLE, "") != "1"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = fn(*args)
    assert ck.status()["enabled"], ck.status()
    return out


def _close(a, b, dtype):
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(backend.to_numpy(a), backend.to_numpy(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, kh, kw, stride, pad", WINDOW_CASES)
def test_im2col_col2im_fold_match_portable(cp, monkeypatch, x_shape, kh, kw, stride, pad, dtype):
    rng = np.random.default_rng(0)
    # An NCHW view of NHWC memory, as conv2d_forward hands to the next layer.
    x = cp.asarray(rng.standard_normal((x_shape[0], *x_shape[2:], x_shape[1])).astype(dtype))
    x = x.transpose(0, 3, 1, 2)
    col = _fast(cp, im2col, x, kh, kw, stride, pad)
    want = _portable(monkeypatch, im2col, x, kh, kw, stride, pad).get()
    np.testing.assert_array_equal(col.get(), want)
    for per_thread in (1, 3, 8):  # whole and partial last groups of rows per thread
        monkeypatch.setattr(ck, "rows_per_thread", lambda size, k=per_thread: k)
        np.testing.assert_array_equal(_fast(cp, im2col, x, kh, kw, stride, pad).get(), want)
    monkeypatch.undo()

    dcol = cp.asarray(rng.standard_normal(col.shape).astype(dtype))
    fast = _fast(cp, col2im, dcol, x_shape, kh, kw, stride, pad)
    assert fast.shape == x_shape and fast.dtype == dtype
    _close(fast, _portable(monkeypatch, col2im, dcol, x_shape, kh, kw, stride, pad), dtype)
    # Deterministic (a gather, no atomics): the same bits twice.
    np.testing.assert_array_equal(fast.get(), _fast(cp, col2im, dcol, x_shape, kh, kw, stride, pad).get())

    dcol_t = cp.ascontiguousarray(dcol.T)  # the layout conv's GPU backward folds
    fast_t = _fast(cp, col2im_t, dcol_t, x_shape, kh, kw, stride, pad)
    np.testing.assert_array_equal(fast_t.get(), fast.get())  # same sums, same order

    windows_shape = sliding_windows(cp.zeros(x_shape, dtype), kh, kw, stride, pad).shape
    share = cp.asarray(rng.standard_normal(windows_shape[:4]).astype(dtype))
    windows = cp.broadcast_to(share[..., None, None], windows_shape)  # zero strides
    _close(_fast(cp, fold_windows, windows, x_shape, stride, pad),
           _portable(monkeypatch, fold_windows, windows, x_shape, stride, pad), dtype)


def test_arrays_too_large_for_32_bit_indices_take_the_portable_path(cp):
    class Huge:  # only its size is looked at before anything launches
        size = ck.INDEX_LIMIT + 1

    assert ck._launch("relu_backward", Huge(), Huge(), Huge()) is None
    assert ck.status()["enabled"]  # one call fell back; the fast paths stay on


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, kh, kw, stride, pad", WINDOW_CASES)
def test_maxpool_matches_portable(cp, monkeypatch, x_shape, kh, kw, stride, pad, dtype):
    rng = np.random.default_rng(1)
    x = cp.asarray(rng.standard_normal((x_shape[0], *x_shape[2:], x_shape[1])).astype(dtype))
    x = x.transpose(0, 3, 1, 2)
    out, cache = _fast(cp, maxpool2d_forward, x, kh, kw, stride, pad)
    ref_out, ref_cache = _portable(monkeypatch, maxpool2d_forward, x, kh, kw, stride, pad)
    np.testing.assert_array_equal(out.get(), ref_out.get())
    np.testing.assert_array_equal(cache[1].get(), ref_cache[1].get())
    assert cache[0] == ref_cache[0] and cache[2:] == ref_cache[2:]
    # ...and both agree with the CPU.
    cpu_out, cpu_cache = maxpool2d_forward(x.get(), kh, kw, stride, pad)
    np.testing.assert_array_equal(out.get(), cpu_out)
    np.testing.assert_array_equal(cache[1].get(), cpu_cache[1])

    dout = cp.asarray(rng.standard_normal(out.shape).astype(dtype))
    dx = _fast(cp, maxpool2d_backward, dout, cache)
    _close(dx, _portable(monkeypatch, maxpool2d_backward, dout, ref_cache), dtype)
    _close(dx, maxpool2d_backward(dout.get(), cpu_cache), dtype)


class _OneParam:
    device = "gpu"

    def __init__(self, p):
        self.layer = type("L", (), {})()
        self.layer.params, self.layer.grads = {"W": p}, {}

    def params_and_grads(self):
        yield "0.W", self.layer, "W"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_fused_optimizer_steps_match_portable(cp, monkeypatch, name, dtype):
    rng = np.random.default_rng(2)
    p0 = rng.standard_normal((30, 7)).astype(dtype)
    grads = [cp.asarray(rng.standard_normal((30, 7)).astype(dtype)) for _ in range(4)]

    def run(disable):
        with monkeypatch.context() as m:
            if disable:
                m.setenv(ck.ENV_DISABLE, "1")
            else:
                m.delenv(ck.ENV_DISABLE, raising=False)
            model = _OneParam(cp.asarray(p0))
            opt = optim.OPTIMIZERS[name](model, lr=0.01)
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                for g in grads:
                    model.layer.grads["W"] = g
                    opt.step()
            return model.layer.params["W"], opt.state_dict()

    fast_p, fast_state = run(False)
    ref_p, ref_state = run(True)
    assert fast_p.dtype == dtype
    _close(fast_p, ref_p, dtype)
    assert fast_state.keys() == ref_state.keys()
    for key, value in ref_state.items():
        if hasattr(value, "shape"):
            _close(fast_state[key], value, dtype)
    assert not np.allclose(backend.to_numpy(fast_p), p0)  # it did move


def test_env_var_forces_the_portable_path(cp, monkeypatch):
    x = cp.zeros((1, 1, 4, 4), dtype="float32")
    assert ck.applies(x)
    monkeypatch.setenv(ck.ENV_DISABLE, "1")
    assert not ck.applies(x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, classes", [(100, 10), (1000, 10), (3, 7)])
def test_fused_softmax_cross_entropy_matches_portable(cp, monkeypatch, n, classes, dtype):
    from cnn_xp import ops
    rng = np.random.default_rng(6)
    scores = cp.asarray((rng.standard_normal((n, classes)) * 20).astype(dtype))
    labels = cp.asarray(rng.integers(0, classes, n))

    def loss_and_grad(s, t):
        loss, probs = ops.softmax_cross_entropy(s, t)
        return loss, ops.cross_entropy_backward(s, t, 0.5, probs=probs)

    want_loss, want_grad = _portable(monkeypatch, loss_and_grad, scores, labels)
    loss, grad = _fast(cp, loss_and_grad, scores, labels)
    assert loss.dtype == scores.dtype and grad.dtype == scores.dtype
    _close(loss, want_loss, dtype)
    _close(grad, want_grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_relu_backward_and_dropout_match_portable(cp, monkeypatch, dtype):
    from cnn_xp.layers import Dropout, ReLU
    rng = np.random.default_rng(8)
    x = cp.asarray(rng.standard_normal((50, 16, 12, 12)).astype(dtype))
    dout = cp.asarray(rng.standard_normal((50, 16, 12, 12)).astype(dtype))

    def relu_grad(x, dout):
        layer = ReLU()
        layer.forward(x)
        return layer.backward(dout)

    _close(_fast(cp, relu_grad, x, dout), _portable(monkeypatch, relu_grad, x, dout), dtype)

    def dropout(x, dout):
        layer = Dropout(0.5, seed=3).to("gpu")  # same seed, same draws on both paths
        y = layer.forward(x, train=True)
        return y, layer.backward(dout)

    (y_fast, g_fast) = _fast(cp, dropout, x, dout)
    (y_port, g_port) = _portable(monkeypatch, dropout, x, dout)
    _close(y_fast, y_port, dtype)
    _close(g_fast, g_port, dtype)
    kept = float((y_fast != 0).mean().get())
    assert 0.4 < kept < 0.6
