"""The trainer's ``checkpoint.npz``: what its metadata must hold, checked against the model named.

Every reader of a run's checkpoint (``train --resume``, ``evaluate``, ``predict``) goes through
:func:`load_run_checkpoint`, so a hand-edited or damaged file ends in one UserError line that
names the file and the field, never in a traceback deep inside training or prediction.

The schema (``cnn_xp.checkpoint`` has already checked the container: no pickle, sizes):

- ``model``: a zoo name; ``dataset``: a known data set; ``device``: cpu or gpu;
- ``recipe``: every field of ``cnn_xp.Recipe``, checked by the recipe's own code (the
  same checks and messages as the command line's), naming the same model and data set;
- ``epoch``: an int >= 1, at most ``recipe.epochs``;
- ``architecture`` (when present): the named model's layers (``cnn_xp.saving``);
- ``data``: the data's description (``cnn_xp.data.DataDescription``: input shape, class
  names, normalisation, preprocessing), which the model is built for;
- ``class_names``: the description's classes, each a short printable string;
- ``history``: one row per finished epoch, epochs 1..epoch in order, finite numbers;
- ``wall_seconds``: a finite number >= 0;
- ``rng``: ``batches`` (a PCG64 state of the batch order) and ``model`` (a state for each
  random layer of the named model, and for nothing else);
- model weights: exactly the named model's entries, each of its shape, of the dtype the
  hyperparameters name, all finite;
- optimizer state (required): ``t`` (int >= 0), ``lr`` (finite, > 0), and ``<slot>/<parameter>``
  arrays of that parameter's shape, floating point and finite;
- ``extra/filters_before`` when present: the first conv layer's weight shape;
- the training features: the recipe's parameter groups (naming parameters of the model);
  the optimizer state's ``lr_factor`` and ``param_groups``; ``rng.augment`` with
  augmentation, ``schedule`` (its step count and a configuration ``cnn_xp.schedules``
  rebuilds) with a schedule. Each is checked by restoring it as the trainer does (the
  optimizer state into the recipe's optimizer, the augmentation RNG into the recipe's augmenter).

Unknown keys are allowed where a newer feature may add them (rng, the optimizer state's
scalars), so a newer checkpoint's extra fields do not fail here: the code that reads a key
is the code that must list it in the schema.
"""
from __future__ import annotations

import json
import math

import numpy

from .. import backend, models
from ..checkpoint import Checkpoint, CheckpointError, load_checkpoint
from ..errors import ConfigError
from ..data.descriptions import DataDescription
from ..recipe import Recipe

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_second")
MAX_CLASS_NAME = 64


class CheckpointSchemaError(ValueError):
    """One field of a run checkpoint is wrong; the message names it."""


def _show(value) -> str:
    """A short one-line account of a value found in a checkpoint."""
    if isinstance(value, numpy.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    shown = " ".join(repr(value).split())
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _fail(where: str, wanted: str, got) -> CheckpointSchemaError:
    return CheckpointSchemaError(f"{where} must be {wanted}, got {_show(got)}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value, where: str, minimum: int = 0, maximum: int | None = None) -> int:
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        span = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise _fail(where, f"an integer {span}", value)
    return value


def _number(value, where: str, minimum: float = 0.0, positive: bool = False, maximum: float | None = None):
    if not _is_number(value) or value < minimum or (positive and value <= 0) \
            or (maximum is not None and value > maximum):
        wanted = "a positive number" if positive else f"a number >= {minimum:g}"
        raise _fail(where, wanted + ("" if maximum is None else f" and <= {maximum:g}"), value)
    return value


def _choice(value, where: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _fail(where, f"one of {', '.join(choices)}", value)
    return value


def _object(value, where: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _fail(where, "an object with string keys", value)
    return value


def _decimal_int(value, where: str, bits: int) -> int:
    if not isinstance(value, str) or not value.isdigit() or len(value) > 40 or int(value) >= 1 << bits:
        raise _fail(where, f"a decimal integer below 2**{bits}", value)
    return int(value)


def _same(a, b) -> bool:
    """Plain-data equality that any hostile value (an array, a nested list) can take."""
    def text(value):
        return json.dumps(value, sort_keys=True, default=lambda o: f"<{type(o).__name__} {id(o)}>")
    return text(a) == text(b)


def _check_pcg64(state, where: str) -> None:
    state = _object(state, where)
    _choice(state.get("bit_generator"), f"{where}.bit_generator", ("PCG64",))
    inner = _object(state.get("state"), f"{where}.state")
    for key in ("state", "inc"):
        value = inner.get(key)
        if not _is_int(value) or not 0 <= value < 1 << 128:
            raise _fail(f"{where}.state.{key}", "an integer in 0..2**128-1", value)
    _int(state.get("has_uint32"), f"{where}.has_uint32", 0, 1)
    _int(state.get("uinteger"), f"{where}.uinteger", 0, (1 << 32) - 1)


def _check_batches_state(state, where: str) -> None:
    state = _object(state, where)
    _int(state.get("seed"), f"{where}.seed", 0)
    _int(state.get("epochs_drawn"), f"{where}.epochs_drawn", 0)
    _choice(state.get("bit_generator"), f"{where}.bit_generator", ("PCG64",))
    _decimal_int(state.get("state"), f"{where}.state", 128)
    _decimal_int(state.get("inc"), f"{where}.inc", 128)
    _int(state.get("has_uint32"), f"{where}.has_uint32", 0, 1)
    _int(state.get("uinteger"), f"{where}.uinteger", 0, (1 << 32) - 1)


def _check_layer_rng(state, where: str) -> None:
    state = _object(state, where)
    _int(state.get("seed"), f"{where}.seed", 0, (1 << 63) - 1)
    if "counter" in state:  # the counter-based stream
        _int(state.get("counter"), f"{where}.counter", 0, (1 << 62))
        return
    _int(state.get("draws"), f"{where}.draws", 0, (1 << 40))  # a state saved before it
    if "bit_generator" in state:
        _check_pcg64(state["bit_generator"], f"{where}.bit_generator")


def _check_array(value, where: str, shape, dtype=None) -> None:
    if not isinstance(value, numpy.ndarray):
        raise _fail(where, "an array", type(value).__name__)
    if tuple(value.shape) != tuple(shape):
        raise CheckpointSchemaError(f"{where} has shape {tuple(value.shape)}, the model needs {tuple(shape)}")
    if dtype is not None and value.dtype != numpy.dtype(dtype):
        raise CheckpointSchemaError(f"{where} is {value.dtype}, the hyperparameters say {dtype}")
    if value.dtype.kind != "f":
        raise CheckpointSchemaError(f"{where} is {value.dtype}, not floating point")
    if not numpy.isfinite(value).all():
        raise CheckpointSchemaError(f"{where} holds NaN or infinite values")


def _check_history(history, epoch: int) -> None:
    if not isinstance(history, list) or len(history) != epoch:
        got = f"{len(history)} rows" if isinstance(history, list) else history
        raise _fail("history", f"a list of {epoch} rows (one per finished epoch)", got)
    for i, row in enumerate(history):
        where = f"history[{i}]"
        row = _object(row, where)
        missing = [c for c in HISTORY_COLUMNS if c not in row]
        if missing:
            raise CheckpointSchemaError(f"{where} lacks {', '.join(missing)}")
        _int(row["epoch"], f"{where}.epoch", i + 1, i + 1)
        _number(row["train_loss"], f"{where}.train_loss")
        _number(row["train_acc"], f"{where}.train_acc", maximum=1.0)
        for key, top in (("val_loss", None), ("val_acc", 1.0)):
            if row[key] is not None:
                _number(row[key], f"{where}.{key}", maximum=top)
        _number(row["lr"], f"{where}.lr")
        _number(row["seconds"], f"{where}.seconds")
        if row["images_per_second"] is not None:
            _number(row["images_per_second"], f"{where}.images_per_second")


def validate_run_checkpoint(ckpt: Checkpoint) -> None:
    """CheckpointSchemaError naming the first field of ``ckpt`` that breaks the schema above."""
    meta = ckpt.meta
    missing = [k for k in ("model", "dataset", "epoch", "recipe") if k not in meta]
    if missing:
        raise CheckpointSchemaError(f"not a training checkpoint (no {', '.join(missing)} in its metadata)")
    try:
        recipe = Recipe.from_dict(meta["recipe"], where="recipe")
    except ConfigError as exc:
        raise CheckpointSchemaError(str(exc)) from None
    name = recipe.model
    for key in ("model", "dataset"):
        if not _same(meta[key], getattr(recipe, key)):
            raise _fail(key, f"the recipe's {getattr(recipe, key)!r}", meta[key])
    if "device" in meta:
        _choice(meta["device"], "device", tuple(backend.DEVICES))
    hp = {"dtype": recipe.dtype}
    epoch = _int(meta["epoch"], "epoch", 1, recipe.epochs)
    try:
        data = DataDescription.from_dict(meta.get("data"), "data")
    except ValueError as exc:
        raise CheckpointSchemaError(str(exc)) from None
    names = meta.get("class_names")
    if not isinstance(names, list) or len(names) != data.num_classes or not all(
            isinstance(n, str) and 0 < len(n) <= MAX_CLASS_NAME and n.isprintable() for n in names):
        raise _fail("class_names", f"a list of {data.num_classes} printable names (1..{MAX_CLASS_NAME} "
                    "characters each)", names)
    _check_history(meta.get("history"), epoch)
    _number(meta.get("wall_seconds"), "wall_seconds")
    rng = _object(meta.get("rng"), "rng")
    _check_batches_state(rng.get("batches"), "rng.batches")

    try:
        model = models.build(name, seed=recipe.seed, device="cpu", dtype=hp["dtype"], input_shape=data.input_shape,
                             num_classes=data.num_classes)
    except ConfigError as exc:
        raise CheckpointSchemaError(f"data.input_shape: {exc}") from None
    if "architecture" in meta:
        from ..saving import architecture

        if not _same(meta["architecture"], architecture(model)):
            raise CheckpointSchemaError(f"architecture is not {name}'s")
    random_layers = {str(i) for i, layer in enumerate(model.layers) if hasattr(layer, "rng_state")}
    layer_states = _object(rng.get("model"), "rng.model")
    if set(layer_states) != random_layers:
        raise CheckpointSchemaError(f"rng.model has states for layers {sorted(layer_states)}, "
                                    f"{name} has random layers {sorted(random_layers)}")
    for key, state in layer_states.items():
        _check_layer_rng(state, f"rng.model.{key}")

    expected = model.state_dict()
    weights = ckpt.model_state
    absent, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if absent or unexpected:
        raise CheckpointSchemaError(f"the weights do not fit {name}: missing {absent}, unexpected {unexpected}")
    for key, value in expected.items():
        _check_array(weights[key], f"weights {key}", value.shape, hp["dtype"])

    params = {pname: layer.params[k].shape for pname, layer, k in model.params_and_grads()}
    opt = _object(ckpt.optimizer_state, "the optimizer state")
    _int(opt.get("t"), "optimizer state t", 0)
    _number(opt.get("lr"), "optimizer state lr", positive=True)
    for key, value in opt.items():
        if "/" not in key:
            continue
        slot, pname = key.split("/", 1)
        if not slot or pname not in params:
            raise CheckpointSchemaError(f"optimizer state {_show(key)} names no parameter of {name}")
        _check_array(value, f"optimizer state {key}", params[pname])
    _check_features(ckpt, model, recipe)
    filters = ckpt.extra.get("filters_before")
    first = model.layers[0].params.get("W")
    if filters is not None:
        if first is None or first.ndim != 4:
            raise CheckpointSchemaError(f"extra filters_before given, but {name} starts with no conv layer")
        _check_array(filters, "extra filters_before", first.shape)


RESTORE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)


def _check_features(ckpt: Checkpoint, model, recipe: Recipe) -> None:
    """The parameter groups, optimizer, augmentation and schedule state, restored as the trainer does."""
    from ..training import build_augmenter
    from ..schedules import from_config

    meta, opt = ckpt.meta, ckpt.optimizer_state
    if "lr_factor" in opt:
        _number(opt["lr_factor"], "optimizer state lr_factor", positive=True)
    if "param_groups" in opt and not isinstance(opt["param_groups"], list):
        raise _fail("optimizer state param_groups", "a list of parameter groups", opt["param_groups"])
    try:
        optimizer = recipe.build_optimizer(model)
    except ConfigError as exc:
        raise CheckpointSchemaError(f"recipe: {exc}") from None
    try:
        optimizer.load_state_dict(opt)
    except RESTORE_ERRORS as exc:
        raise CheckpointSchemaError(f"the optimizer state does not restore: {exc}") from None
    if recipe.augment is not None:
        try:
            build_augmenter(recipe.augment, 0).load_state_dict(_object(meta.get("rng", {}).get("augment"),
                                                                           "rng.augment"))
        except CheckpointSchemaError:
            raise
        except RESTORE_ERRORS as exc:
            raise CheckpointSchemaError(f"the augmentation does not restore: {exc}") from None
    if recipe.schedule_spec() is not None:
        state = _object(meta.get("schedule"), "schedule")
        _int(state.get("steps"), "schedule.steps", 0)
        try:
            from_config(_object(state.get("schedule"), "schedule.schedule"))
        except CheckpointSchemaError:
            raise
        except RESTORE_ERRORS as exc:
            raise CheckpointSchemaError(f"schedule.schedule does not describe a schedule: {exc}") from None


def load_run_checkpoint(path, user_error=CheckpointError) -> Checkpoint:
    """A trainer checkpoint read and validated; ``user_error`` (one line naming the file)
    when it is missing, unreadable, or breaks the schema."""
    try:
        ckpt = load_checkpoint(path)
        validate_run_checkpoint(ckpt)
    except CheckpointSchemaError as exc:
        raise user_error(f"{path}: {exc}") from None
    except CheckpointError as exc:
        raise user_error(str(exc)) from None
    return ckpt
