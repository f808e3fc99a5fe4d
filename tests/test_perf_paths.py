"""The fast CPU paths chosen inside the ops give the naive results on every branch:
conv columns channel-major vs channels-last, dx by fold, by one full-correlation GEMM or by
kernel offsets, inputs and gradients in NCHW, NHWC or CNHW memory, reused conv workspaces,
max pooling over tiling and non-tiling windows in any layout, and the model-level
ReLU/MaxPool swap. The compiled CPU kernels are off here (they have tests of their own,
test_cpu_kernels.py): these are the portable NumPy paths that run without a C compiler."""
import functools

import numpy as np
import pytest

import naive
from cnn_xp import Sequential, ops
from cnn_xp.layers import Affine, Conv2D, MaxPool2D, ReLU
from cnn_xp.model import execution_order
from cnn_xp.ops import conv as conv_ops
from cnn_xp.ops import pool as pool_ops


@pytest.fixture(autouse=True)
def _portable_paths(monkeypatch):
    monkeypatch.setenv("CNN_XP_NO_CPU_KERNELS", "1")


def _in_memory(x, order):
    """``x`` (N, C, H, W) as an NCHW view of memory laid out as ``order`` ("nchw", "nhwc",
    "cnhw"), as the layers hand maps to each other."""
    axes = {"nchw": (0, 1, 2, 3), "nhwc": (0, 2, 3, 1), "cnhw": (1, 0, 2, 3)}[order]
    back = [axes.index(axis) for axis in range(4)]
    return np.ascontiguousarray(x.transpose(axes)).transpose(back)


# (c, oc, hw, k, stride, pad, layout, full): every CPU conv branch, channel-major
# (OW >= C; dx by fold, or by one full-correlation GEMM where ``full``) and channels-last
# (C > OW; dx by one GEMM per kernel offset, whatever the full-correlation rule says).
CONV_PATHS = [
    (16, 16, 18, 3, 1, 0, "channel_major", True), (8, 4, 17, 5, 1, 2, "channel_major", True),
    (3, 3, 16, 2, 1, 1, "channel_major", True), (4, 8, 18, 3, 1, 0, "channel_major", False),
    (6, 6, 9, 3, 1, 1, "channel_major", False), (1, 5, 12, 5, 2, 2, "channel_major", False),
    (20, 8, 18, 3, 1, 0, "channels_last", True), (12, 6, 8, 3, 1, 1, "channels_last", False),
    (10, 12, 9, 3, 2, 1, "channels_last", False),
]


@functools.lru_cache(maxsize=None)
def _naive_case(c, oc, hw, k, stride, pad):
    """Inputs and the naive (slow, element-by-element) results of one conv case."""
    rng = np.random.default_rng(c + hw)
    x = rng.standard_normal((2, c, hw, hw))
    W, b = rng.standard_normal((oc, c, k, k)), rng.standard_normal(oc)
    out = naive.conv2d(x, W, b, stride, pad)
    dout = rng.standard_normal(out.shape)
    return x, W, b, out, dout, naive.conv2d_backward(dout, x, W, stride, pad)


@pytest.mark.parametrize("c, oc, hw, k, stride, pad, layout, full", CONV_PATHS)
@pytest.mark.parametrize("memory", ["nchw", "nhwc", "cnhw"])
def test_conv_paths_match_naive(c, oc, hw, k, stride, pad, layout, full, memory):
    x, W, b, want_out, dout, want_grads = _naive_case(c, oc, hw, k, stride, pad)
    x = _in_memory(x, memory)
    out, cache = ops.conv2d_forward(x, W, b, stride, pad)
    assert cache[4] == layout
    s, p = (stride, stride), (pad, pad)
    assert conv_ops._prefer_full_correlation(x.shape, W, s, p, out.shape[2:]) == full
    np.testing.assert_allclose(out, want_out, rtol=1e-10, atol=1e-10)
    for dout_memory in ("nchw", "nhwc", "cnhw"):
        grads = ops.conv2d_backward(_in_memory(dout, dout_memory), cache)
        for got, want in zip(grads, want_grads):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("c, hw, layout", [(3, 10, "channel_major"), (12, 6, "channels_last")])
def test_conv_workspace_reuse_across_shapes(c, hw, layout):
    """A layer's workspace keeps its buffers between calls; a new batch size or a second
    call must not change any result (the columns of the latest call back its cache)."""
    rng = np.random.default_rng(3)
    W, b = rng.standard_normal((4, c, 3, 3)), rng.standard_normal(4)
    workspace = {}
    for n in (3, 2, 2):
        x = rng.standard_normal((n, c, hw, hw))
        out, cache = ops.conv2d_forward(x, W, b, 1, 1, workspace)
        assert cache[4] == layout and workspace["col"] is cache[1]
        dout = rng.standard_normal(out.shape)
        np.testing.assert_allclose(out, naive.conv2d(x, W, b, 1, 1), rtol=1e-10, atol=1e-10)
        for got, want in zip(ops.conv2d_backward(dout, cache), naive.conv2d_backward(dout, x, W, 1, 1)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_conv_outputs_follow_the_layout_rule():
    """Channel-major convs hand CNHW memory on, channels-last ones NHWC memory."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 12, 12)).astype(np.float32)
    W = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    out, _ = ops.conv2d_forward(x, W, np.zeros(8, np.float32))
    assert pool_ops._axis_order(out) == [1, 0, 2, 3]
    W2 = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    out2, cache = ops.conv2d_forward(out[:, :, :6, :6], W2, np.zeros(4, np.float32))
    assert cache[4] == "channels_last" and pool_ops._axis_order(out2) == [0, 2, 3, 1]


@pytest.mark.parametrize("memory", ["nchw", "nhwc", "cnhw"])
def test_maxpool_keeps_any_layout(memory):
    x = np.random.default_rng(1).standard_normal((3, 4, 8, 8)).astype(np.float32)
    xm = _in_memory(x, memory)
    out, cache = ops.maxpool2d_forward(xm, 2, 2)
    want, where = naive.maxpool2d(x, 2, 2, 2)
    np.testing.assert_array_equal(out, want)
    assert pool_ops._axis_order(out) == pool_ops._axis_order(xm) == pool_ops._axis_order(cache[1])
    for dout_memory in ("nchw", "nhwc", "cnhw"):
        dout = _in_memory(np.random.default_rng(2).standard_normal(out.shape).astype(np.float32), dout_memory)
        dx = ops.maxpool2d_backward(dout, cache)
        assert pool_ops._axis_order(dx) == pool_ops._axis_order(xm)
        np.testing.assert_array_equal(dx, naive.maxpool2d_backward(dout, x.shape, where))


def test_maxpool_keeps_channels_last_layout_and_nan_argmax():
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    out, cache = ops.maxpool2d_forward(xl, 2, 2)
    windows = x.reshape(2, 4, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 4, 3, 3, 4)
    np.testing.assert_array_equal(out, windows.max(axis=-1))
    np.testing.assert_array_equal(cache[1], windows.argmax(axis=-1))
    dx = ops.maxpool2d_backward(np.ones(out.shape, np.float32), cache)
    assert dx.strides[1] < dx.strides[3]  # NHWC memory, like the input
    assert dx.sum() == out.size and dx[0, 1, 2, 3] == 1


def _net(seed):
    rng = np.random.default_rng(seed)
    return Sequential([Conv2D(2, 3, 3, rng=rng, dtype="float64"), ReLU(), MaxPool2D(2),
                       Conv2D(3, 4, 3, pad=1, rng=rng, dtype="float64"), ReLU(), MaxPool2D(2, pad=1),
                       Affine(4 * 3 * 3, 5, rng=rng, dtype="float64")], input_grad=True)


def test_relu_maxpool_swap_is_exact():
    assert execution_order(_net(0).layers) == [0, 2, 1, 3, 4, 5, 6]  # padded pool not swapped
    x = np.random.default_rng(1).standard_normal((3, 2, 10, 10))
    t = np.array([0, 4, 2])
    swapped, plain = _net(0), _net(0)
    loss_a = swapped.loss(x, t)
    dx_a = swapped.backward()
    h = x
    for layer in plain.layers:  # the declared order, layer by layer
        h = layer.forward(h)
    loss_b = plain.loss_layer.forward(h, t)
    g = plain.loss_layer.backward()
    for layer in reversed(plain.layers):
        g = layer.backward(g)
    assert float(loss_a) == float(loss_b)
    np.testing.assert_array_equal(dx_a, g)
    for la, lb in zip(swapped.layers, plain.layers):
        for key in la.grads:
            np.testing.assert_array_equal(la.grads[key], lb.grads[key])
