"""The zoo's recipes: deep_convnet's FC2 scaling and learning-rate groups are seed 004's
non-inverted dropout, step for step; every default names parameters its model has."""
import numpy as np
import pytest

from cnn_xp import models, optim
from cnn_xp.layers import Dropout, SoftmaxCrossEntropy
from cnn_xp.model import Sequential


class NonInvertedDropout(Dropout):
    """Seed 004's (DLFS's) dropout: x * mask in training, x * (1 - p) at test."""

    def forward(self, x, train=True):
        return super().forward(x, train) * (1.0 - self.p)

    def backward(self, dout):
        return super().backward(dout * (1.0 - self.p))


def seed_004_net(seed):
    """The seed's net as written: non-inverted dropout, FC2 at plain He."""
    layers = models.build("deep_convnet", seed=seed, dtype="float64").layers
    fc2 = models.DEEP_FC2
    assert type(layers[fc2 - 1]) is Dropout and type(layers[fc2 + 1]) is Dropout
    layers[fc2 - 1] = NonInvertedDropout(0.5, seed=seed * 2 + 1)
    layers[fc2 + 1] = NonInvertedDropout(0.5, seed=seed * 2 + 2)
    layers[fc2].params["W"] = layers[fc2].params["W"] * 4.0
    return Sequential(layers, loss=SoftmaxCrossEntropy(), dtype="float64")


def test_deep_convnet_is_seed_004s_non_inverted_dropout_step_for_step(monkeypatch):
    """Same losses, predictions and (scaled) weights as the seed's net over AdaGrad steps:
    bit for bit when AdaGrad's eps is negligible (powers of two scale exactly)."""
    monkeypatch.setenv("CNN_XP_THREADS", "1")
    seed = 3
    ours = models.build("deep_convnet", seed=seed, dtype="float64")
    theirs = seed_004_net(seed)
    groups = [dict(g) for g in models.MODELS["deep_convnet"].lr_groups]
    assert groups == [dict(g) for g in models.DEEP_NONINVERTED_GROUPS]
    opt_ours = optim.AdaGrad(ours, lr=0.01, eps=1e-30, param_groups=groups)
    opt_theirs = optim.AdaGrad(theirs, lr=0.01, eps=1e-30)
    rng = np.random.default_rng(0)
    for _ in range(12):
        x, t = rng.random((16, 1, 28, 28)), rng.integers(0, 10, 16)
        assert float(ours.loss(x, t)) == float(theirs.loss(x, t))
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            model.backward()
            opt.step()
    scale = {f"{models.DEEP_FC2}.W": 0.25, f"{models.DEEP_FC2}.b": 0.5}
    mine, seeds = ours.state_dict(), theirs.state_dict()
    for key in mine:
        assert np.array_equal(mine[key], scale.get(key, 1.0) * seeds[key]), key
    x = rng.random((32, 1, 28, 28))
    assert np.array_equal(ours.predict(x), theirs.predict(x))


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_default_group_names_parameters_of_its_model(name):
    spec = models.MODELS[name]
    model = models.build(name)
    opt = optim.create(spec.optimizer, model, lr=spec.lr, **spec.optimizer_kwargs,
                       **({"param_groups": [dict(g) for g in spec.lr_groups]} if spec.lr_groups else {}))
    assert len(opt.param_groups) == len(spec.lr_groups)


def test_recipes_of_the_seeds():
    one = models.MODELS["one_conv"]
    assert (one.optimizer, one.lr, one.batch_size, one.val_size) == ("sgd", 0.5, 100, 10_000)
    assert one.augment == {"shift": 0.1} and one.epochs == 40  # the seed's recipe + shifts (docs/mnist.md)
    model = models.build("one_conv")
    opt = optim.SGD(model, lr=one.lr, param_groups=[dict(g) for g in one.lr_groups])
    assert opt.lr_of("0.W") == opt.lr_of("0.b") == 0.5 / 784 and opt.lr_of("3.W") == 0.5
    deep = models.MODELS["deep_convnet"]
    assert (deep.optimizer, deep.lr, deep.batch_size) == ("adagrad", 0.01, 500)
    assert models.MODELS["lenet5"].augment and models.MODELS["lenet5"].schedule["name"] == "cosine"
    fast = models.MODELS["fast_mnist"]
    assert (fast.optimizer, fast.lr, fast.batch_size, fast.epochs, fast.optimizer_kwargs) == (
        "adam", 0.01, 256, 1, {"beta1": 0.7, "beta2": 0.9})
