"""Export a model's inference network to ONNX: ``to_onnx`` and ``save_onnx``.

The graph computes what ``model.predict`` returns (the class scores, the logits before the
softmax) for float32 input ``input`` of shape (batch, *input_shape), with a dynamic batch
axis, and names its output ``scores`` (batch, K). The loss layer is not exported.

Each layer becomes standard ONNX operators (the default domain, opset 17 unless asked):

==================  ===================================================================
Conv2D              Conv (with its bias, or none for ``bias=False``), strides and pads
MaxPool2D           MaxPool (pads count as -inf, as ours; floor output size)
AvgPool2D           AveragePool with ``count_include_pad=1``: our zero padding counts in
                    the mean
GlobalAvgPool2D     GlobalAveragePool, then Flatten (ours returns (N, C))
Affine              Flatten (axis 1) when its input has more than one axis, then Gemm
                    (W is (in, out): no transpose)
Flatten             Flatten (axis 1)
ReLU/Sigmoid/Tanh   Relu / Sigmoid / Tanh
BatchNorm           BatchNormalization in inference form (running mean and variance, eps);
                    (N, C) or (N, C, H, W)
Residual            its nodes: Conv-BN-Relu-Conv-BN, the shortcut (identity, or 1x1 Conv
                    and BN), Add, Relu
Dropout             nothing: our dropout is inverted (scaled in training), so inference is
                    the identity
==================  ===================================================================

About Dropout and the zoo's ``deep_convnet``: seed 004's dropout is non-inverted (x * 0.5
at test), but ``cnn_xp.models`` folds that factor into the weights of its last Affine layer
(see ``models.DEEP_FC2``), so the identity is right for it too.

The data's class names and normalisation go into the model's ``metadata_props`` as JSON
strings (keys ``class_names``, ``normalization``, ``input_shape``, ``preprocessing``,
``model``). With ``include_preprocessing=True`` the normalisation is part of the graph
(Sub mean, Div std per channel on the input), so the graph takes pixels scaled to [0, 1];
otherwise it takes the model's normalised input, as ``predict`` does.

The graph is float32 whatever the model's dtype. A layer this module does not know
(anything but the exact classes above) is an :class:`UnsupportedLayer` naming its index
and type. ``onnx`` is imported only when exporting: ``pip install 'cnn_xp[export]'``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .errors import ConfigError, WriteError

INPUT_NAME = "input"
OUTPUT_NAME = "scores"
BATCH_AXIS = "batch"
DEFAULT_OPSET = 17
MIN_OPSET = 13  # Flatten, Gemm, Conv, pools and BatchNormalization as used here


class UnsupportedLayer(ConfigError):
    """A layer that has no ONNX form here; the message names its index and type."""


class MissingOnnx(ConfigError):
    """The ``onnx`` package is not installed."""


def _import_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise MissingOnnx("exporting to ONNX needs the onnx package: pip install 'cnn_xp[export]'") from None
    return onnx, helper, numpy_helper


class _Graph:
    """The nodes and initializers of the graph being built, with unique tensor names."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []
        self._names: set = set()

    def name(self, base: str) -> str:
        name, k = base, 1
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def const(self, name: str, value) -> str:
        from .backend import to_numpy

        array = np.ascontiguousarray(to_numpy(value), dtype=np.float32)
        name = self.name(name)
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs, name: str, **attrs) -> str:
        out = self.name(name)
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out


# -- one function per layer type: (graph, layer, tensor in, name prefix, sample shape) -> tensor out
def _conv(g, layer, x, prefix, shape):
    inputs = [x, g.const(f"{prefix}.W", layer.params["W"])]
    if layer.bias:
        inputs.append(g.const(f"{prefix}.b", layer.params["b"]))
    kh, kw = (int(d) for d in layer.params["W"].shape[2:])
    (ph, pw), (sh, sw) = layer.pad, layer.stride
    return g.node("Conv", inputs, prefix, kernel_shape=[kh, kw], strides=[int(sh), int(sw)],
                  pads=[int(ph), int(pw), int(ph), int(pw)], dilations=[1, 1], group=1)


def _pool(op, **extra):
    def convert(g, layer, x, prefix, shape):
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.pad
        return g.node(op, [x], prefix, kernel_shape=[int(kh), int(kw)], strides=[int(sh), int(sw)],
                      pads=[int(ph), int(pw), int(ph), int(pw)], ceil_mode=0, **extra)
    return convert


def _global_avg_pool(g, layer, x, prefix, shape):
    return g.node("Flatten", [g.node("GlobalAveragePool", [x], f"{prefix}.pool")], prefix, axis=1)


def _affine(g, layer, x, prefix, shape):
    if len(shape) > 1:
        x = g.node("Flatten", [x], f"{prefix}.flatten", axis=1)
    return g.node("Gemm", [x, g.const(f"{prefix}.W", layer.params["W"]), g.const(f"{prefix}.b", layer.params["b"])],
                  prefix, alpha=1.0, beta=1.0, transA=0, transB=0)


def _flatten(g, layer, x, prefix, shape):
    return g.node("Flatten", [x], prefix, axis=1)


def _elementwise(op):
    def convert(g, layer, x, prefix, shape):
        return g.node(op, [x], prefix)
    return convert


def _batchnorm(g, layer, x, prefix, shape):
    inputs = [x] + [g.const(f"{prefix}.{key}", store[key]) for store, key in (
        (layer.params, "gamma"), (layer.params, "beta"), (layer.buffers, "running_mean"),
        (layer.buffers, "running_var"))]
    return g.node("BatchNormalization", inputs, prefix, epsilon=float(layer.eps))


def _dropout(g, layer, x, prefix, shape):
    return x  # inverted dropout: the identity at inference


def _residual(g, layer, x, prefix, shape):
    p = layer.parts
    out = _conv(g, p["conv1"], x, f"{prefix}.conv1", shape)
    out = _batchnorm(g, p["bn1"], out, f"{prefix}.bn1", None)
    out = g.node("Relu", [out], f"{prefix}.relu1")
    out = _conv(g, p["conv2"], out, f"{prefix}.conv2", None)
    out = _batchnorm(g, p["bn2"], out, f"{prefix}.bn2", None)
    shortcut = x
    if layer.projection:
        shortcut = _batchnorm(g, p["proj_bn"], _conv(g, p["proj"], x, f"{prefix}.proj", shape),
                              f"{prefix}.proj_bn", None)
    return g.node("Relu", [g.node("Add", [out, shortcut], f"{prefix}.add")], prefix)


def _converters() -> dict:
    from .layers import (Affine, AvgPool2D, BatchNorm, Conv2D, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU,
                         Residual, Sigmoid, Tanh)

    return {Conv2D: _conv, MaxPool2D: _pool("MaxPool"), AvgPool2D: _pool("AveragePool", count_include_pad=1),
            GlobalAvgPool2D: _global_avg_pool, Affine: _affine, Flatten: _flatten, ReLU: _elementwise("Relu"),
            Sigmoid: _elementwise("Sigmoid"), Tanh: _elementwise("Tanh"), BatchNorm: _batchnorm,
            Dropout: _dropout, Residual: _residual}


SUPPORTED_LAYERS = ("Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "Affine", "Flatten", "ReLU", "Sigmoid",
                    "Tanh", "BatchNorm", "Dropout", "Residual")


# -- checks of the arguments --------------------------------------------------------------
def _check_shape(input_shape) -> tuple:
    try:
        shape = tuple(int(d) for d in input_shape)
        ok = len(shape) >= 1 and all(d >= 1 and d == e for d, e in zip(shape, input_shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"input_shape must be the shape of one sample, e.g. (C, H, W), with sides >= 1; "
                          f"got {input_shape!r}")
    return shape


def _check_normalization(normalization, shape):
    if normalization is None:
        return None
    channels = shape[0]
    try:
        mean = [float(v) for v in normalization["mean"]]
        std = [float(v) for v in normalization["std"]]
    except (TypeError, KeyError, ValueError):
        raise ConfigError("normalization must be {'mean': [...], 'std': [...]} with one number per channel") from None
    if len(shape) != 3 or len(mean) != channels or len(std) != channels or not all(
            np.isfinite(v) for v in mean + std) or not all(v > 0 for v in std):
        raise ConfigError(f"normalization must give {channels} finite means and {channels} stds > 0 (one per "
                          f"channel of a (C, H, W) input), got {normalization!r}")
    return {"mean": mean, "std": std}


def _check_class_names(class_names, outputs):
    if class_names is None:
        return None
    names = list(class_names)
    if not all(isinstance(n, str) for n in names) or len(names) != outputs:
        raise ConfigError(f"class_names must be {outputs} strings (the model has {outputs} outputs), "
                          f"got {len(names)} entries")
    return names


def _check_opset(opset, onnx) -> int:
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"opset must be an int in {MIN_OPSET}..{newest} (this onnx package's newest), got {opset!r}")
    return opset


# -- the export ---------------------------------------------------------------------------
def to_onnx(model, input_shape=None, *, class_names=None, normalization=None, include_preprocessing: bool = False,
            opset: int = DEFAULT_OPSET):
    """The inference network of ``model`` (a ``Sequential``) as an ``onnx.ModelProto``.

    ``input_shape``: one sample's shape, e.g. (C, H, W) (default: ``model.input_shape``);
    ``class_names`` (one per output) and ``normalization`` ({"mean": [...], "std": [...]}, one
    value per channel, or None) are stored in ``metadata_props``; ``include_preprocessing``
    puts the normalisation into the graph, which then takes pixels scaled to [0, 1].
    ConfigError (one line) for a bad argument, :class:`UnsupportedLayer` for a layer without
    an ONNX form, :class:`MissingOnnx` when the onnx package is not installed.
    """
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ConfigError("to_onnx needs input_shape (one sample's shape, e.g. (1, 28, 28)): the model does not "
                              "say which inputs it takes")
    shape = _check_shape(input_shape)
    converters = _converters()
    layers = list(getattr(model, "layers", None) or ())
    if not layers:
        raise ConfigError(f"to_onnx needs a Sequential, got {type(model).__name__}")
    for index, layer in enumerate(layers):  # all unsupported layers are refused before onnx is needed
        if type(layer) not in converters:
            raise UnsupportedLayer(f"layer {index} ({type(layer).__name__}) cannot be exported to ONNX; supported "
                                   f"layers: {', '.join(SUPPORTED_LAYERS)}")
    shapes = [shape]
    for index, layer in enumerate(layers):
        try:
            shapes.append(tuple(int(d) for d in layer.output_shape(shapes[-1])))
        except (ValueError, IndexError, TypeError) as exc:
            raise ConfigError(f"layer {index} ({type(layer).__name__}) cannot take "
                              f"{'x'.join(map(str, shapes[-1]))} inputs: {exc}") from None
    if len(shapes[-1]) != 1:
        raise ConfigError(f"the model's output must be (N, K) class scores, its last layer gives "
                          f"(N, {', '.join(map(str, shapes[-1]))})")
    outputs = shapes[-1][0]
    names = _check_class_names(class_names, outputs)
    norm = _check_normalization(normalization, shape)

    onnx, helper, numpy_helper = _import_onnx()
    opset = _check_opset(opset, onnx)
    g = _Graph(helper, numpy_helper)
    g._names.update((INPUT_NAME, OUTPUT_NAME))
    x = INPUT_NAME
    if include_preprocessing and norm is not None:
        channels = (shape[0], 1, 1)
        mean = g.const("preprocess.mean", np.asarray(norm["mean"]).reshape(channels))
        std = g.const("preprocess.std", np.asarray(norm["std"]).reshape(channels))
        x = g.node("Div", [g.node("Sub", [x, mean], "preprocess.sub"), std], "preprocess.div")
    for index, layer in enumerate(layers):
        x = converters[type(layer)](g, layer, x, str(index), shapes[index])
    g.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name=OUTPUT_NAME))

    graph = helper.make_graph(
        g.nodes, getattr(model, "name", None) or "cnn_xp",
        [helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, [BATCH_AXIS, *shape])],
        [helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, [BATCH_AXIS, outputs])],
        initializer=g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="cnn_xp",
                              producer_version=_version(), doc_string=_doc(include_preprocessing, norm))
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    meta = {"class_names": names, "normalization": norm, "input_shape": list(shape),
            "preprocessing": "included" if include_preprocessing else "not included",
            "model": getattr(model, "name", None)}
    helper.set_model_props(proto, {key: json.dumps(value) for key, value in meta.items()})
    return proto


def _version() -> str:
    from . import __version__

    return __version__


def _doc(include_preprocessing, norm) -> str:
    if include_preprocessing or norm is None:
        return "input: images with pixels scaled to [0, 1], (batch, C, H, W); output: class scores (logits)"
    return ("input: images with pixels scaled to [0, 1], then normalised per channel ((x - mean) / std, "
            "metadata 'normalization'); output: class scores (logits)")


def save_onnx(model, path, input_shape=None, **options):
    """``to_onnx(model, input_shape, **options)`` written to ``path`` atomically; returns the
    ``onnx.ModelProto``. WriteError (one line) when the file cannot be written."""
    from .atomic import atomic_open

    proto = to_onnx(model, input_shape, **options)
    data = proto.SerializeToString()
    try:
        with atomic_open(path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise WriteError(f"cannot write {os.fspath(path)} ({exc.strerror or type(exc).__name__})") from None
    return proto


__all__ = ["to_onnx", "save_onnx", "UnsupportedLayer", "MissingOnnx", "SUPPORTED_LAYERS", "INPUT_NAME",
           "OUTPUT_NAME"]
