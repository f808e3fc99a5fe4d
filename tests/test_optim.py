"""Optimizers: updates against hand-written reference formulas, in-place semantics,
re-assigned params, state_dict round trips."""
import math

import numpy as np
import pytest

from cnn_xp import optim
from cnn_xp.layers import Affine, ReLU
from cnn_xp.model import Sequential

LR = 0.05


def make_model(seed=0, dtype="float64"):
    return Sequential([Affine(3, 4, rng=seed, dtype=dtype), ReLU(), Affine(4, 2, rng=seed + 1, dtype=dtype)])


def grad_sequence(model, steps, seed=1):
    """Fixed per-step gradients for every parameter: [{name: grad}]."""
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(layer.params[key].shape)
             for name, layer, key in model.params_and_grads()} for _ in range(steps)]


def set_grads(model, grads):
    for name, layer, key in model.params_and_grads():
        layer.grads[key] = grads[name].astype(layer.params[key].dtype)


def params_of(model):
    return {name: np.array(layer.params[key]) for name, layer, key in model.params_and_grads()}


# Reference formulas, written from the usual textbook definitions (state per parameter).

def ref_sgd(p, grads, lr):
    for g in grads:
        p = p - lr * g
    return p


def ref_momentum(p, grads, lr, mu):
    v = np.zeros_like(p)
    for g in grads:
        v = mu * v - lr * g
        p = p + v
    return p


def ref_nesterov(p, grads, lr, mu):
    # PyTorch's form: buf = mu * buf + g; p -= lr * (g + mu * buf)
    buf = np.zeros_like(p)
    for g in grads:
        buf = mu * buf + g
        p = p - lr * (g + mu * buf)
    return p


def ref_adagrad(p, grads, lr, eps):
    h = np.zeros_like(p)
    for g in grads:
        h = h + g ** 2
        p = p - lr * g / (np.sqrt(h) + eps)
    return p


def ref_rmsprop(p, grads, lr, decay, eps):
    h = np.zeros_like(p)
    for g in grads:
        h = decay * h + (1 - decay) * g ** 2
        p = p - lr * g / (np.sqrt(h) + eps)
    return p


def ref_adam(p, grads, lr, b1, b2, eps):
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


CASES = {
    "sgd": (dict(), lambda p, gs: ref_sgd(p, gs, LR)),
    "momentum": (dict(momentum=0.8), lambda p, gs: ref_momentum(p, gs, LR, 0.8)),
    "nesterov": (dict(momentum=0.7), lambda p, gs: ref_nesterov(p, gs, LR, 0.7)),
    "adagrad": (dict(eps=1e-6), lambda p, gs: ref_adagrad(p, gs, LR, 1e-6)),
    "rmsprop": (dict(decay=0.9, eps=1e-6), lambda p, gs: ref_rmsprop(p, gs, LR, 0.9, 1e-6)),
    "adam": (dict(beta1=0.8, beta2=0.95, eps=1e-6), lambda p, gs: ref_adam(p, gs, LR, 0.8, 0.95, 1e-6)),
}


def test_registry_has_every_optimizer():
    assert set(optim.OPTIMIZERS) == set(CASES)
    assert optim.OPTIMIZERS["adam"] is optim.Adam
    assert isinstance(optim.create("Adam", make_model(), lr=0.1), optim.Adam)
    with pytest.raises(ValueError):
        optim.create("lbfgs", make_model())


@pytest.mark.parametrize("lr", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_learning_rate_is_rejected(lr):
    with pytest.raises(ValueError):
        optim.SGD(make_model(), lr=lr)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("steps", [1, 3])
def test_update_matches_reference(name, steps):
    kwargs, ref = CASES[name]
    model = make_model()
    start = params_of(model)
    grads = grad_sequence(model, steps)
    opt = optim.OPTIMIZERS[name](model, lr=LR, **kwargs)
    for g in grads:
        set_grads(model, g)
        opt.step()
    for pname, p in params_of(model).items():
        expect = ref(start[pname], [g[pname] for g in grads])
        np.testing.assert_allclose(p, expect, rtol=1e-12, atol=1e-14, err_msg=pname)
        assert not np.allclose(p, start[pname])


@pytest.mark.parametrize("name", sorted(CASES))
def test_updates_in_place_and_honours_reassigned_params(name):
    kwargs, _ = CASES[name]
    model = make_model()
    layer = model.layers[0]
    opt = optim.OPTIMIZERS[name](model, lr=LR, **kwargs)
    grads = grad_sequence(model, 3)
    W = layer.params["W"]
    before = W.copy()
    set_grads(model, grads[0])
    opt.step()
    assert layer.params["W"] is W                  # same object ...
    assert not np.array_equal(W, before)           # ... updated in place
    # re-assign W: the next step must update the new array, and leave the old one alone
    new_W = np.full_like(W, 0.5)
    layer.params["W"] = new_W
    old_snapshot = W.copy()
    set_grads(model, grads[1])
    opt.step()
    assert layer.params["W"] is new_W
    assert not np.all(new_W == 0.5)
    np.testing.assert_array_equal(W, old_snapshot)


def test_params_without_grads_are_left_alone():
    model = make_model()
    start = params_of(model)
    opt = optim.Adam(model, lr=LR)
    opt.step()                                   # no backward yet: nothing to apply
    for pname, p in params_of(model).items():
        np.testing.assert_array_equal(p, start[pname])


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_round_trip_continues_identically(name):
    kwargs, _ = CASES[name]
    grads = grad_sequence(make_model(), 5)
    model_a = make_model()
    opt_a = optim.OPTIMIZERS[name](model_a, lr=LR, **kwargs)
    for g in grads[:3]:
        set_grads(model_a, g)
        opt_a.step()
    saved = opt_a.state_dict()
    saved_copy = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in saved.items()}
    for v in saved.values():
        assert isinstance(v, (np.ndarray, int, float))

    # two fresh optimizers, both loaded from the same dict, on copies of the model
    resumed = []
    for seed in (10, 20):
        model = make_model(seed=seed)
        model.load_state_dict(model_a.state_dict())
        opt = optim.OPTIMIZERS[name](model, lr=LR * 3, **kwargs)   # lr comes from the state
        opt.load_state_dict(saved)
        resumed.append((model, opt))
    for g in grads[3:]:
        for model, opt in [(model_a, opt_a)] + resumed:
            set_grads(model, g)
            opt.step()
    for model, opt in resumed:
        assert opt.lr == LR
        for pname, p in params_of(model).items():
            np.testing.assert_array_equal(p, params_of(model_a)[pname])
    # stepping never writes back into a saved state dict
    for k, v in saved.items():
        np.testing.assert_array_equal(v, saved_copy[k])


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_optimizer_lowers_a_loss(name):
    kwargs, _ = CASES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3))
    t = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    model = make_model()
    opt = optim.OPTIMIZERS[name](model, lr=LR, **kwargs)
    first = float(model.loss(x, t))
    for _ in range(40):
        model.loss(x, t)
        model.backward()
        opt.step()
    last = float(model.loss(x, t))
    assert math.isfinite(last) and last < 0.8 * first
