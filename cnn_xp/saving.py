"""``model.save(path)``: a model in one no-pickle ``.npz`` file (``cnn_xp.load`` reads it back).

The file is a checkpoint (``cnn_xp.checkpoint``): the weights, and in its metadata the
architecture (each layer's type and constructor arguments), the dtype, the zoo name when
the model came from the zoo, and whatever the caller adds (the recipe, class names, the
data set's normalisation). Run checkpoints add the optimizer's state and the training
state, and load the same way, so anything that takes a checkpoint takes either.
"""
from __future__ import annotations

from .checkpoint import Checkpoint, save_checkpoint
from .layers import (AvgPool2D, Affine, BatchNorm, Conv2D, Dropout, Flatten, GlobalAvgPool2D, MaxPool2D, ReLU,
                     Residual, Sigmoid, SoftmaxCrossEntropy, Tanh)

LAYER_TYPES = {cls.__name__: cls for cls in (Conv2D, MaxPool2D, AvgPool2D, Affine, Flatten, ReLU, Sigmoid, Tanh,
                                             Dropout, BatchNorm, GlobalAvgPool2D, Residual)}
MAX_LAYERS = 1000


def layer_config(layer) -> dict:
    """``{"type": name, "args": {...}}``: what rebuilds ``layer`` (its weights aside)."""
    name = type(layer).__name__
    if name not in LAYER_TYPES or type(layer) is not LAYER_TYPES[name]:
        raise ValueError(f"cannot save a {name} layer: the file format knows {', '.join(LAYER_TYPES)}")
    if isinstance(layer, Conv2D):
        out_c, in_c, kh, kw = (int(d) for d in layer.params["W"].shape)
        args = {"in_channels": in_c, "out_channels": out_c, "kernel_size": [kh, kw],
                "stride": list(layer.stride), "pad": list(layer.pad), "bias": layer.bias}
    elif isinstance(layer, (MaxPool2D, AvgPool2D)):
        args = {"kernel_size": list(layer.kernel), "stride": list(layer.stride), "pad": list(layer.pad)}
    elif isinstance(layer, Affine):
        args = {"in_features": int(layer.params["W"].shape[0]), "out_features": int(layer.params["W"].shape[1])}
    elif isinstance(layer, Dropout):
        args = {"p": layer.p, "seed": int(layer.rng_state()["seed"])}
    elif isinstance(layer, BatchNorm):
        args = {"num_features": int(layer.params["gamma"].shape[0]), "momentum": layer.momentum, "eps": layer.eps}
    elif isinstance(layer, Residual):
        out_c, in_c = (int(d) for d in layer.params["conv1.W"].shape[:2])
        args = {"in_channels": in_c, "out_channels": out_c, "stride": layer.stride}
    else:
        args = {}
    return {"type": name, "args": args}


def architecture(model) -> list[dict]:
    """The model's layers as :func:`layer_config` entries (its loss must be softmax cross-entropy)."""
    if type(model.loss_layer) is not SoftmaxCrossEntropy:
        raise ValueError(f"cannot save a model whose loss is {type(model.loss_layer).__name__}")
    return [layer_config(layer) for layer in model.layers]


def build_layers(layers, dtype: str = "float32") -> list:
    """The layers :func:`architecture`'s list describes (weights freshly drawn); ValueError
    naming the entry that is not a known layer with valid arguments."""
    if not isinstance(layers, list) or not 0 < len(layers) <= MAX_LAYERS:
        raise ValueError(f"architecture must be a list of 1..{MAX_LAYERS} layers")
    built = []
    for index, entry in enumerate(layers):
        if not isinstance(entry, dict) or entry.get("type") not in LAYER_TYPES or not isinstance(entry.get("args"), dict):
            raise ValueError(f"architecture[{index}] is not a known layer ({', '.join(LAYER_TYPES)})")
        cls, args = LAYER_TYPES[entry["type"]], dict(entry["args"])
        if cls in (Conv2D, Affine, BatchNorm, Residual):
            args["dtype"] = dtype
        if cls in (Conv2D, Affine, Residual):
            args["rng"] = 0
        try:
            built.append(cls(**args))
        except (TypeError, ValueError, OverflowError, MemoryError) as exc:
            raise ValueError(f"architecture[{index}] ({entry['type']}): {exc}") from None
    return built


def save(model, path, *, meta=None, optimizer=None, training_state=None, extra=None) -> None:
    """Write ``model`` (architecture and weights) to ``path`` atomically, with ``meta``
    (JSON-able), an optimizer's state and a ``fit`` training state when given."""
    info = dict(meta or {})
    info.update(kind="cnn_xp.model", architecture=architecture(model), dtype=model.dtype)
    if getattr(model, "name", None) and "model" not in info:
        info["model"] = model.name
    for key in ("recipe", "class_names", "input_shape", "data"):
        value = getattr(model, key, None)
        if value is not None and key not in info:
            info[key] = value.to_dict() if hasattr(value, "to_dict") else (
                list(value) if isinstance(value, tuple) else value)
    if training_state is not None:
        info.update(training_state)
    save_checkpoint(path, Checkpoint(meta=info, model_state=model.state_dict(),
                                     optimizer_state=None if optimizer is None else optimizer.state_dict(),
                                     extra=dict(extra or {})))


__all__ = ["save", "architecture", "build_layers", "layer_config", "LAYER_TYPES"]
