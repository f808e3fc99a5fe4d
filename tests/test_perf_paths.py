"""The fast CPU paths chosen inside the ops give the naive results on every branch:
conv dx by fold vs by one full-correlation GEMM, channels-last vs NCHW inputs, max pooling
over tiling and non-tiling windows, and the model-level ReLU/MaxPool swap."""
import numpy as np
import pytest

import naive
from cnn_xp import Sequential, ops
from cnn_xp.layers import Affine, Conv2D, MaxPool2D, ReLU
from cnn_xp.model import execution_order
from cnn_xp.ops import conv as conv_ops


@pytest.mark.parametrize("c, oc, hw, k, pad, full", [
    (16, 16, 18, 3, 0, True), (8, 4, 17, 5, 2, True), (3, 3, 16, 2, 1, True),
    (4, 8, 18, 3, 0, False), (6, 6, 9, 3, 1, False),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_dx_paths_match_naive(c, oc, hw, k, pad, full, channels_last):
    rng = np.random.default_rng(c + hw)
    x = rng.standard_normal((2, c, hw, hw))
    if channels_last:  # an NCHW view of NHWC memory, as a previous conv hands over
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    W, b = rng.standard_normal((oc, c, k, k)), rng.standard_normal(oc)
    out, cache = ops.conv2d_forward(x, W, b, 1, pad)
    assert conv_ops._prefer_full_correlation(x.shape, W, (1, 1), (pad, pad), out.shape[2:]) == full
    np.testing.assert_allclose(out, naive.conv2d(x, W, b, 1, pad), rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(out.shape)
    for got, want in zip(ops.conv2d_backward(dout, cache), naive.conv2d_backward(dout, x, W, 1, pad)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


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
