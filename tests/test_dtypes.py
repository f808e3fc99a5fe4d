"""Float32 in, float32 out: no op, layer, model or optimizer silently upcasts to float64."""
import numpy as np
import pytest

from cnn_xp import ops, optim
from cnn_xp.layers import (Affine, AvgPool2D, BatchNorm, Conv2D, Dropout, Flatten, MaxPool2D,
                           ReLU, Sigmoid, SoftmaxCrossEntropy, Tanh)
from cnn_xp.model import Sequential

F32 = np.float32


def assert_f32(value, what):
    assert value is not None, what
    assert np.asarray(value).dtype == F32, f"{what}: {np.asarray(value).dtype}"


def test_ops_keep_float32():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6)).astype(F32)
    W = rng.standard_normal((4, 3, 3, 2)).astype(F32)
    b = rng.standard_normal(4).astype(F32)
    col = ops.im2col(x, 3, 2, stride=(2, 1), pad=1)
    assert_f32(col, "im2col")
    assert_f32(ops.col2im(col, x.shape, 3, 2, stride=(2, 1), pad=1), "col2im")
    out, cache = ops.conv2d_forward(x, W, b, stride=(2, 1), pad=1)
    assert_f32(out, "conv out")
    for name, g in zip(("dx", "dW", "db"), ops.conv2d_backward(np.ones_like(out), cache)):
        assert_f32(g, f"conv {name}")
    for fwd, bwd in ((ops.maxpool2d_forward, ops.maxpool2d_backward),
                     (ops.avgpool2d_forward, ops.avgpool2d_backward)):
        out, cache = fwd(x, 3, 3, 2, 1)
        assert_f32(out, fwd.__name__)
        assert_f32(bwd(np.ones_like(out), cache), bwd.__name__)
    s = rng.standard_normal((5, 4)).astype(F32)
    labels = np.array([0, 3, 1, 2, 2])
    one_hot_f64 = np.eye(4)[labels]                    # float64 labels must not upcast
    assert_f32(ops.softmax(s), "softmax")
    assert_f32(ops.log_softmax(s), "log_softmax")
    for t in (labels, one_hot_f64):
        assert_f32(ops.cross_entropy(s, t), "cross_entropy")
        assert_f32(ops.cross_entropy_backward(s, t), "cross_entropy_backward")
        assert_f32(ops.cross_entropy_backward(s, t, dout=0.5), "cross_entropy_backward(dout)")


def all_layers_net(seed=0):
    return Sequential([
        Conv2D(1, 4, 3, pad=1, rng=seed),
        BatchNorm(4),
        ReLU(),
        MaxPool2D(2),
        Conv2D(4, 4, (2, 3), stride=1, pad=(1, 1), rng=seed + 1),
        Sigmoid(),
        AvgPool2D(2, stride=1),
        Flatten(),
        Affine(4 * 4 * 3, 8, rng=seed + 2),
        BatchNorm(8),
        Tanh(),
        Dropout(0.3, seed=seed),
        Affine(8, 3, rng=seed + 3),
    ], loss=SoftmaxCrossEntropy(), input_grad=True)


def test_default_dtype_is_float32():
    model = all_layers_net()
    assert model.dtype == "float32"
    for layer in model.layers:
        for store in (layer.params, layer.buffers):
            for key, value in store.items():
                assert_f32(value, f"{layer!r}.{key}")


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
@pytest.mark.parametrize("one_hot", [False, True], ids=["int", "onehot"])
def test_training_step_stays_float32(name, one_hot):
    model = all_layers_net()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 1, 8, 8)).astype(F32)
    t = rng.integers(0, 3, size=6)
    if one_hot:
        t = np.eye(3)[t]                                 # float64 one-hot labels

    # every activation and every input gradient, layer by layer
    h = x
    for layer in model.layers:
        h = layer.forward(h, train=True)
        assert_f32(h, f"forward of {layer!r}")
    loss = model.loss_layer.forward(h, t)
    assert_f32(loss, "loss")
    g = model.loss_layer.backward(1.0)
    assert_f32(g, "d scores")
    for layer in reversed(model.layers):
        g = layer.backward(g)
        assert_f32(g, f"backward of {layer!r}")

    # the model API and two optimizer steps
    opt = optim.OPTIMIZERS[name](model, lr=0.01)
    for _ in range(2):
        loss = model.loss(x, t)
        assert_f32(loss, "model.loss")
        assert_f32(model.backward(), "model.backward dx")
        opt.step()
    for pname, layer, key in model.params_and_grads():
        assert_f32(layer.params[key], f"param {pname}")
        assert_f32(layer.grads[key], f"grad {pname}")
        assert layer.params[key].flags.writeable
    for layer in model.layers:
        for key, value in layer.buffers.items():
            assert_f32(value, f"buffer {key} of {layer!r}")
    state = opt.state_dict()
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray) and v.ndim > 0}
    if name != "sgd":
        assert arrays, "stateful optimizer saved no per-parameter state"
    for k, v in arrays.items():
        assert_f32(v, f"optimizer state {k}")
    for k, v in opt.state.items():                        # the live state, too
        for slot, arr in v.items():
            assert_f32(arr, f"live optimizer state {slot}/{k}")
    assert_f32(model.predict(x.astype(np.float64)), "predict of float64 input")


def test_float64_model_stays_float64():
    model = Sequential([Conv2D(1, 2, 3, rng=0, dtype="float64"), ReLU(), Flatten(),
                        Affine(2 * 4 * 4, 3, rng=1, dtype="float64")])
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6))
    opt = optim.Adam(model, lr=0.01)
    assert np.asarray(model.loss(x, np.array([0, 2]))).dtype == np.float64
    model.backward()
    opt.step()
    for _, layer, key in model.params_and_grads():
        assert layer.params[key].dtype == np.float64
