"""cnn_xp.explain: feature maps, saliency (against finite differences) and Grad-CAM (against
nets whose answer is known by hand); the model is left exactly as it was."""
import copy

import numpy as np
import pytest

from cnn_xp import Sequential, explain, models
from cnn_xp.gradcheck import numerical_gradient, relative_error
from cnn_xp.layers import (Affine, BatchNorm, Conv2D, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU,
                           Residual, Tanh)


def small_net(dtype="float64", residual=False):
    """Conv2D, BatchNorm, ReLU, MaxPool2D, (Residual,) Dropout, Affine; trained a few steps so
    the running statistics, the dropout stream and the caches are not at their start."""
    layers = [Conv2D(2, 3, 3, pad=1, rng=1), BatchNorm(3), ReLU(), MaxPool2D(2)]
    if residual:
        layers.append(Residual(3, 4, 1, rng=2))
        channels = 4
    else:
        channels = 3
    layers += [Dropout(0.5, seed=3), Flatten(), Affine(channels * 9, 8, rng=4), Tanh(), Affine(8, 4, rng=5)]
    model = Sequential(layers, dtype=dtype)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((5, 2, 6, 6))
        model.loss(x, rng.integers(0, 4, 5))
        model.backward()
    # the running statistics far from the batch statistics of one sample: BatchNorm in
    # training mode would give other gradients
    bn = model.layers[1]
    bn.buffers["running_mean"][...] = [0.3, -0.2, 0.5]
    bn.buffers["running_var"][...] = [2.0, 0.5, 1.5]
    bn.params["gamma"][...] = [1.2, 0.7, -0.9]
    return model


def logit_sum(model, x, target):
    def f():
        scores = model.predict(x, train=False)
        return float(scores[np.arange(len(x)), target].sum())
    return f


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("target", [2, [0, 3]])
def test_saliency_is_the_gradient_of_the_logit(residual, target):
    model = small_net(residual=residual)
    x = np.random.default_rng(7).standard_normal((2, 2, 6, 6))
    analytic = explain.saliency(model, x, target)
    assert analytic.shape == x.shape and isinstance(analytic, np.ndarray)
    t = np.broadcast_to(np.asarray(target), (2,))
    numeric = numerical_gradient(logit_sum(model, x, t), x)
    assert relative_error(analytic, numeric) < 1e-6


def test_saliency_of_one_sample_does_not_depend_on_the_batch():
    model = small_net()
    x = np.random.default_rng(8).standard_normal((3, 2, 6, 6))
    both = explain.saliency(model, x, [1, 2, 3])
    np.testing.assert_allclose(explain.saliency(model, x[1:2], 2), both[1:2], rtol=1e-12, atol=1e-14)


def test_saliency_float32_matches_float64():
    model64 = small_net("float64")
    model32 = small_net("float64").astype("float32")
    x = np.random.default_rng(9).standard_normal((2, 2, 6, 6))
    g64, g32 = explain.saliency(model64, x, 1), explain.saliency(model32, x, 1)
    assert g32.dtype == np.float32
    assert relative_error(g32, g64) < 1e-4


def snapshot(model):
    """Everything explain must leave alone: predictions, parameters and buffers, dropout
    RNG state, need_input_grad, and every attribute of every layer (caches, grads)."""
    x = np.random.default_rng(11).standard_normal((4, 2, 6, 6))

    def attrs(layer):
        if isinstance(layer, Residual):
            return {name: attrs(part) for name, part in layer.parts.items()}
        return {k: (v if not isinstance(v, dict) else dict(v)) for k, v in vars(layer).items()}

    return {"scores": model.predict(x).copy(), "state": model.state_dict(), "rng": copy.deepcopy(model.random_state()),
            "need": [layer.need_input_grad for layer in model.layers],
            "attrs": [attrs(layer) for layer in model.layers],
            "grads": {name: np.array(layer.grads[key]) for name, layer, key in model.params_and_grads()}}


def assert_same(a, b):
    np.testing.assert_array_equal(a["scores"], b["scores"])
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        np.testing.assert_array_equal(a["state"][key], b["state"][key], err_msg=key)
    assert a["rng"] == b["rng"] and a["need"] == b["need"]
    assert a["grads"].keys() == b["grads"].keys()
    for key in a["grads"]:
        np.testing.assert_array_equal(a["grads"][key], b["grads"][key], err_msg=key)

    def same_objects(x, y):  # the very same cache objects, not recomputed ones
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], dict) and isinstance(y[key], dict):
                same_objects(x[key], y[key])
            else:
                assert x[key] is y[key], key

    for x, y in zip(a["attrs"], b["attrs"]):
        same_objects(x, y)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("call", ["feature_maps", "saliency", "grad_cam", "grad_cam_upsampled"])
def test_the_model_is_left_as_it_was(residual, call):
    model = small_net("float32", residual=residual)
    x = np.random.default_rng(12).standard_normal((3, 2, 6, 6)).astype("float32")
    before = snapshot(model)
    if call == "feature_maps":
        explain.feature_maps(model, x)
    elif call == "saliency":
        explain.saliency(model, x, 1)
    else:
        explain.grad_cam(model, x, [0, 1, 2], upsample=call.endswith("upsampled"))
    assert_same(before, snapshot(model))
    # and a training step afterwards is the one it would have been
    assert model.layers[0].need_input_grad is False
    assert model.backward() is None  # the caches of the last training forward are still there


@pytest.mark.parametrize("name", ["simple_convnet", "deep_convnet", "resnet20"])
def test_feature_maps_have_each_layers_output_shape(name):
    shape = (3, 32, 32) if name == "resnet20" else (1, 28, 28)
    model = models.build(name, input_shape=shape)
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    maps = explain.feature_maps(model, x)
    assert [m.index for m in maps] == list(range(len(model.layers)))
    assert [m.layer for m in maps] == [type(layer).__name__ for layer in model.layers]
    sample = shape
    for fmap, layer in zip(maps, model.layers):
        sample = layer.output_shape(sample)
        assert isinstance(fmap.activation, np.ndarray) and fmap.activation.shape == (2, *sample)
    np.testing.assert_array_equal(maps[-1].activation, model.predict(x))


def detector_net(dtype="float64"):
    """Two input channels; conv channel k fires only where input channel k holds a bright
    2x2 block (weights 1, bias -3: a full block gives 1, anything less <= 0), then ReLU,
    global average pooling and an affine whose class k reads channel k."""
    conv = Conv2D(2, 2, 2, dtype=dtype)
    conv.params["W"][...] = 0
    conv.params["W"][0, 0] = 1
    conv.params["W"][1, 1] = 1
    conv.params["b"][...] = -3
    fc = Affine(2, 2, dtype=dtype)
    fc.params["W"][...] = np.eye(2)
    fc.params["b"][...] = 0
    model = Sequential([conv, ReLU(), GlobalAvgPool2D(), fc], dtype=dtype)
    model.input_shape = (2, 8, 8)
    return model


def test_grad_cam_finds_the_pattern_known_by_hand():
    model = detector_net()
    x = np.zeros((1, 2, 8, 8))
    x[0, 0, 1:3, 1:3] = 1  # class 0's pattern, top left
    x[0, 1, 5:7, 4:6] = 1  # class 1's pattern, bottom right
    assert explain.cam_layer(model) == 1  # the ReLU after the conv: the last 4-D output
    acts = explain.feature_maps(model, x)[1].activation  # (1, 2, 7, 7)
    for k, (r, c) in enumerate([(1, 1), (5, 4)]):
        cam = explain.grad_cam(model, x, k)
        assert cam.shape == (1, 7, 7)
        # w_k = 1/49 for the channel its class reads, 0 for the other
        np.testing.assert_allclose(cam[0], acts[0, k] / 49)
        expected = np.zeros((7, 7))
        expected[r, c] = 1 / 49
        np.testing.assert_allclose(cam[0], expected)
        up = explain.grad_cam(model, x, k, upsample=True)
        assert up.shape == (1, 8, 8) and up.max() == pytest.approx(1.0) and up.min() >= 0
        peak = np.unravel_index(up[0].argmax(), (8, 8))
        quadrant = (peak[0] >= 4, peak[1] >= 4)
        assert quadrant == ((False, False) if k == 0 else (True, True))


def test_grad_cam_of_a_class_the_pattern_speaks_against_is_zero():
    model = detector_net()
    model.layers[-1].params["W"][...] = [[1, -1], [0, 0]]  # class 1: minus channel 0
    x = np.zeros((1, 2, 8, 8))
    x[0, 0, 1:3, 1:3] = 1
    assert explain.grad_cam(model, x, 1).max() == 0
    assert explain.grad_cam(model, x, 1, upsample=True).max() == 0  # not NaN
    assert explain.grad_cam(model, x, 0).max() > 0


def test_grad_cam_weights_are_the_mean_gradient():
    """Against its definition, with the gradient from saliency's machinery replaced by
    finite differences of the logit with respect to the chosen activation."""
    model = small_net()
    x = np.random.default_rng(5).standard_normal((1, 2, 6, 6))
    layer = 3  # the MaxPool2D output (1, 3, 3, 3)
    assert explain.cam_layer(model, (2, 6, 6)) == 3
    acts = explain.feature_maps(model, x)[layer].activation.copy()

    def head():
        out = acts
        for later in model.layers[layer + 1:]:
            out = later.forward(out, train=False)
        return float(out[0, 2])

    grad = numerical_gradient(head, acts)
    expected = np.maximum((grad.mean(axis=(2, 3), keepdims=True) * acts).sum(axis=1), 0)
    np.testing.assert_allclose(explain.grad_cam(model, x, 2), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(explain.grad_cam(model, x, 2, layer=-6), expected, rtol=1e-6, atol=1e-9)


def test_upsample_bilinear():
    maps = np.arange(4.0).reshape(1, 2, 2)
    up = explain.upsample_bilinear(maps, 4, 4)
    np.testing.assert_allclose(up[0, 0], [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(up[0, :, 0], [0, 0.5, 1.5, 2])
    np.testing.assert_allclose(explain.upsample_bilinear(maps, 2, 2), maps)
    assert explain.upsample_bilinear(np.ones((2, 1, 1)), 5, 3).shape == (2, 5, 3)


def test_bad_arguments():
    model = small_net()
    x = np.zeros((2, 2, 6, 6))
    for target in (4, -1, [0], [0.5, 1], "a"):
        with pytest.raises(ValueError, match="target"):
            explain.saliency(model, x, target)
    with pytest.raises(ValueError, match="layer"):
        explain.grad_cam(model, x, 0, layer=99)
    with pytest.raises(ValueError, match="Grad-CAM needs"):
        explain.grad_cam(model, x, 0, layer=6)  # Flatten: (N, D)
    dense = Sequential([Affine(4, 3), ReLU(), Affine(3, 2)])
    with pytest.raises(ValueError, match="spatial"):
        explain.cam_layer(dense, (4,))
    assert explain.saliency(dense, np.ones((1, 4), np.float32), 1).shape == (1, 4)
