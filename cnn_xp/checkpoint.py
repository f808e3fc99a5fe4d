"""Checkpoints: one ``.npz`` file, written atomically, readable with ``allow_pickle=False``.

Layout of the archive:

- ``model/<name>``: every entry of ``Sequential.state_dict()`` (``"0.W"``, ``"3.b"``, ...).
- ``optim/<path>``: every array inside the optimizer's ``state_dict()`` (nested dicts are
  joined with ``/``).
- ``extra/<name>``: other arrays the trainer keeps (the first-layer filters before training).
- ``meta``: a 0-d unicode array holding JSON: model name, hyperparameters, epoch, RNG states,
  and the optimizer state's scalars and structure. Arrays inside meta or the optimizer state
  are stored as entries of their own and appear in the JSON as ``{"__array__": key}``;
  tuples as ``{"__tuple__": [...]}``, dicts with non-string keys as ``{"__pairs__": [...]}``.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy

from . import backend
from .atomic import atomic_open

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not a cnn_xp checkpoint."""


@dataclass
class Checkpoint:
    """What a checkpoint holds, with host (NumPy) arrays."""

    meta: dict
    model_state: dict[str, numpy.ndarray]
    optimizer_state: dict | None = None
    extra: dict[str, numpy.ndarray] = field(default_factory=dict)


def _encode(obj, prefix: str, arrays: dict):
    """JSON-able copy of ``obj``; arrays move into ``arrays`` under ``prefix``-based keys."""
    if isinstance(obj, numpy.ndarray) or backend.device_of(obj) == "gpu":
        arrays[prefix] = backend.to_numpy(obj)
        return {"__array__": prefix}
    if isinstance(obj, numpy.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not ({"__array__", "__pairs__", "__tuple__"} & obj.keys()):
            return {k: _encode(v, f"{prefix}/{k}", arrays) for k, v in obj.items()}
        return {"__pairs__": [[_encode(k, f"{prefix}/k{i}", arrays), _encode(v, f"{prefix}/{i}", arrays)]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{prefix}/{i}", arrays) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{prefix}/{i}", arrays) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _decode(obj, arrays):
    if isinstance(obj, dict):
        if "__array__" in obj:
            return numpy.array(arrays[obj["__array__"]])
        if "__pairs__" in obj:
            return {_decode(k, arrays): _decode(v, arrays) for k, v in obj["__pairs__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
        return {k: _decode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    return obj


def save_checkpoint(path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically (temp file in the same folder, then os.replace)."""
    path = os.fspath(path)
    arrays: dict[str, numpy.ndarray] = {}
    for name, value in ckpt.model_state.items():
        arrays[f"model/{name}"] = backend.to_numpy(value)
    for name, value in ckpt.extra.items():
        arrays[f"extra/{name}"] = backend.to_numpy(value)
    meta = _encode(dict(ckpt.meta), "meta", arrays)
    meta["format_version"] = FORMAT_VERSION
    meta["optimizer_state"] = (None if ckpt.optimizer_state is None
                               else _encode(ckpt.optimizer_state, "optim", arrays))
    arrays["meta"] = numpy.array(json.dumps(meta))
    with atomic_open(path, "wb") as fh:
        numpy.savez(fh, **arrays)


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path} is not a cnn_xp checkpoint (no 'meta' entry)")
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt metadata ({exc})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format_version')!r}")
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    extra = {k[len("extra/"):]: v for k, v in arrays.items() if k.startswith("extra/")}
    opt_encoded = meta.pop("optimizer_state", None)
    try:
        optimizer_state = None if opt_encoded is None else _decode(opt_encoded, arrays)
        meta = _decode(meta, arrays)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc})") from None
    return Checkpoint(meta=meta, model_state=model_state, optimizer_state=optimizer_state, extra=extra)
