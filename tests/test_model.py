"""Sequential: forward/loss/backward, whole-model gradient check, predict/accuracy,
train vs eval, state_dict round trips."""
import numpy as np
import pytest

import naive
from cnn_xp import ops
from cnn_xp.layers import (Affine, BatchNorm, Conv2D, Dropout, Flatten, MaxPool2D, ReLU,
                           SoftmaxCrossEntropy, Tanh)
from cnn_xp.model import Sequential


def small_net(seed=0, dtype="float32", dropout=0.0, input_grad=False):
    layers = [
        Conv2D(2, 3, 3, pad=1, rng=seed, dtype=dtype),
        BatchNorm(3, dtype=dtype),
        ReLU(),
        MaxPool2D(2),
        Flatten(),
        Affine(3 * 3 * 2, 5, rng=seed + 1, dtype=dtype),
        Tanh(),
    ]
    if dropout:
        layers.append(Dropout(dropout, seed=seed + 2))
    layers.append(Affine(5, 4, rng=seed + 3, dtype=dtype))
    return Sequential(layers, loss=SoftmaxCrossEntropy(), input_grad=input_grad)


def batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2, 6, 5)).astype(np.float32), rng.integers(0, 4, size=n)


def test_names_device_dtype():
    model = small_net()
    names = [name for name, _, _ in model.params_and_grads()]
    assert names == ["0.W", "0.b", "1.gamma", "1.beta", "5.W", "5.b", "7.W", "7.b"]
    assert model.device == "cpu" and model.dtype == "float32"
    assert model.to("cpu") is model
    state = model.state_dict()
    assert set(state) == set(names) | {"1.running_mean", "1.running_var"}
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert small_net(dtype="float64").dtype == "float64"


def test_loss_matches_layer_by_layer_forward():
    model = small_net()
    x, t = batch()
    loss = model.loss(x, t, train=False)
    h = x
    for layer in model.layers:
        h = layer.forward(h, train=False)
    np.testing.assert_allclose(np.asarray(model.predict(x)), h, rtol=1e-6)
    assert float(loss) == pytest.approx(float(ops.cross_entropy(h, t)), rel=1e-6)


def test_model_gradient_check_float64():
    """model.backward() fills every param's grad; compare all of them (and dx) with numerics.
    Dropout's masks are replayed through random_state()/set_random_state()."""
    model = small_net(dtype="float64", dropout=0.3, input_grad=True)
    rng = np.random.default_rng(3)
    for name, layer, key in model.params_and_grads():     # non-trivial gamma/beta/biases
        layer.params[key] = layer.params[key] + 0.3 * rng.standard_normal(layer.params[key].shape)
    x = rng.standard_normal((4, 2, 6, 5))
    t = np.array([0, 3, 1, 1])
    rs = model.random_state()
    assert rs

    def loss():
        model.set_random_state(rs)
        return float(model.loss(x, t, train=True))

    loss()
    dx = model.backward()
    assert dx is not None and dx.shape == x.shape
    grads = {name: np.array(layer.grads[key]) for name, layer, key in model.params_and_grads()}
    assert naive.rel_error(dx, naive.numeric_grad(loss, x)) < 1e-6
    for name, layer, key in model.params_and_grads():
        num = naive.numeric_grad(loss, layer.params[key])
        err = naive.rel_error(grads[name], num)
        # "0.b" feeds a BatchNorm, so its true gradient is exactly 0: judge it absolutely
        assert err < 1e-6 or np.max(np.abs(grads[name] - num)) < 1e-8, (name, err)
    np.testing.assert_allclose(grads["0.b"], 0.0, atol=1e-12)


def test_first_layer_skips_input_gradient_by_default():
    model = small_net()
    x, t = batch()
    model.loss(x, t)
    assert model.backward() is None
    assert set(model.layers[0].grads) == {"W", "b"}


def test_predict_and_accuracy():
    model = small_net()
    x, t = batch(n=23, seed=4)
    scores = np.asarray(model.predict(x))
    assert scores.shape == (23, 4) and scores.dtype == np.float32
    expect = float(np.mean(scores.argmax(axis=1) == t))
    acc = model.accuracy(x, t)
    assert isinstance(acc, float) and acc == pytest.approx(expect)
    assert model.accuracy(x, t, batch_size=5) == pytest.approx(expect)
    assert model.accuracy(x, np.eye(4)[t], batch_size=7) == pytest.approx(expect)
    # the accuracy is the right number: relabel so that every prediction is right, or wrong
    assert model.accuracy(x, scores.argmax(axis=1)) == 1.0
    assert model.accuracy(x, (scores.argmax(axis=1) + 1) % 4) == 0.0


def test_predict_casts_input_to_model_dtype():
    model = small_net()
    x, _ = batch()
    out = np.asarray(model.predict(x.astype(np.float64)))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.asarray(model.predict(x)))


def test_train_vs_eval_dropout_and_batchnorm():
    model = small_net(dropout=0.5)
    x, t = batch(n=8)
    eval_1 = np.asarray(model.predict(x))
    eval_2 = np.asarray(model.predict(x, train=False))
    np.testing.assert_array_equal(eval_1, eval_2)          # eval is deterministic
    train_1 = np.asarray(model.predict(x, train=True))
    train_2 = np.asarray(model.predict(x, train=True))
    assert not np.allclose(train_1, eval_1)                # dropout + batch statistics
    assert not np.array_equal(train_1, train_2)            # a new dropout mask each call
    # eval after training calls uses the (updated) running statistics, still deterministic
    np.testing.assert_array_equal(np.asarray(model.predict(x)), np.asarray(model.predict(x)))
    assert not np.array_equal(np.asarray(model.predict(x)), eval_1)


def _train_a_little(model, steps=3, seed=0):
    x, t = batch(n=8, seed=seed)
    for _ in range(steps):
        model.loss(x, t)
        model.backward()
        for _, layer, key in model.params_and_grads():
            layer.params[key] -= 0.1 * layer.grads[key]


def test_state_dict_round_trip():
    src = small_net(seed=0, dropout=0.2)
    _train_a_little(src)                       # moves params and BatchNorm running stats
    state = src.state_dict()
    snapshot = {k: v.copy() for k, v in state.items()}
    dst = small_net(seed=5, dropout=0.2)
    x, _ = batch(n=5, seed=9)
    assert not np.allclose(np.asarray(dst.predict(x)), np.asarray(src.predict(x)))
    dst.load_state_dict(state)
    np.testing.assert_array_equal(np.asarray(dst.predict(x)), np.asarray(src.predict(x)))
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(v, snapshot[k])
        assert v.dtype == np.float32
    # the dict is a snapshot: neither model's later training changes it
    _train_a_little(src, seed=1)
    _train_a_little(dst, seed=2)
    for k, v in state.items():
        np.testing.assert_array_equal(v, snapshot[k])
    # a second model loaded from the same dict is not tied to the first one
    other = small_net(seed=7, dropout=0.2)
    other.load_state_dict(state)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, snapshot[k])


def test_load_state_dict_casts_to_model_dtype():
    src = small_net(dtype="float64")
    dst = small_net(seed=3)
    dst.load_state_dict(src.state_dict())
    for k, v in dst.state_dict().items():
        assert v.dtype == np.float32
        np.testing.assert_allclose(v, src.state_dict()[k].astype(np.float32))


def test_load_state_dict_rejects_mismatches():
    model = small_net()
    state = model.state_dict()
    missing = dict(state)
    del missing["5.W"]
    with pytest.raises(ValueError):
        model.load_state_dict(missing)
    extra = dict(state, **{"9.W": np.zeros(3)})
    with pytest.raises(ValueError):
        model.load_state_dict(extra)
    bad_shape = dict(state, **{"5.W": np.zeros((3, 3))})
    with pytest.raises(ValueError):
        model.load_state_dict(bad_shape)


def test_empty_sequential_is_rejected():
    with pytest.raises(ValueError):
        Sequential([])
