"""Golden values taken from the seed texts (/work/shared/seeds), checked against cnn_xp.ops/layers.

- seed 000, figures 8-17 to 8-19: two 4x4 images, pad 1, two 3x3 kernels -> the 32x9 im2col
  matrix and the 32x2 result (the figure prints -0.5 in the last row of each image's second
  column; the true value, recomputed from the figure's own operands, is -5), and the max-pool
  example of section 8.2.1 (2.9, 4.4, 3.05, 3.55) on the second image's first feature map.
- seed 003, appendices A and B: valid/full correlation and convolution REPL outputs, and the
  two-channel sum [[212, 196], [164, 148]].
- seed 001, the convolution-layer gradient check: a 3-channel 5x5 input, two 3x3x3 filters
  (biases 1 and 0), pad 1, stride 2. The text prints no forward numbers (its output is an
  image), so the forward result is checked against the naive loop and by hand for one entry,
  and the layer's gradients against finite differences.
"""
import numpy as np
import pytest

import naive
from cnn_xp import ops
from cnn_xp.layers import Conv2D, MaxPool2D

# ------------------------------------------------------------------ seed 000

IMAGE_1 = [[1, -1, 1, 0],
           [-1, 0, 1, 0],
           [0, 0, 1, -1],
           [-1, 1, 1, 1]]
IMAGE_2 = [[0, 1, -1, 2],
           [-1, 2, 1, 0.1],
           [0, 0.1, 1, -1],
           [3, 1, 1, 1]]

# Figure 8-17 / 8-19 left: conv_reshape() of the two padded images, 32 x 9.
LAYER_32x9 = [
    [0, 0, 0, 0, 1, -1, 0, -1, 0],
    [0, 0, 0, 1, -1, 1, -1, 0, 1],
    [0, 0, 0, -1, 1, 0, 0, 1, 0],
    [0, 0, 0, 1, 0, 0, 1, 0, 0],
    [0, 1, -1, 0, -1, 0, 0, 0, 0],
    [1, -1, 1, -1, 0, 1, 0, 0, 1],
    [-1, 1, 0, 0, 1, 0, 0, 1, -1],
    [1, 0, 0, 1, 0, 0, 1, -1, 0],
    [0, -1, 0, 0, 0, 0, 0, -1, 1],
    [-1, 0, 1, 0, 0, 1, -1, 1, 1],
    [0, 1, 0, 0, 1, -1, 1, 1, 1],
    [1, 0, 0, 1, -1, 0, 1, 1, 0],
    [0, 0, 0, 0, -1, 1, 0, 0, 0],
    [0, 0, 1, -1, 1, 1, 0, 0, 0],
    [0, 1, -1, 1, 1, 1, 0, 0, 0],
    [1, -1, 0, 1, 1, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 1, 0, -1, 2],
    [0, 0, 0, 0, 1, -1, -1, 2, 1],
    [0, 0, 0, 1, -1, 2, 2, 1, 0.1],
    [0, 0, 0, -1, 2, 0, 1, 0.1, 0],
    [0, 0, 1, 0, -1, 2, 0, 0, 0.1],
    [0, 1, -1, -1, 2, 1, 0, 0.1, 1],
    [1, -1, 2, 2, 1, 0.1, 0.1, 1, -1],
    [-1, 2, 0, 1, 0.1, 0, 1, -1, 0],
    [0, -1, 2, 0, 0, 0.1, 0, 3, 1],
    [-1, 2, 1, 0, 0.1, 1, 3, 1, 1],
    [2, 1, 0.1, 0.1, 1, -1, 1, 1, 1],
    [1, 0.1, 0, 1, -1, 0, 1, 1, 0],
    [0, 0, 0.1, 0, 3, 1, 0, 0, 0],
    [0, 0.1, 1, 3, 1, 1, 0, 0, 0],
    [0.1, 1, -1, 1, 1, 1, 0, 0, 0],
    [1, -1, 0, 1, 1, 0, 0, 0, 0],
]

# Figure 8-18 right: the two 3x3 kernels flattened row-major into the columns of a 9 x 2 matrix.
KERNELS_9x2 = [[1, 0], [0.5, 5], [0, 1], [1, 0], [-1, 0], [1, 0], [0, 0], [0.5, 1], [-1, 1]]

# Figure 8-19 right: layer @ kernels, 32 x 2 (rows: image 1 then image 2, each (oh, ow)).
RESULT_32x2 = [
    [-2.5, -1], [2, 1], [-1.5, 1], [1, 0], [1.5, 4], [-0.5, -3], [0, 5], [1.5, -1],
    [-2, -5], [-0.5, 3], [-2, 7], [3.5, 1], [2, 0], [-1, 1], [1.5, 4],
    [0.5, -5],            # the figure misprints -0.5 here
    [-1.5, 1], [-2, 3], [4.4, 1.1], [-2.95, 0.1], [2.9, 1.1], [-2.45, 5.1], [3.1, -3],
    [0.4, 9], [0.1, 1], [0.4, 13], [0.1, 7.1], [3.55, 1.5], [-2, 0.1], [3.05, 1.5], [1.6, 4],
    [0.5, -5],            # and here
]


def _seed000_operands(dtype="float64"):
    x = np.array([IMAGE_1, IMAGE_2], dtype=dtype)[:, None]             # (2, 1, 4, 4)
    W = np.array(KERNELS_9x2, dtype=dtype).T.reshape(2, 1, 3, 3)       # (2, 1, 3, 3)
    return x, W, np.zeros(2, dtype=dtype)


def test_seed000_im2col_is_figure_8_17():
    x, _, _ = _seed000_operands()
    np.testing.assert_array_equal(np.asarray(ops.im2col(x, 3, 3, stride=1, pad=1)),
                                  np.array(LAYER_32x9, dtype=np.float64))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_seed000_conv_is_figure_8_19(dtype):
    x, W, b = _seed000_operands(dtype)
    out, _ = ops.conv2d_forward(x, W, b, stride=1, pad=1)
    assert out.shape == (2, 2, 4, 4)
    as_32x2 = np.asarray(out).transpose(0, 2, 3, 1).reshape(32, 2)     # rows (n, oh, ow)
    np.testing.assert_allclose(as_32x2, RESULT_32x2, rtol=1e-6, atol=1e-6)


def test_seed000_conv_layer_matches_figure():
    x, W, b = _seed000_operands()
    layer = Conv2D(1, 2, 3, stride=1, pad=1, dtype="float64")
    layer.params["W"] = W
    layer.params["b"] = b
    out = np.asarray(layer.forward(x))
    np.testing.assert_allclose(out.transpose(0, 2, 3, 1).reshape(32, 2), RESULT_32x2, atol=1e-12)


def test_seed000_maxpool_example():
    """Section 8.2.1: 2x2 max pooling, stride 2, of the second image's first feature map."""
    x, W, b = _seed000_operands()
    conv, _ = ops.conv2d_forward(x, W, b, stride=1, pad=1)
    fmap = np.ascontiguousarray(np.asarray(conv)[1:2, 0:1])            # (1, 1, 4, 4)
    out, cache = ops.maxpool2d_forward(fmap, 2, 2, 2, 0)
    np.testing.assert_allclose(np.asarray(out)[0, 0], [[2.9, 4.4], [3.05, 3.55]], atol=1e-12)
    # the gradient goes only to the four maxima (25% of the positions, figure 8-27)
    dx = np.asarray(ops.maxpool2d_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), cache))[0, 0]
    expect = np.zeros((4, 4))
    expect[1, 0], expect[0, 2], expect[3, 1], expect[2, 3] = 1.0, 2.0, 3.0, 4.0
    np.testing.assert_array_equal(dx, expect)
    layer_out = np.asarray(MaxPool2D(2).forward(fmap))
    np.testing.assert_allclose(layer_out, np.asarray(out))


# ------------------------------------------------------------------ seed 003

VALUES = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
F = [[10, 20], [30, 40]]


def _correlate(image, kernel, pad=0):
    x = np.array(image, dtype=np.float64)[None, None]
    W = np.array(kernel, dtype=np.float64)[None, None]
    out, _ = ops.conv2d_forward(x, W, np.zeros(1), stride=1, pad=pad)
    return np.asarray(out)[0, 0]


def test_seed003_valid_correlation():
    np.testing.assert_array_equal(_correlate(VALUES, F), [[370, 470], [670, 770]])


def test_seed003_valid_convolution_is_correlation_with_rotated_kernel():
    f_rot180 = np.rot90(np.rot90(np.array(F)))
    np.testing.assert_array_equal(f_rot180, [[40, 30], [20, 10]])
    np.testing.assert_array_equal(_correlate(VALUES, f_rot180), [[230, 330], [530, 630]])


def test_seed003_full_correlation():
    # "full" mode = pad k - 1 on every side
    np.testing.assert_array_equal(_correlate(VALUES, F, pad=1),
                                  [[40, 110, 180, 90],
                                   [180, 370, 470, 210],
                                   [360, 670, 770, 330],
                                   [140, 230, 260, 90]])


def test_seed003_full_convolution():
    f_rot180 = np.array(F)[::-1, ::-1].copy()
    np.testing.assert_array_equal(_correlate(VALUES, f_rot180, pad=1),
                                  [[10, 40, 70, 60],
                                   [70, 230, 330, 240],
                                   [190, 530, 630, 420],
                                   [210, 520, 590, 360]])


def test_seed003_two_channel_sum():
    fm1, fm2 = [[1, 2, 3], [4, 5, 6], [7, 8, 9]], [[9, 8, 7], [6, 5, 4], [3, 2, 1]]
    f1, f2 = [[1, 2], [3, 4]], [[5, 6], [7, 8]]
    np.testing.assert_array_equal(_correlate(fm1, f1), [[37, 47], [67, 77]])
    np.testing.assert_array_equal(_correlate(fm2, f2), [[175, 149], [97, 71]])
    x = np.array([fm1, fm2], dtype=np.float64)[None]          # (1, 2, 3, 3)
    W = np.array([f1, f2], dtype=np.float64)[None]            # (1, 2, 2, 2)
    out, _ = ops.conv2d_forward(x, W, np.zeros(1))
    np.testing.assert_array_equal(np.asarray(out)[0, 0], [[212, 196], [164, 148]])


def test_seed003_backprop_is_full_convolution():
    """Seed 003's point: dX of a stride-1 correlation is the full convolution of dOut with W."""
    x = np.array(VALUES, dtype=np.float64)[None, None]
    W = np.array(F, dtype=np.float64)[None, None]
    out, cache = ops.conv2d_forward(x, W, np.zeros(1))
    dout = np.array([[1.0, -2.0], [0.5, 3.0]])[None, None]
    dx, dW, db = ops.conv2d_backward(dout, cache)
    full_conv = _correlate(dout[0, 0], np.array(F)[::-1, ::-1], pad=1)
    np.testing.assert_allclose(np.asarray(dx)[0, 0], full_conv, atol=1e-12)
    # dW is the valid correlation of the input with dOut
    np.testing.assert_allclose(np.asarray(dW)[0, 0], _correlate(VALUES, dout[0, 0]), atol=1e-12)
    assert float(np.asarray(db)[0]) == pytest.approx(2.5)


# ------------------------------------------------------------------ seed 001

SEED001_INPUT = [
    [[0, 1, 1, 0, 2], [2, 2, 2, 2, 1], [1, 0, 0, 2, 0], [0, 1, 1, 0, 0], [1, 2, 0, 0, 2]],
    [[1, 0, 2, 2, 0], [0, 0, 0, 2, 0], [1, 2, 1, 2, 1], [1, 0, 0, 0, 0], [1, 2, 1, 1, 1]],
    [[2, 1, 2, 0, 0], [1, 0, 0, 1, 0], [0, 2, 1, 0, 1], [0, 1, 2, 2, 2], [2, 1, 0, 0, 1]],
]
SEED001_SENSITIVITY = [
    [[0, 1, 1], [2, 2, 2], [1, 0, 0]],
    [[1, 0, 2], [0, 0, 0], [1, 2, 1]],
]
SEED001_FILTERS = [
    [[[-1, 1, 0], [0, 1, 0], [0, 1, 1]],
     [[-1, -1, 0], [0, 0, 0], [0, -1, 0]],
     [[0, 0, -1], [0, 1, 0], [1, -1, -1]]],
    [[[1, 1, -1], [-1, -1, 1], [0, -1, 1]],
     [[0, 1, 0], [-1, 0, -1], [-1, 1, 0]],
     [[-1, 0, 0], [-1, 0, 1], [-1, 0, 0]]],
]
SEED001_BIAS = [1.0, 0.0]


def _seed001_layer():
    layer = Conv2D(3, 2, 3, stride=2, pad=1, dtype="float64")
    layer.params["W"] = np.array(SEED001_FILTERS, dtype=np.float64)
    layer.params["b"] = np.array(SEED001_BIAS)
    return layer


def test_seed001_forward():
    layer = _seed001_layer()
    x = np.array(SEED001_INPUT, dtype=np.float64)[None]
    out = np.asarray(layer.forward(x))
    assert out.shape == (1, 2, 3, 3)            # (5 - 3 + 2*1)/2 + 1 = 3
    np.testing.assert_allclose(out, naive.conv2d(x, np.array(SEED001_FILTERS, float),
                                                 np.array(SEED001_BIAS), 2, 1), atol=1e-12)
    # by hand, filter 0 at (0, 0): the padded top-left 3x3 of every channel
    xp = np.pad(np.array(SEED001_INPUT, float), ((0, 0), (1, 1), (1, 1)))
    by_hand = float(np.sum(xp[:, 0:3, 0:3] * np.array(SEED001_FILTERS[0], float))) + 1.0
    assert out[0, 0, 0, 0] == pytest.approx(by_hand)


def test_seed001_gradient_check():
    """The text's check: error = sum of outputs (sensitivity all ones), then its map b."""
    x = np.array(SEED001_INPUT, dtype=np.float64)[None]
    for sens in (np.ones((1, 2, 3, 3)), np.array(SEED001_SENSITIVITY, dtype=np.float64)[None]):
        layer = _seed001_layer()
        layer.forward(x)
        dx = np.asarray(layer.backward(sens))
        grads = {k: np.asarray(v) for k, v in layer.grads.items()}
        xx = x.copy()

        def err():
            return float(np.sum(np.asarray(layer.forward(xx)) * sens))

        for key in ("W", "b"):
            p = layer.params[key]
            num = naive.numeric_grad(err, p, eps=1e-4)
            assert naive.rel_error(grads[key], num) < 1e-8, key
        assert naive.rel_error(dx, naive.numeric_grad(err, xx, eps=1e-4)) < 1e-8
        # with all-ones sensitivity db is the number of output positions
        if np.all(sens == 1):
            np.testing.assert_allclose(grads["b"], [9.0, 9.0])
