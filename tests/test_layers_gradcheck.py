"""Every layer's backward against central finite differences in float64 (dx and every param),
plus the forward semantics each layer promises. Also checks cnn_xp.gradcheck itself."""
import math

import numpy as np
import pytest

import naive
from cnn_xp import gradcheck
from cnn_xp.layers import (Affine, AvgPool2D, BatchNorm, Conv2D, Dropout, Flatten, MaxPool2D,
                           ReLU, Sigmoid, SoftmaxCrossEntropy, Tanh)

TOL = 1e-6


def grad_errors(layer, x, seed=0, train=True, forward=None):
    """Relative errors of layer.backward vs numeric gradients of sum(forward(x) * dout).

    ``forward(x)`` defaults to ``layer.forward(x, train)``; pass one to rebuild random state.
    Returns {"x": err, "<param>": err, ...}.
    """
    x = np.array(x, dtype=np.float64)
    fwd = forward or (lambda inp: layer.forward(inp, train=train))
    out = np.asarray(layer.forward(x, train=train))
    assert out.dtype == np.float64
    dout = np.random.default_rng(seed).standard_normal(out.shape)
    dx = layer.backward(dout.copy())
    assert dx is not None and dx.shape == x.shape
    analytic = {"x": np.array(dx), **{k: np.array(v) for k, v in layer.grads.items()}}
    assert set(analytic) == {"x", *layer.params}, "grads must have the same keys as params"

    def objective():
        return float(np.sum(np.asarray(fwd(x)) * dout))

    errors = {"x": naive.rel_error(analytic["x"], naive.numeric_grad(objective, x))}
    for key, p in layer.params.items():
        assert p.dtype == np.float64 and p.flags.c_contiguous
        assert analytic[key].shape == p.shape
        errors[key] = naive.rel_error(analytic[key], naive.numeric_grad(objective, p))
    return errors


def assert_small(errors):
    bad = {k: v for k, v in errors.items() if not v < TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"


def away_from_zero(rng, shape, margin=0.05):
    """Normal draws pushed at least ``margin`` away from 0 (ReLU's kink)."""
    x = rng.standard_normal(shape)
    return x + np.sign(x) * margin


def randomize(layer, rng):
    """Non-trivial float64 params (zero biases would hide bias-gradient bugs)."""
    for key, p in list(layer.params.items()):
        layer.params[key] = rng.standard_normal(p.shape) * (0.5 if p.ndim > 1 else 1.0)
    return layer


# ---------------------------------------------------------------- learnable layers

CONV_CASES = [
    # (C, OC, kernel, stride, pad, H, W)
    (1, 2, 3, 1, 0, 5, 6),
    (3, 4, (3, 2), (2, 1), (1, 0), 7, 5),
    (2, 3, 5, 3, 2, 8, 6),
    (2, 2, 1, 1, 0, 3, 4),
    (3, 2, (2, 4), 2, (2, 1), 6, 9),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "C{}OC{}k{}s{}p{}H{}W{}".format(*c))
def test_conv2d_gradcheck(case):
    c, oc, k, s, p, h, w = case
    rng = np.random.default_rng(hash(str(case)) % 2**32)
    layer = randomize(Conv2D(c, oc, k, stride=s, pad=p, rng=0, dtype="float64"), rng)
    assert_small(grad_errors(layer, rng.standard_normal((2, c, h, w))))


def test_conv2d_forward_matches_naive():
    rng = np.random.default_rng(1)
    layer = randomize(Conv2D(3, 4, (3, 2), stride=(2, 1), pad=(1, 2), dtype="float64"), rng)
    assert layer.params["W"].shape == (4, 3, 3, 2) and layer.params["b"].shape == (4,)
    x = rng.standard_normal((2, 3, 7, 6))
    np.testing.assert_allclose(layer.forward(x), naive.conv2d(x, layer.params["W"], layer.params["b"],
                                                              (2, 1), (1, 2)), atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 2, 2)])
def test_affine_gradcheck(shape):
    rng = np.random.default_rng(len(shape))
    fan_in = int(np.prod(shape[1:]))
    layer = randomize(Affine(fan_in, 5, rng=0, dtype="float64"), rng)
    assert layer.params["W"].shape == (fan_in, 5) and layer.params["b"].shape == (5,)
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(layer.forward(x), x.reshape(shape[0], -1) @ layer.params["W"]
                               + layer.params["b"], atol=1e-12)
    assert_small(grad_errors(layer, x))


@pytest.mark.parametrize("make", [lambda: Conv2D(2, 3, 3, pad=1, dtype="float64"),
                                  lambda: Affine(2 * 4 * 5, 3, dtype="float64")],
                         ids=["conv", "affine"])
def test_first_layer_skips_dx(make):
    rng = np.random.default_rng(4)
    full, first = randomize(make(), rng), make()
    for key, value in full.params.items():
        first.params[key] = value.copy()
    first.need_input_grad = False
    x = rng.standard_normal((2, 2, 4, 5))
    dout = rng.standard_normal(np.shape(full.forward(x)))
    first.forward(x)
    assert first.backward(dout) is None
    assert full.backward(dout) is not None
    for key in full.params:
        np.testing.assert_allclose(first.grads[key], full.grads[key], atol=1e-12)


def test_reassigned_param_is_used():
    layer = Affine(3, 2, dtype="float64")
    layer.params["W"] = np.arange(6, dtype=np.float64).reshape(3, 2)
    layer.params["b"] = np.array([1.0, -1.0])
    out = layer.forward(np.ones((1, 3)))
    np.testing.assert_allclose(out, [[0 + 2 + 4 + 1, 1 + 3 + 5 - 1]])


# ---------------------------------------------------------------- pooling / reshaping

POOL_CASES = [
    # (kernel, stride, pad, H, W)
    (2, None, 0, 4, 6),
    (3, 2, 1, 7, 6),
    ((2, 3), (1, 2), (1, 1), 5, 7),
    (3, 1, 0, 5, 4),
]


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "k{}s{}p{}H{}W{}".format(*c))
def test_pool_gradcheck(cls, case):
    k, s, p, h, w = case
    rng = np.random.default_rng(h * 10 + w)
    # distinct values spaced far beyond eps, so no max is tied or swapped by a perturbation
    x = rng.permutation(2 * 3 * h * w).reshape(2, 3, h, w) * 0.01 + rng.uniform(0, 1e-3, (2, 3, h, w))
    layer = cls(k, s, p) if s is not None else cls(k)
    assert not layer.params
    assert_small(grad_errors(layer, x))


def test_pool_stride_defaults_to_kernel():
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 9))
    assert MaxPool2D(3).forward(x).shape == (1, 2, 2, 3)
    assert AvgPool2D((2, 3)).forward(x).shape == (1, 2, 3, 3)


@pytest.mark.parametrize("make", [lambda: MaxPool2D(2), lambda: AvgPool2D(2), lambda: Conv2D(3, 2, 3, pad=1),
                                  ReLU, Sigmoid, Tanh, Flatten, lambda: Affine(48, 5), lambda: BatchNorm(3)])
def test_inference_forward_stores_nothing(make):
    """train=False keeps no state on the layer (several threads may run inference through
    it): the attributes are unchanged, and a backward without a training forward raises."""
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32)
    layer = make()
    before = {k: id(v) for k, v in vars(layer).items()}
    out = layer.forward(x, train=False)
    assert {k: id(v) for k, v in vars(layer).items()} == before
    with pytest.raises(RuntimeError, match="train=True"):
        layer.backward(np.ones_like(out))


def test_flatten_gradcheck():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 2, 4))
    layer = Flatten()
    out = layer.forward(x)
    assert out.shape == (2, 24)
    np.testing.assert_array_equal(out, x.reshape(2, 24))
    assert_small(grad_errors(layer, x))


# ---------------------------------------------------------------- activations

@pytest.mark.parametrize("cls", [ReLU, Sigmoid, Tanh])
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 3, 4)])
def test_activation_gradcheck(cls, shape):
    rng = np.random.default_rng(len(shape))
    assert_small(grad_errors(cls(), away_from_zero(rng, shape) * 2))


def test_activation_values():
    x = np.array([[-1000.0, -2.0, -0.5, 0.5, 3.0, 1000.0]])
    np.testing.assert_array_equal(ReLU().forward(x), np.maximum(x, 0))
    sig = np.asarray(Sigmoid().forward(x))
    assert np.all(np.isfinite(sig))
    np.testing.assert_allclose(sig, [[1 / (1 + math.exp(-v)) if v > -700 else 0.0 for v in x[0]]],
                               rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(Tanh().forward(x), np.tanh(x), rtol=1e-14)
    x_before = x.copy()
    for cls in (ReLU, Sigmoid, Tanh):
        cls().forward(x)
    np.testing.assert_array_equal(x, x_before)       # no in-place damage to the input


# ---------------------------------------------------------------- dropout

@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4, 3)])
def test_dropout_gradcheck_fixed_mask(p, shape):
    """train=True: a fresh Dropout with the same seed draws the same mask every time."""
    rng = np.random.default_rng(int(p * 10))
    x = rng.standard_normal(shape)
    layer = Dropout(p, seed=7)
    errors = grad_errors(layer, x, forward=lambda inp: Dropout(p, seed=7).forward(inp, train=True))
    assert_small(errors)


def test_dropout_semantics():
    x = np.random.default_rng(0).uniform(1.0, 2.0, (200, 50))
    p = 0.3
    a, b, c = Dropout(p, seed=1), Dropout(p, seed=1), Dropout(p, seed=2)
    ya, yb, yc = (np.asarray(layer.forward(x, train=True)) for layer in (a, b, c))
    np.testing.assert_array_equal(ya, yb)                  # same seed, same mask
    assert not np.array_equal(ya, yc)                      # another seed, another mask
    kept = ya != 0
    np.testing.assert_allclose(ya[kept], x[kept] / (1 - p), rtol=1e-12)   # inverted scaling
    assert abs(kept.mean() - (1 - p)) < 0.02
    assert not np.array_equal(np.asarray(a.forward(x, train=True)), ya)   # the stream moves on
    np.testing.assert_array_equal(a.forward(x, train=False), x)          # identity at test time
    identity = Dropout(0.0)
    identity.forward(x, train=True)
    np.testing.assert_array_equal(identity.backward(np.ones_like(x)), np.ones_like(x))
    np.testing.assert_array_equal(Dropout(0.0).forward(x, train=True), x)


# ---------------------------------------------------------------- batch norm

def _bn_case(shape, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    layer = BatchNorm(c, dtype="float64")
    layer.params["gamma"] = rng.uniform(0.5, 2.0, c)
    layer.params["beta"] = rng.standard_normal(c)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0, (1, c) + (1,) * (len(shape) - 2)) + 1.5
    return layer, x, rng


@pytest.mark.parametrize("shape", [(8, 4), (3, 2, 3, 4)], ids=["NC", "NCHW"])
def test_batchnorm_gradcheck(shape):
    layer, x, _ = _bn_case(shape, seed=len(shape) + 1)
    assert_small(grad_errors(layer, x, train=True))


@pytest.mark.parametrize("shape", [(16, 3), (4, 3, 5, 2)], ids=["NC", "NCHW"])
def test_batchnorm_forward_and_running_stats(shape):
    layer, x, _ = _bn_case(shape, seed=9)
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    bshape = (1, shape[1]) + (1,) * (len(shape) - 2)
    gamma, beta = layer.params["gamma"].copy(), layer.params["beta"].copy()
    out = np.asarray(layer.forward(x, train=True))
    normed = (out - beta.reshape(bshape)) / gamma.reshape(bshape)
    np.testing.assert_allclose(normed.mean(axis=axes), 0.0, atol=1e-10)
    np.testing.assert_allclose(normed.var(axis=axes), x.var(axis=axes) / (x.var(axis=axes) + 1e-5),
                               rtol=1e-10)
    mom = layer.momentum
    np.testing.assert_allclose(layer.buffers["running_mean"], (1 - mom) * x.mean(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(layer.buffers["running_var"], mom + (1 - mom) * x.var(axis=axes),
                               rtol=1e-12)
    # eval uses the running statistics, not the batch's
    rm, rv = layer.buffers["running_mean"].copy(), layer.buffers["running_var"].copy()
    y = np.asarray(layer.forward(x[:2], train=False))
    expect = (x[:2] - rm.reshape(bshape)) / np.sqrt(rv.reshape(bshape) + layer.eps) \
        * gamma.reshape(bshape) + beta.reshape(bshape)
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(layer.buffers["running_mean"], rm)    # eval leaves them alone


def test_batchnorm_rejects_other_ranks():
    with pytest.raises(ValueError):
        BatchNorm(3, dtype="float64").forward(np.zeros((2, 3, 4)))


# ---------------------------------------------------------------- loss

@pytest.mark.parametrize("one_hot", [False, True], ids=["int", "onehot"])
@pytest.mark.parametrize("dout", [1.0, 0.3])
def test_softmax_cross_entropy_gradcheck(one_hot, dout):
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((6, 4)) * 2
    labels = rng.integers(0, 4, size=6)
    t = np.eye(4)[labels] if one_hot else labels
    layer = SoftmaxCrossEntropy()
    loss = float(layer.forward(scores, t))
    assert loss == pytest.approx(naive.cross_entropy(scores, labels), rel=1e-12)
    d = np.asarray(layer.backward(dout))
    s = scores.copy()
    num = naive.numeric_grad(lambda: dout * float(SoftmaxCrossEntropy().forward(s, t)), s)
    assert naive.rel_error(d, num) < TOL


# ---------------------------------------------------------------- cnn_xp.gradcheck itself

def test_numerical_gradient_of_known_function():
    x = np.random.default_rng(0).standard_normal((3, 4))
    g = gradcheck.numerical_gradient(lambda: float(np.sum(x ** 3) + np.sum(np.sin(x))), x)
    assert g.shape == x.shape
    np.testing.assert_allclose(g, 3 * x ** 2 + np.cos(x), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("make", [
    lambda: Conv2D(2, 3, 3, stride=2, pad=1, rng=0, dtype="float64"),
    lambda: Affine(2 * 5 * 4, 3, rng=0, dtype="float64"),
    lambda: BatchNorm(2, dtype="float64"),
    lambda: Tanh(),
    lambda: MaxPool2D(2),
], ids=["conv", "affine", "bn", "tanh", "maxpool"])
def test_check_layer_reports_every_param(make):
    layer = make()
    x = np.random.default_rng(2).standard_normal((2, 2, 5, 4))
    errors = gradcheck.check_layer(layer, x, seed=0)
    assert set(errors) == {"x", *layer.params}
    assert all(e < TOL for e in errors.values()), errors


def test_check_layer_catches_a_wrong_backward():
    class BadAffine(Affine):
        def backward(self, dout):
            dx = super().backward(dout)
            self.grads["W"] = self.grads["W"] * 1.01
            return dx

    class BadTanh(Tanh):
        def backward(self, dout):
            return dout * (1 - self._out)

    x = np.random.default_rng(2).standard_normal((3, 4))
    errors = gradcheck.check_layer(BadAffine(4, 2, rng=0, dtype="float64"), x)
    assert errors["W"] > 1e-3 and errors["x"] < TOL
    assert gradcheck.check_layer(BadTanh(), x)["x"] > 1e-2
