"""ONNX export (cnn_xp.export, ``cnn-xp export``): every zoo net and every supported layer,
run in onnxruntime against ``model.predict``; metadata, preprocessing, errors and the CLI."""
import json
import os
import sys

import numpy as np
import pytest

import cnn_xp
from cnn_xp import models
from cnn_xp.app import cli
from cnn_xp.data import DataDescription, normalize
from cnn_xp.errors import CnnXpError, ConfigError
from cnn_xp.export import MissingOnnx, UnsupportedLayer, save_onnx, to_onnx
from cnn_xp.layers import (Affine, AvgPool2D, BatchNorm, Conv2D, Dropout, Flatten, Layer, MaxPool2D, ReLU,
                           Residual, Sigmoid, Tanh)
from cnn_xp.model import Sequential
from train_helpers import data_dir, isolated, trained_checkpoint  # noqa: F401 (fixtures)

try:
    import onnx
    import onnxruntime
except ImportError as exc:
    onnx = onnxruntime = None
    MISSING = f"{exc.name} is not installed (pip install 'cnn_xp[export]')"
else:
    MISSING = None

needs_onnx = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

RTOL = 1e-5  # relative to the largest output magnitude (float32)
MNIST_SHAPE = (1, 28, 28)
CIFAR_SHAPE = (3, 32, 32)
NORM = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}


def run_onnx(proto, x):
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})
    return out


def assert_close(got, expected):
    expected = np.asarray(cnn_xp.backend.to_numpy(expected), dtype=np.float64)
    assert got.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-30)
    error = float(np.abs(got - expected).max()) / scale
    assert error <= RTOL, f"relative error {error:.3g} > {RTOL}"


def randomize_batchnorm(model, seed=0):
    """Running statistics, gamma and beta away from their initial values, so the export of
    BatchNorm in inference form is really tested."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for store in (layer.params, layer.buffers):
            for key in list(store):
                value = store[key]
                if key.endswith("running_mean") or key.endswith("beta"):
                    store[key] = rng.normal(0.0, 0.5, value.shape).astype(value.dtype)
                elif key.endswith("running_var") or key.endswith("gamma"):
                    store[key] = rng.uniform(0.5, 2.0, value.shape).astype(value.dtype)
    return model


def check_matches_predict(model, shape, seed=0, **options):
    proto = to_onnx(model, shape, **options)
    onnx.checker.check_model(proto, full_check=True)
    rng = np.random.default_rng(seed)
    for n in (1, 7):  # the batch axis is dynamic
        x = rng.random((n, *shape), dtype=np.float32)
        assert_close(run_onnx(proto, x), model.predict(x, train=False))
    return proto


ZOO = [(name, MNIST_SHAPE) for name in models.MODELS] + [("resnet20", CIFAR_SHAPE)]


@needs_onnx
@pytest.mark.parametrize("name,shape", ZOO, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in ZOO])
def test_every_zoo_net_matches_predict(name, shape):
    model = randomize_batchnorm(models.build(name, seed=3, input_shape=shape))
    if name == "resnet20":
        assert any(k.endswith("running_var") for k in model.state_dict())
    proto = check_matches_predict(model, shape)
    ops = {node.op_type for node in proto.graph.node}
    if name == "resnet20":
        assert {"BatchNormalization", "Add", "GlobalAveragePool", "Gemm"} <= ops
    assert "Dropout" not in ops


@needs_onnx
def test_resnet20_after_training_steps_matches_predict():
    """BatchNorm running statistics from real training steps (not drawn), then exported."""
    model = models.build("resnet20", seed=1, input_shape=CIFAR_SHAPE)
    optimizer = models.build_optimizer("resnet20", model)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.random((8, *CIFAR_SHAPE), dtype=np.float32) * 2 - 0.5
        model.loss(x, rng.integers(0, 10, 8))
        model.backward()
        optimizer.step()
    assert not np.allclose(model.state_dict()["0.W"], models.build("resnet20", seed=1, input_shape=CIFAR_SHAPE)
                           .state_dict()["0.W"])
    assert not np.allclose(model.layers[1].buffers["running_mean"], 0)
    check_matches_predict(model, CIFAR_SHAPE, seed=2)


def every_layer_model():
    """A Sequential using every supported layer type: Conv2D with and without bias, strides
    and asymmetric pads, BatchNorm on (N, C, H, W) and on (N, C), Tanh, Sigmoid, MaxPool2D
    and AvgPool2D with padding, Residual with and without projection, Dropout, Flatten and
    Affine."""
    rng = np.random.default_rng(5)
    shape = (3, 17, 15)
    layers = [Conv2D(3, 4, 3, stride=2, pad=1, rng=rng), ReLU(),
              Conv2D(4, 6, (3, 2), stride=(1, 2), pad=(1, 0), bias=False, rng=rng), BatchNorm(6), Tanh(),
              MaxPool2D(3, stride=2, pad=1), AvgPool2D(2, stride=1, pad=1), Sigmoid(),
              Residual(6, 8, stride=2, rng=rng), Residual(8, 8, rng=rng), Dropout(0.3), Flatten()]
    sample = shape
    for layer in layers:
        sample = layer.output_shape(sample)
    layers += [Affine(int(np.prod(sample)), 12, rng=rng), BatchNorm(12), ReLU(), Dropout(0.5, seed=2),
               Affine(12, 5, rng=rng)]
    model = Sequential(layers)
    for layer in layers:  # nonzero biases
        if "b" in layer.params:
            layer.params["b"] = rng.normal(0, 0.3, layer.params["b"].shape).astype(np.float32)
    return randomize_batchnorm(model, seed=5), shape


@needs_onnx
def test_every_supported_layer_type_matches_predict():
    model, shape = every_layer_model()
    exported = {type(layer).__name__ for layer in model.layers}
    assert exported >= {"Conv2D", "MaxPool2D", "AvgPool2D", "Affine", "Flatten", "ReLU", "Sigmoid", "Tanh",
                        "Dropout", "BatchNorm", "Residual"}
    proto = check_matches_predict(model, shape)
    pools = {node.op_type: node for node in proto.graph.node if node.op_type in ("MaxPool", "AveragePool")}
    include_pad = [a for a in pools["AveragePool"].attribute if a.name == "count_include_pad"]
    assert include_pad and include_pad[0].i == 1  # our zero padding counts in the mean


@needs_onnx
def test_avgpool_padding_counts_like_ours():
    """At the border, the zero padding counts in our mean (count_include_pad=1)."""
    model = Sequential([AvgPool2D(3, stride=2, pad=1), Flatten()])
    x = np.ones((2, 2, 5, 5), dtype=np.float32)
    assert_close(run_onnx(to_onnx(model, (2, 5, 5)), x), model.predict(x))
    assert float(model.predict(x)[0, 0]) == pytest.approx(4 / 9)


@needs_onnx
def test_float64_model_is_exported_as_float32():
    model = models.build("lenet5", seed=2, dtype="float64")
    proto = check_matches_predict(model, MNIST_SHAPE)
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.FLOAT}


@needs_onnx
def test_checker_and_serialization_round_trip(tmp_path):
    model = randomize_batchnorm(models.build("resnet20", seed=0, input_shape=CIFAR_SHAPE))
    proto = save_onnx(model, tmp_path / "resnet20.onnx", CIFAR_SHAPE, class_names=list("abcdefghij"),
                      normalization=NORM)
    loaded = onnx.load(str(tmp_path / "resnet20.onnx"))
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.SerializeToString() == proto.SerializeToString()
    assert os.listdir(tmp_path) == ["resnet20.onnx"]  # no temporary file left
    x = np.random.default_rng(0).random((3, *CIFAR_SHAPE), dtype=np.float32)
    assert_close(run_onnx(loaded, x), model.predict(x))
    (inp,), (out,) = loaded.graph.input, loaded.graph.output
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, 32, 32]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 10]


@needs_onnx
def test_metadata_holds_class_names_and_normalization():
    model = models.build("resnet20", input_shape=CIFAR_SHAPE)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = {p.key: json.loads(p.value) for p in to_onnx(model, CIFAR_SHAPE, class_names=names,
                                                        normalization=NORM).metadata_props}
    assert meta["class_names"] == names
    assert meta["normalization"] == NORM
    assert meta["input_shape"] == [3, 32, 32] and meta["model"] == "resnet20"
    assert meta["preprocessing"] == "not included"
    bare = {p.key: json.loads(p.value) for p in to_onnx(models.build("lenet5"), MNIST_SHAPE).metadata_props}
    assert bare["class_names"] is None and bare["normalization"] is None


@needs_onnx
def test_include_preprocessing_takes_raw_pixels():
    model = randomize_batchnorm(models.build("resnet20", seed=4, input_shape=CIFAR_SHAPE))
    proto = to_onnx(model, CIFAR_SHAPE, normalization=NORM, include_preprocessing=True)
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in proto.graph.node[:2]] == ["Sub", "Div"]
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["preprocessing"] == "included" and meta["normalization"] == NORM
    rng = np.random.default_rng(4)
    for n in (1, 7):
        raw = rng.random((n, *CIFAR_SHAPE), dtype=np.float32)  # pixels scaled to [0, 1]
        assert_close(run_onnx(proto, raw), model.predict(normalize(raw.copy(), NORM)))
    # without it, the graph takes the normalised input, as predict does
    plain = to_onnx(model, CIFAR_SHAPE, normalization=NORM)
    assert "Sub" not in {n.op_type for n in plain.graph.node}


class Doubler(Layer):
    def forward(self, x, train=True):
        return 2 * x


class MyReLU(ReLU):
    """A subclass may compute something else: not exported as a ReLU."""


@pytest.mark.parametrize("layer", [Doubler(), MyReLU()], ids=["custom", "subclass"])
def test_an_unsupported_layer_is_one_line_naming_index_and_type(layer):
    model = Sequential([Flatten(), Affine(4, 3), layer, Affine(3, 2)])
    with pytest.raises(UnsupportedLayer) as info:
        to_onnx(model, (1, 2, 2))
    message = str(info.value)
    assert isinstance(info.value, CnnXpError) and isinstance(info.value, ConfigError)
    assert "\n" not in message and f"layer 2 ({type(layer).__name__})" in message


def test_missing_onnx_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(MissingOnnx) as info:
        to_onnx(models.build("lenet5"), MNIST_SHAPE)
    assert isinstance(info.value, CnnXpError)
    assert "\n" not in str(info.value) and "pip install 'cnn_xp[export]'" in str(info.value)


@needs_onnx
@pytest.mark.parametrize("options,words", [
    ({"input_shape": (1, 2)}, "cannot take"),
    ({"input_shape": (0, 28, 28)}, "input_shape"),
    ({"class_names": ["a", "b"]}, "class_names"),
    ({"normalization": {"mean": [0.5, 0.5], "std": [1, 1]}}, "normalization"),
    ({"normalization": {"mean": [0.5], "std": [0.0]}}, "normalization"),
    ({"opset": 5}, "opset"),
])
def test_bad_arguments_are_one_line_config_errors(options, words):
    options = {"input_shape": MNIST_SHAPE, **options}
    with pytest.raises(ConfigError) as info:
        to_onnx(models.build("lenet5"), options.pop("input_shape"), **options)
    assert "\n" not in str(info.value) and words in str(info.value)


@needs_onnx
def test_input_shape_defaults_to_the_models_and_other_opsets_work():
    model = models.build("simple_convnet", seed=1)
    proto = to_onnx(model, opset=13)
    assert proto.opset_import[0].version == 13
    x = np.random.default_rng(0).random((2, *MNIST_SHAPE), dtype=np.float32)
    assert_close(run_onnx(proto, x), model.predict(x))


# -- cnn-xp export ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(data_dir, tmp_path_factory):  # noqa: F811 (fixture)
    return trained_checkpoint(data_dir, tmp_path_factory.mktemp("export_run") / "run", "lenet5", 1)


def _meta(proto):
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


@needs_onnx
def test_cli_exports_a_run_checkpoint(trained_run, tmp_path, capsys):
    out = tmp_path / "lenet5.onnx"
    assert cli.main(["export", "--checkpoint", str(trained_run), "--to", "onnx", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    model = cnn_xp.load(trained_run)
    x = np.random.default_rng(0).random((7, *MNIST_SHAPE), dtype=np.float32)
    assert_close(run_onnx(proto, x), model.predict(x))
    meta = _meta(proto)
    assert meta["class_names"] == [str(d) for d in range(10)] and meta["normalization"] is None
    assert sorted(os.listdir(tmp_path)) == ["lenet5.onnx"]


@needs_onnx
def test_cli_exports_a_saved_model_with_preprocessing(tmp_path, capsys):
    model = randomize_batchnorm(models.build("resnet20", seed=2, input_shape=CIFAR_SHAPE))
    names = tuple(f"c{k}" for k in range(10))
    model.data = DataDescription("cifar10", CIFAR_SHAPE, names, NORM, "resize")
    model.save(tmp_path / "model.npz")
    x = np.random.default_rng(1).random((7, *CIFAR_SHAPE), dtype=np.float32)
    expected = model.predict(normalize(x.copy(), NORM))
    out = tmp_path / "model.onnx"
    assert cli.main(["export", "--checkpoint", str(tmp_path / "model.npz"), "--to", "onnx", "--out", str(out),
                     "--include-preprocessing"]) == 0
    proto = onnx.load(str(out))
    assert_close(run_onnx(proto, x), expected)
    meta = _meta(proto)
    assert meta["class_names"] == list(names) and meta["normalization"] == NORM
    assert meta["preprocessing"] == "included"
    assert cli.main(["export", "--checkpoint", str(tmp_path / "model.npz"), "--out", str(out)]) == 0
    assert_close(run_onnx(onnx.load(str(out)), normalize(x.copy(), NORM)), expected)


@needs_onnx
def test_cli_errors_are_one_line(tmp_path, capsys):
    models.build("lenet5").save(tmp_path / "m.npz")
    assert cli.main(["export", "--checkpoint", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "a")]) == 2
    assert cli.main(["export", "--checkpoint", str(tmp_path / "m.npz"),
                     "--out", str(tmp_path / "no" / "such" / "m.onnx")]) == 2
    assert cli.main(["export", "--checkpoint", str(tmp_path / "m.npz"), "--to", "tflite", "--out", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("cnn-xp: error: ") for line in err)
    assert "cannot write" in err[1]
