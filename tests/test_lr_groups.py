"""Per-parameter learning rates (parameter groups): each group's rate reaches its update
rule, through every optimizer; state round trips; a group naming no parameter is an error."""
import numpy as np
import pytest

from cnn_xp import optim
from cnn_xp.layers import Affine, ReLU
from cnn_xp.model import Sequential


def make_model(seed=0):
    return Sequential([Affine(3, 4, rng=seed, dtype="float64"), ReLU(), Affine(4, 2, rng=seed + 1, dtype="float64")])


def set_grads(model, seed=1):
    rng = np.random.default_rng(seed)
    for _, layer, key in model.params_and_grads():
        layer.grads[key] = rng.standard_normal(layer.params[key].shape)


def params(model):
    return {name: np.array(layer.params[key]) for name, layer, key in model.params_and_grads()}


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_a_group_trains_as_its_own_optimizer_with_that_rate(name):
    """Two steps with groups == each parameter stepped by an optimizer of its group's rate."""
    grouped = make_model()
    opt = optim.create(name, grouped, lr=0.1, param_groups=[{"params": ["0.*"], "lr_scale": 0.01},
                                                             {"params": ["2.W"], "lr": 0.3}])
    expected_rate = {"0.W": 0.001, "0.b": 0.001, "2.W": 0.3, "2.b": 0.1}
    for pname, rate in expected_rate.items():
        assert opt.lr_of(pname) == pytest.approx(rate, rel=1e-15)
    plain = {rate: make_model() for rate in set(expected_rate.values())}
    plain_opts = {rate: optim.create(name, m, lr=rate) for rate, m in plain.items()}
    for step in range(2):
        set_grads(grouped, seed=step)
        opt.step()
        for rate, m in plain.items():
            set_grads(m, seed=step)
            plain_opts[rate].step()
    got = params(grouped)
    for pname, rate in expected_rate.items():
        np.testing.assert_allclose(got[pname], params(plain[rate])[pname], rtol=1e-12, atol=1e-15)


def test_groups_survive_state_dict_round_trip_and_are_validated_on_load():
    model = make_model()
    opt = optim.Adam(model, lr=0.01, param_groups=[{"params": ["0.W", "0.b"], "lr_scale": 0.5}])
    set_grads(model)
    opt.step()
    state = opt.state_dict()
    assert state["param_groups"] == [{"patterns": ["0.W", "0.b"], "lr_scale": 0.5}]
    fresh = optim.Adam(make_model(), lr=0.01)
    fresh.load_state_dict(state)
    assert fresh.lr_of("0.W") == 0.005 and fresh.lr_of("2.W") == 0.01
    assert fresh.param_groups == opt.param_groups
    small = optim.Adam(Sequential([Affine(3, 2, rng=0, dtype="float64")]), lr=0.01)
    state["param_groups"] = [{"patterns": ["2.*"], "lr": 0.1}]
    with pytest.raises(ValueError, match="names no parameter"):
        small.load_state_dict(state)


def test_lr_factor_scales_all_groups():
    opt = optim.SGD(make_model(), lr=0.2, param_groups=[{"params": "2.*", "lr": 0.05}])
    opt.lr_factor = 0.5
    assert (opt.lr_of("0.W"), opt.lr_of("2.b")) == (0.1, 0.025)


@pytest.mark.parametrize("groups, message", [
    ([{"params": ["5.*"], "lr": 0.1}], r"group 0 \(5\.\*\) names no parameter of this model; its parameters are 0.W"),
    ([{"params": ["0.W"], "lr": 0.1}, {"params": ["0.*"], "lr": 0.2}], "0.W is in parameter groups 0 and 1"),
    ([{"params": ["0.W"]}], "exactly one of 'lr', 'lr_scale'"),
    ([{"params": ["0.W"], "lr": 0.1, "lr_scale": 2}], "exactly one of"),
    ([{"params": ["0.W"], "lr": -1}], "must be a positive number"),
    ([{"params": ["0.W"], "lr": 0.1, "momentum": 0.5}], "unknown key"),
    ([{"params": [], "lr": 0.1}], "must list parameter names"),
    (["0.W"], "must be a dict"),
])
def test_bad_groups_are_one_line_value_errors(groups, message):
    with pytest.raises(ValueError, match=message) as info:
        optim.SGD(make_model(), lr=0.1, param_groups=groups)
    assert "\n" not in str(info.value)


def test_repr_names_the_groups():
    opt = optim.SGD(make_model(), lr=0.5, param_groups=[{"params": ["0.*"], "lr_scale": 1 / 784}])
    assert repr(opt) == "SGD(lr=0.5, group 0.*: lr_scale=0.00127551)"
