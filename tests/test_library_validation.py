"""Hostile input at the library level: one test per class of fault, each probe a parameter.

Every refusal is a one-line ValueError that names what is wrong, raised before any state
changes, in both kernel modes (the accelerators apply the reference's rules):

1. BatchNorm's training forward on an empty batch (its statistics would be NaN forever);
2. the loss's labels: integer class indices in 0..K-1 (one-hot rows stay supported);
3. the loss of an empty batch (forward and backward);
4. optimizer hyperparameters (finite, in range; parameter groups too);
5. layer input that is not float32/float64 (complex, integer, bool, float16);
6. layer sizes and windows (kernel, stride, pad, channels, features, dropout p).

The 7th class, caches that must not alias their input, is a case of the accelerator-vs-
reference tests (test_equivalence.py, test_kernels_cuda.py: ``mutate=True``).
"""
import warnings

import numpy as np
import pytest

from cnn_xp import ops, optim
from cnn_xp.layers import (Affine, AvgPool2D, BatchNorm, Conv2D, Dropout, Flatten, MaxPool2D, ReLU,
                           Sigmoid, SoftmaxCrossEntropy, Tanh)
from cnn_xp.layers.base import NoForwardCache
from cnn_xp.model import Sequential

MODES = ["auto", "reference"]


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text, text
    return text


# -- 1. BatchNorm on an empty batch ------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4, 4), (2, 3, 0, 4)], ids=["dense", "maps", "no-pixels"])
def test_batchnorm_refuses_an_empty_training_batch_and_keeps_its_statistics(kernel_mode, mode, shape):
    kernel_mode(mode)
    bn = BatchNorm(3)
    full = (4, 3) if len(shape) == 2 else (4, 3, 5, 5)
    bn.forward(np.random.default_rng(0).standard_normal(full), train=True)
    before = {k: v.copy() for k, v in bn.buffers.items()}
    with pytest.raises(ValueError, match=r"BatchNorm: a training batch of shape .* holds no values") as exc:
        bn.forward(np.zeros(shape, np.float32), train=True)
    one_line(exc)
    for key, value in bn.buffers.items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
        assert np.isfinite(value).all()
    # inference on an empty batch: a defined, empty result; later inference stays finite
    assert bn.forward(np.zeros(shape, np.float32), train=False).shape == shape
    assert np.isfinite(bn.forward(np.ones(full), train=False)).all()


# -- 2. labels: integer, in 0..K-1, the same rule on every implementation ------------------------

BAD_LABELS = {
    "minus-one": (np.array([0, 1, 2, -1, 4]), "label -1 at index 3 is outside 0..9"),
    "equal-K": (np.array([10, 1, 2, 3, 4]), "label 10 at index 0 is outside 0..9"),
    "uint8-large": (np.array([0, 1, 2, 3, 200], np.uint8), "label 200 at index 4 is outside 0..9"),
    "int32-large": (np.array([0, 99, 2, 3, 4], np.int32), "label 99 at index 1 is outside 0..9"),
    "float": (np.array([0.0, 1, 2, 3, 4]), "class labels .* must be of an integer dtype, got float64"),
    "bool": (np.array([True, False, True, False, True]), "must be of an integer dtype, got bool"),
    "wrong-length": (np.array([0, 1, 2]), r"labels of shape \(3,\) do not match scores \(5, 10\)"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("probe", list(BAD_LABELS))
def test_labels_outside_the_classes_are_a_value_error_naming_the_label(kernel_mode, mode, probe):
    kernel_mode(mode)
    labels, message = BAD_LABELS[probe]
    scores = np.random.default_rng(1).standard_normal((5, 10)).astype(np.float32)
    loss = SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match=message) as exc:
        loss.forward(scores, labels)
    one_line(exc)
    with pytest.raises(NoForwardCache):  # nothing was cached for a backward
        loss.backward()
    for fn in (ops.cross_entropy, ops.cross_entropy_backward):
        with pytest.raises(ValueError, match=message):
            fn(scores, labels)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["int64", "int32", "uint8", "uint64"])
def test_valid_labels_of_every_integer_dtype_and_one_hot_rows_still_work(kernel_mode, mode, dtype):
    kernel_mode(mode)
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((6, 4))
    labels = np.array([0, 3, 1, 2, 3, 0], dtype=dtype)
    want = -ops.log_softmax(scores)[np.arange(6), labels.astype(np.int64)].mean()
    loss = SoftmaxCrossEntropy()
    np.testing.assert_allclose(loss.forward(scores, labels), want, rtol=1e-12)
    labels[...] = 1  # changing the labels after the forward changes no backward
    grad = loss.backward()
    np.testing.assert_allclose(grad, (ops.softmax(scores) - np.eye(4)[[0, 3, 1, 2, 3, 0]]) / 6, atol=1e-12)
    one_hot = np.eye(4)[[0, 3, 1, 2, 3, 0]]
    np.testing.assert_allclose(loss.forward(scores, one_hot), want, rtol=1e-12)


# -- 3. the loss of an empty batch -------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("labels", ["indices", "one_hot"])
def test_the_loss_of_an_empty_batch_is_a_value_error(kernel_mode, mode, labels):
    kernel_mode(mode)
    scores = np.zeros((0, 10), np.float32)
    targets = np.zeros(0, np.int64) if labels == "indices" else np.zeros((0, 10), np.float32)
    loss = SoftmaxCrossEntropy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NaN loss came with a RuntimeWarning only
        with pytest.raises(ValueError, match=r"the batch is empty \(0 samples\)") as exc:
            loss.forward(scores, targets)
        one_line(exc)
        with pytest.raises(ValueError, match="the batch is empty"):
            ops.softmax_cross_entropy_backward((scores, targets))  # a hand-made empty cache
        with pytest.raises(ValueError, match="no classes"):
            ops.cross_entropy(np.zeros((3, 0)), np.zeros(3, np.int64))
    # through a model: the loss, not a NaN
    model = Sequential([Flatten(), Affine(4, 10, rng=0)])
    with pytest.raises(ValueError, match="the batch is empty"):
        model.loss(np.zeros((0, 1, 2, 2), np.float32), np.zeros(0, np.int64))


# -- 4. optimizer hyperparameters -------------------------------------------------------------

def small_model():
    return Sequential([Affine(3, 4, rng=0, dtype="float64"), ReLU(), Affine(4, 2, rng=1, dtype="float64")])


BAD_HYPERPARAMETERS = [
    ("sgd", {"lr": np.nan}, "learning rate"), ("sgd", {"lr": 0}, "learning rate"),
    ("sgd", {"lr": -0.1}, "learning rate"), ("sgd", {"lr": np.inf}, "learning rate"),
    ("sgd", {"lr": "0.1"}, "learning rate"), ("sgd", {"lr": True}, "learning rate"),
    ("momentum", {"momentum": np.nan}, "Momentum: momentum"), ("momentum", {"momentum": 1.0}, "momentum"),
    ("momentum", {"momentum": -0.1}, "momentum"), ("nesterov", {"momentum": 1.5}, "Nesterov: momentum"),
    ("adam", {"beta1": np.nan}, "Adam: beta1"), ("adam", {"beta1": 1.0}, "beta1"),
    ("adam", {"beta2": -0.5}, "Adam: beta2"), ("adam", {"eps": 0.0}, "Adam: eps"),
    ("adagrad", {"eps": -1}, "AdaGrad: eps"), ("adagrad", {"eps": np.nan}, "AdaGrad: eps"),
    ("rmsprop", {"decay": 1.0}, "RMSProp: decay"), ("rmsprop", {"decay": np.inf}, "decay"),
    ("rmsprop", {"eps": -1e-8}, "RMSProp: eps"),
    ("sgd", {"param_groups": [{"params": ["0.*"], "lr": np.nan}]}, r"parameter group 0 \(0.\*\): lr"),
    ("adam", {"param_groups": [{"params": ["2.W"], "lr_scale": -2.0}]}, r"parameter group 0 \(2.W\): lr_scale"),
    ("momentum", {"param_groups": [{"params": ["2.b"], "lr_scale": np.inf}]}, "lr_scale"),
    ("sgd", {"param_groups": [{"params": ["2.b"], "lr": np.zeros((3, 3))}]}, "a value of type ndarray"),
]


@pytest.mark.parametrize("name, kwargs, message", BAD_HYPERPARAMETERS,
                         ids=[f"{n}-{'-'.join(map(str, k))}-{i}" for i, (n, k, _) in enumerate(BAD_HYPERPARAMETERS)])
def test_optimizers_refuse_hyperparameters_out_of_range_up_front(name, kwargs, message):
    model = small_model()
    before = {n: layer.params[key].copy() for n, layer, key in model.params_and_grads()}
    kwargs = {"lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message) as exc:
        optim.create(name, model, **kwargs)
    one_line(exc)
    for n, layer, key in model.params_and_grads():
        np.testing.assert_array_equal(layer.params[key], before[n])


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_optimizers_accept_numpy_scalars_and_the_range_ends(name):
    kwargs = {"lr": np.float32(0.01)}
    if name in ("momentum", "nesterov"):
        kwargs["momentum"] = 0.0
    if name == "adam":
        kwargs.update(beta1=np.float64(0.0), beta2=0.0, eps=np.float32(1e-8))
    if name == "rmsprop":
        kwargs.update(decay=0.0)
    model = small_model()
    opt = optim.create(name, model, **kwargs)
    x, t = np.random.default_rng(3).standard_normal((5, 3)), np.array([0, 1, 1, 0, 1])
    model.loss(x, t)
    model.backward()
    opt.step()
    assert all(np.isfinite(layer.params[key]).all() for _, layer, key in model.params_and_grads())


def test_a_saved_optimizer_state_with_a_bad_learning_rate_is_refused():
    opt = optim.SGD(small_model(), lr=0.1)
    state = opt.state_dict()
    for key, value, message in (("lr", np.nan, "lr must be a positive number"),
                                ("lr_factor", -1.0, "lr_factor must be a finite number >= 0"),
                                ("t", 1.5, "t must be an integer >= 0")):
        with pytest.raises(ValueError, match=message):
            opt.load_state_dict({**state, key: value})
    opt.load_state_dict({**state, "lr": np.array(0.2), "t": np.array(3)})  # as np.load gives them back
    assert (opt.lr, opt.t) == (0.2, 3)


# -- 5. layer input dtypes ---------------------------------------------------------------------

def layer_cases():
    return {
        "Conv2D": (lambda: Conv2D(3, 2, 3, rng=0), (2, 3, 5, 5)),
        "MaxPool2D": (lambda: MaxPool2D(2), (2, 3, 4, 4)),
        "AvgPool2D": (lambda: AvgPool2D(2), (2, 3, 4, 4)),
        "Affine": (lambda: Affine(12, 3, rng=0), (2, 12)),
        "Flatten": (Flatten, (2, 3, 2, 2)),
        "ReLU": (ReLU, (2, 5)),
        "Sigmoid": (Sigmoid, (2, 5)),
        "Tanh": (Tanh, (2, 5)),
        "Dropout": (lambda: Dropout(0.5), (2, 5)),
        "BatchNorm": (lambda: BatchNorm(3), (2, 3)),
    }


BAD_DTYPES = ["complex64", "complex128", "int64", "uint8", "bool", "float16"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layer_name", list(layer_cases()))
def test_layers_take_float32_or_float64_input_only(kernel_mode, mode, layer_name):
    kernel_mode(mode)
    make, shape = layer_cases()[layer_name]
    layer = make()
    x = np.random.default_rng(4).standard_normal(shape)
    for dtype in BAD_DTYPES:
        for train in (True, False):
            with pytest.raises(ValueError, match=f"{layer_name}: input must be a float32 or float64 array, "
                                                 f"got dtype {dtype}") as exc:
                layer.forward(x.astype(dtype), train=train)
            one_line(exc)
    with pytest.raises(ValueError, match=f"{layer_name}: input must be .* got a list"):
        layer.forward(x.tolist())
    for dtype in ("float32", "float64"):
        assert layer.forward(x.astype(dtype)).dtype.kind == "f"
    scores = np.zeros((2, 3), np.complex64)
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: input must be .* got dtype complex64"):
        SoftmaxCrossEntropy().forward(scores, np.array([0, 1]))


def test_a_model_casts_integer_input_to_its_dtype():
    """Integer images (uint8 pixels) go through ``Sequential``, which casts: only direct
    layer calls are refused."""
    model = Sequential([Conv2D(1, 2, 3, rng=0), Flatten(), Affine(2 * 2 * 2, 3, rng=1)])
    x = np.random.default_rng(5).integers(0, 255, (2, 1, 4, 4)).astype(np.uint8)
    assert model.predict(x).dtype == np.float32


# -- 6. layer sizes and windows ----------------------------------------------------------------

BAD_LAYER_ARGUMENTS = [
    (lambda: Conv2D(3, 2, 0), "Conv2D: kernel_size must be an integer >= 1, got 0"),
    (lambda: Conv2D(3, 2, (3, 0)), "Conv2D: kernel_size must be an integer >= 1, got 0"),
    (lambda: Conv2D(3, 2, 2.5), "Conv2D: kernel_size must be an integer >= 1, got 2.5"),
    (lambda: Conv2D(3, 2, (3, 3, 3)), r"Conv2D: kernel_size must be an int or an \(h, w\) pair"),
    (lambda: Conv2D(3, 2, 3, stride=0), "Conv2D: stride must be an integer >= 1, got 0"),
    (lambda: Conv2D(3, 2, 3, stride=(1, -1)), "Conv2D: stride must be an integer >= 1, got -1"),
    (lambda: Conv2D(3, 2, 3, pad=-1), "Conv2D: pad must be an integer >= 0, got -1"),
    (lambda: Conv2D(3, 2, 3, pad=True), "Conv2D: pad must be an integer >= 0, got True"),
    (lambda: Conv2D(0, 2, 3), "Conv2D: in_channels must be an integer >= 1, got 0"),
    (lambda: Conv2D(3, -2, 3), "Conv2D: out_channels must be an integer >= 1, got -2"),
    (lambda: Conv2D(3.0, 2, 3), "Conv2D: in_channels must be an integer >= 1, got 3.0"),
    (lambda: MaxPool2D(0), "MaxPool2D: kernel_size must be an integer >= 1, got 0"),
    (lambda: MaxPool2D(2, stride=0), "MaxPool2D: stride must be an integer >= 1, got 0"),
    (lambda: MaxPool2D(2, pad=-1), "MaxPool2D: pad must be an integer >= 0, got -1"),
    (lambda: AvgPool2D((2, 0)), "AvgPool2D: kernel_size must be an integer >= 1, got 0"),
    (lambda: AvgPool2D(2, stride=(0, 1)), "AvgPool2D: stride must be an integer >= 1, got 0"),
    (lambda: AvgPool2D(2, pad=1.5), "AvgPool2D: pad must be an integer >= 0, got 1.5"),
    (lambda: Affine(0, 3), "Affine: in_features must be an integer >= 1, got 0"),
    (lambda: Affine(3, -1), "Affine: out_features must be an integer >= 1, got -1"),
    (lambda: Affine(3, "4"), "Affine: out_features must be an integer >= 1, got '4'"),
    (lambda: Dropout(1.0), r"Dropout: p \(the dropout probability\) must be a finite number in \[0, 1\), got 1.0"),
    (lambda: Dropout(-0.1), r"Dropout: p .* got -0.1"),
    (lambda: Dropout(np.nan), r"Dropout: p .* got nan"),
    (lambda: Dropout("0.5"), r"Dropout: p .* got '0.5'"),
    (lambda: Dropout(0.5, seed=-1), "Dropout: seed must be an integer >= 0, got -1"),
    (lambda: BatchNorm(0), "BatchNorm: num_features must be an integer >= 1, got 0"),
    (lambda: BatchNorm(3, momentum=np.nan), "BatchNorm: momentum must be a finite number in"),
    (lambda: BatchNorm(3, eps=0), "BatchNorm: eps must be a positive number, got 0"),
]


@pytest.mark.parametrize("make, message", BAD_LAYER_ARGUMENTS, ids=[m.split(",")[0] + f"-{i}" for i, (_, m) in
                                                                    enumerate(BAD_LAYER_ARGUMENTS)])
def test_layer_sizes_and_windows_are_checked_in_the_constructor(make, message):
    with pytest.raises(ValueError, match=message) as exc:
        make()
    one_line(exc)


def test_valid_layer_arguments_of_every_accepted_form():
    conv = Conv2D(np.int64(3), 2, (3, 2), stride=(2, 1), pad=(1, 0), rng=0)
    assert conv.params["W"].shape == (2, 3, 3, 2) and conv.stride == (2, 1) and conv.pad == (1, 0)
    pool = MaxPool2D(np.int32(2), stride=None, pad=0)
    assert pool.kernel == pool.stride == (2, 2)
    assert AvgPool2D(3, stride=1, pad=1).pad == (1, 1)
    assert Dropout(0.0).p == 0.0 and Dropout(np.float32(0.25)).p == 0.25
    assert BatchNorm(4, momentum=1.0).momentum == 1.0
