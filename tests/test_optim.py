"""Optimizers: updates against hand-written reference formulas, in-place semantics,
re-assigned params, state_dict round trips; weight decay (L2 and AdamW's decoupled decay)
against a hand-computed step and PyTorch's optimizers (skipped without torch)."""
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


def ref_adamw(p, grads, lr, b1, b2, eps, wd):
    # PyTorch's AdamW: p *= 1 - lr * wd, then the Adam step on the plain gradient
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
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
    "adamw": (dict(beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.3),
              lambda p, gs: ref_adamw(p, gs, LR, 0.8, 0.95, 1e-6, 0.3)),
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


# ---------------------------------------------------------------- weight decay

L2_NAMES = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"]


@pytest.mark.parametrize("name", L2_NAMES)
def test_weight_decay_is_the_l2_term_added_to_the_gradient(name):
    """weight_decay=wd on gradients g steps exactly as no decay on g + wd * p."""
    kwargs, _ = CASES[name]
    grads = grad_sequence(make_model(), 4)
    decayed, plain = make_model(), make_model()
    opt_d = optim.OPTIMIZERS[name](decayed, lr=LR, weight_decay=0.2, **kwargs)
    opt_p = optim.OPTIMIZERS[name](plain, lr=LR, **kwargs)
    for g in grads:
        set_grads(decayed, g)
        saved = {n: layer.grads[k].copy() for n, layer, k in decayed.params_and_grads()}
        opt_d.step()
        for n, layer, k in decayed.params_and_grads():  # the layers' grads are not changed
            np.testing.assert_array_equal(layer.grads[k], saved[n])
        set_grads(plain, {n: g[n] + 0.2 * p for n, p in params_of(plain).items()})
        opt_p.step()
    for pname, p in params_of(decayed).items():
        np.testing.assert_array_equal(p, params_of(plain)[pname])


def test_one_hand_computed_step_of_each_decay():
    model = Sequential([Affine(1, 1, dtype="float64")])
    layer = model.layers[0]

    def reset():
        layer.params["W"], layer.params["b"] = np.array([[2.0]]), np.array([-1.0])
        layer.grads["W"], layer.grads["b"] = np.array([[0.5]]), np.array([0.25])

    reset()
    optim.SGD(model, lr=0.1, weight_decay=0.01).step()
    # W: 2 - 0.1 * (0.5 + 0.01 * 2) = 1.948;  b: -1 - 0.1 * (0.25 - 0.01) = -1.024
    np.testing.assert_allclose(layer.params["W"], [[1.948]], rtol=1e-15)
    np.testing.assert_allclose(layer.params["b"], [-1.024], rtol=1e-15)
    reset()
    optim.Adam(model, lr=0.1, weight_decay=0.5).step()
    # first Adam step: p -= lr * g' / (|g'| + eps') with g' = g + wd * p: W g' = 1.5, b g' = -0.25
    np.testing.assert_allclose(layer.params["W"], [[2.0 - 0.1 * 1.5 / (1.5 + 1e-8)]], rtol=1e-15)
    np.testing.assert_allclose(layer.params["b"], [-1.0 + 0.1 * 0.25 / (0.25 + 1e-8)], rtol=1e-15)
    reset()
    optim.AdamW(model, lr=0.1, weight_decay=0.5).step()
    # p *= 1 - 0.1 * 0.5 first (W 1.9, b -0.95), then the Adam step on the plain gradient
    np.testing.assert_allclose(layer.params["W"], [[1.9 - 0.1 * 0.5 / (0.5 + 1e-8)]], rtol=1e-15)
    np.testing.assert_allclose(layer.params["b"], [-0.95 - 0.1 * 0.25 / (0.25 + 1e-8)], rtol=1e-15)


def test_adamw_decays_with_the_group_and_schedule_rate():
    grads = grad_sequence(make_model(), 3)
    model = make_model()
    start = params_of(model)
    opt = optim.AdamW(model, lr=LR, weight_decay=0.3, param_groups=[{"params": ["0.*"], "lr_scale": 0.5}])
    opt.lr_factor = 0.4
    for g in grads:
        set_grads(model, g)
        opt.step()
    for pname, p in params_of(model).items():
        lr = LR * 0.4 * (0.5 if pname.startswith("0.") else 1.0)
        expect = ref_adamw(start[pname], [g[pname] for g in grads], lr, 0.9, 0.999, 1e-8, 0.3)
        np.testing.assert_allclose(p, expect, rtol=1e-12, atol=1e-14, err_msg=pname)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_bad_weight_decay_is_rejected(name, bad):
    kwargs, _ = CASES[name]
    kwargs = {k: v for k, v in kwargs.items() if k != "weight_decay"}
    with pytest.raises(ValueError, match="weight_decay"):
        optim.OPTIMIZERS[name](make_model(), lr=LR, weight_decay=bad, **kwargs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_weight_decay_is_saved_and_restored(name):
    kwargs, _ = CASES[name]
    kwargs = {k: v for k, v in kwargs.items() if k != "weight_decay"}
    opt = optim.OPTIMIZERS[name](make_model(), lr=LR, weight_decay=0.25, **kwargs)
    assert opt.hyperparameters()["weight_decay"] == 0.25 and "weight_decay=0.25" in repr(opt)
    state = opt.state_dict()
    assert state["weight_decay"] == 0.25
    other = optim.OPTIMIZERS[name](make_model(), lr=LR, weight_decay=0.0, **kwargs)
    other.load_state_dict(state)
    assert other.weight_decay == 0.25
    del state["weight_decay"]  # a state saved before weight decay existed keeps the constructor's
    other = optim.OPTIMIZERS[name](make_model(), lr=LR, weight_decay=0.125, **kwargs)
    other.load_state_dict(state)
    assert other.weight_decay == 0.125
    with pytest.raises(ValueError, match="weight_decay"):
        other.load_state_dict(dict(state, weight_decay=-1.0))
    assert other.weight_decay == 0.125


def test_adamw_defaults_to_pytorchs_decay():
    assert optim.AdamW(make_model()).weight_decay == 0.01
    assert optim.create("AdamW", make_model(), lr=0.1).weight_decay == 0.01
    assert all(optim.OPTIMIZERS[n](make_model(), lr=LR).weight_decay == 0.0 for n in L2_NAMES)


def torch_optimizer(torch, name, params, kwargs):
    """PyTorch's optimizer matching ours of ``name`` with our ``kwargs``."""
    wd = kwargs.get("weight_decay", 0.0)
    o = torch.optim
    if name == "sgd":
        return o.SGD(params, lr=LR, weight_decay=wd)
    if name in ("momentum", "nesterov"):
        return o.SGD(params, lr=LR, momentum=kwargs["momentum"], nesterov=name == "nesterov", weight_decay=wd)
    if name == "adagrad":
        return o.Adagrad(params, lr=LR, eps=kwargs["eps"], weight_decay=wd)
    if name == "rmsprop":
        return o.RMSprop(params, lr=LR, alpha=kwargs["decay"], eps=kwargs["eps"], weight_decay=wd)
    cls = o.AdamW if name == "adamw" else o.Adam
    return cls(params, lr=LR, betas=(kwargs["beta1"], kwargs["beta2"]), eps=kwargs["eps"], weight_decay=wd)


@pytest.mark.parametrize("name", sorted(CASES))
def test_weight_decay_matches_pytorch(name):
    """Our optimizer with weight_decay against PyTorch's (SGD, Adam, AdamW, ...) over four
    steps of the same gradients, in float64."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'cnn_xp[bench]')")
    kwargs = dict(CASES[name][0], weight_decay=0.3)
    model = make_model()
    theirs = {n: torch.tensor(p, requires_grad=True) for n, p in params_of(model).items()}
    opt = optim.OPTIMIZERS[name](model, lr=LR, **kwargs)
    opt_t = torch_optimizer(torch, name, list(theirs.values()), kwargs)
    for g in grad_sequence(model, 4):
        set_grads(model, g)
        opt.step()
        for n, p in theirs.items():
            p.grad = torch.from_numpy(g[n].copy())
        opt_t.step()
    for n, p in params_of(model).items():
        np.testing.assert_allclose(p, theirs[n].detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=n)
