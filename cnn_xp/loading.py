"""``cnn_xp.load(path)``: the model in a file written by ``model.save`` or a run checkpoint
(``cnn_xp.saving`` describes the file)."""
from __future__ import annotations

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .layers import SoftmaxCrossEntropy
from .model import Sequential
from .saving import build_layers


def model_from_checkpoint(ckpt: Checkpoint, device: str = "cpu", where: str = "model"):
    """The model a checkpoint describes, its weights loaded; CheckpointError naming ``where``
    and the field when the architecture or weights do not fit."""
    meta = ckpt.meta
    dtype = meta.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise CheckpointError(f"{where}: dtype must be float32 or float64, got {dtype!r}")
    try:
        if "architecture" in meta:
            model = Sequential(build_layers(meta["architecture"], dtype), loss=SoftmaxCrossEntropy(), device=device,
                               dtype=dtype)
        else:
            raise ValueError("neither a run checkpoint nor a saved model (its metadata has no architecture)")
        model.load_state_dict(ckpt.model_state)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    model.name = meta.get("model") if isinstance(meta.get("model"), str) else None
    model.class_names = meta.get("class_names")
    model.data = None
    if meta.get("data") is not None:
        from .data.descriptions import DataDescription

        try:
            model.data = DataDescription.from_dict(meta["data"], where=f"{where}: data")
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    if isinstance(meta.get("input_shape"), list):
        model.input_shape = tuple(meta["input_shape"])
    return model


def load(path, device: str = "cpu"):
    """The model saved at ``path`` (by ``model.save`` or a run checkpoint) on ``device``:
    a ``Sequential`` with its weights, ``name`` (the zoo entry or None), ``class_names``
    and ``recipe`` (a ``cnn_xp.Recipe``, or None) as saved. CheckpointError (one line) when
    the file is missing, unreadable or inconsistent."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, device, where=str(path))
    model.recipe = None
    if isinstance(ckpt.meta.get("recipe"), dict):
        from .recipe import Recipe

        model.recipe = Recipe.from_dict(ckpt.meta["recipe"], where=f"{path}: recipe")
    return model


__all__ = ["load", "model_from_checkpoint"]
