"""The zoo: shapes, parameter counts, defaults, seeding, first-layer input gradient."""
import numpy as np
import pytest

from cnn_xp import models
from cnn_xp.layers import Conv2D, Dropout

# Hand-counted weights + biases of each architecture.
EXPECTED_PARAMS = {
    "one_conv": (16 * 9 + 16) + (16 * 14 * 14 * 512 + 512) + (512 * 10 + 10),
    "simple_convnet": (30 * 25 + 30) + (30 * 12 * 12 * 100 + 100) + (100 * 10 + 10),
    "deep_convnet": (16 * 9 + 16) + (16 * 16 * 9 + 16) + (16 * 32 * 9 + 32) + (32 * 32 * 9 + 32)
    + (32 * 64 * 9 + 64) + (64 * 64 * 9 + 64) + (64 * 2 * 2 * 50 + 50) + (50 * 10 + 10),
    "lenet5": (6 * 25 + 6) + (6 * 16 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10),
    "fast_mnist": (24 * 25 + 24) + (24 * 32 * 9 + 32) + (32 * 5 * 5 * 256 + 256) + (256 * 10 + 10),
    # conv + BN, then per block 2 convs (no bias) + 2 BNs (+ a 1x1 projection conv + BN), FC
    "resnet20": (16 * 9 + 32) + 3 * (2 * 16 * 16 * 9 + 4 * 16) + (16 * 32 * 9 + 32 * 32 * 9 + 4 * 32
                + 16 * 32 + 2 * 32) + 2 * (2 * 32 * 32 * 9 + 4 * 32) + (32 * 64 * 9 + 64 * 64 * 9 + 4 * 64
                + 32 * 64 + 2 * 64) + 2 * (2 * 64 * 64 * 9 + 4 * 64) + (64 * 10 + 10),
}


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_forward_shape_params_and_dtype(name):
    model = models.build(name, seed=0)
    assert model.num_params() == EXPECTED_PARAMS[name]
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    scores = model.predict(x)
    assert scores.shape == (3, 10) and scores.dtype == np.float32
    assert model.layers[0].need_input_grad is False


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_training_step_skips_first_input_grad_and_fills_grads(name):
    model = models.build(name, seed=1)
    x = np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32)
    model.loss(x, np.array([0, 1, 2, 3]))
    assert model.backward() is None
    for _, layer, key in model.params_and_grads():
        assert layer.grads[key].shape == layer.params[key].shape
        assert layer.grads[key].dtype == np.float32


def test_deep_convnet_follows_seed_004_pseudocode_shapes():
    model = models.build("deep_convnet")
    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    shapes = []
    for layer in model.layers:
        x = layer.forward(x, train=False)
        if isinstance(layer, Conv2D) or type(layer).__name__ == "MaxPool2D":
            shapes.append(x.shape[1:])
    assert shapes == [(16, 26, 26), (16, 24, 24), (16, 12, 12), (32, 10, 10), (32, 8, 8), (32, 4, 4),
                      (64, 4, 4), (64, 4, 4), (64, 2, 2)]
    assert sum(isinstance(layer, Dropout) for layer in model.layers) == 2


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (models.build("simple_convnet", seed=s) for s in (3, 3, 4))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert not np.array_equal(sa["0.W"], sc["0.W"])


def test_initialisations_match_the_seeds():
    w = models.build("one_conv", seed=0).state_dict()
    assert w["3.W"].min() >= -0.1 and w["3.W"].max() <= 0.1 and w["3.W"].std() > 0.05
    assert not w["0.b"].any() and not w["3.b"].any()
    s = models.build("simple_convnet", seed=0).state_dict()
    assert abs(float(s["3.W"].std()) - 0.01) < 0.001
    d = models.build("deep_convnet", seed=0).state_dict()
    he_std = np.sqrt(2.0 / (32 * 9))
    assert abs(float(d["10.W"].std()) - he_std) / he_std < 0.05  # conv 32->64


def test_float64_build():
    model = models.build("lenet5", dtype="float64")
    assert model.state_dict()["0.W"].dtype == np.float64


def test_defaults_are_the_seeds():
    spec = models.MODELS
    assert (spec["simple_convnet"].optimizer, spec["simple_convnet"].lr, spec["simple_convnet"].batch_size,
            spec["simple_convnet"].epochs) == ("adam", 1e-3, 100, 20)
    assert (spec["deep_convnet"].optimizer, spec["deep_convnet"].lr, spec["deep_convnet"].batch_size,
            spec["deep_convnet"].epochs) == ("adagrad", 0.01, 500, 24)  # the seed: 8 (docs/mnist.md)
    assert (spec["one_conv"].optimizer, spec["one_conv"].batch_size, spec["one_conv"].val_size,
            spec["one_conv"].split_seed) == ("sgd", 100, 10_000, 1)
    from cnn_xp.optim import OPTIMIZERS
    assert all(s.optimizer in OPTIMIZERS for s in spec.values())


def test_unknown_model():
    with pytest.raises(KeyError, match="simple_convnet"):
        models.build("resnet50")
