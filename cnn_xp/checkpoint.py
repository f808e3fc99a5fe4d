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

Reading trusts nothing in the file: no pickle (only plain numeric, boolean and unicode
arrays are accepted); a regular file only (see ``input_files``) of at most
``MAX_CHECKPOINT_BYTES``; every entry's ``.npy`` header is parsed and the bytes it claims
are compared with the entry's real size before an array is made, so a header claiming a
huge shape allocates nothing; the entries together may decompress to at most
``MAX_CHECKPOINT_BYTES``. Every failure is a :class:`CheckpointError` with a one-line reason.
What the metadata must hold for a given use is checked by that use (the trainer's schema).
"""
from __future__ import annotations

import io
import json
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy

from . import backend, errors
from .atomic import atomic_open
from .input_files import describe_os_error, open_regular

FORMAT_VERSION = 1
# Largest checkpoint read: 1 GiB on disk and decompressed (the zoo's largest is about 20 MB).
MAX_CHECKPOINT_BYTES = 1 << 30
MAX_ENTRIES = 100_000
_ARRAY_KINDS = "biuf"  # bool, signed, unsigned, float; "U" (unicode) for the 0-d meta entry only
_NPY_VERSIONS = {(1, 0): numpy.lib.format.read_array_header_1_0, (2, 0): numpy.lib.format.read_array_header_2_0}


class CheckpointError(errors.CheckpointError):
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


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> numpy.ndarray:
    """One ``.npy`` entry as an array; ValueError naming what is wrong with it."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(f"entry {info.filename!r} uses compression method {info.compress_type}")
    with zf.open(info) as member:
        raw = member.read(info.file_size + 1)  # zipfile stops at the declared size and checks the CRC
    if len(raw) != info.file_size:
        raise ValueError(f"entry {info.filename!r} holds {len(raw)} bytes, its header says {info.file_size}")
    fp = io.BytesIO(raw)
    version = numpy.lib.format.read_magic(fp)
    if version not in _NPY_VERSIONS:
        raise ValueError(f"entry {info.filename!r}: unsupported .npy version {version}")
    shape, fortran_order, dtype = _NPY_VERSIONS[version](fp, max_header_size=10000)
    is_meta = info.filename == "meta.npy"
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None \
            or dtype.kind not in (_ARRAY_KINDS + ("U" if is_meta else "")) or dtype.itemsize == 0:
        raise ValueError(f"entry {info.filename!r} has dtype {dtype}, not a plain numeric array")
    if any(d < 0 for d in shape):
        raise ValueError(f"entry {info.filename!r} has a negative dimension in shape {shape}")
    claimed = math.prod(shape) * dtype.itemsize
    data = raw[fp.tell():]
    if claimed != len(data):
        raise ValueError(f"entry {info.filename!r} claims shape {shape} of {dtype} ({claimed:,} bytes) "
                         f"but holds {len(data):,} bytes")
    array = numpy.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    return array.copy()


def _read_arrays(path: str) -> dict[str, numpy.ndarray]:
    """Every entry of the archive at ``path``; CheckpointError on anything unexpected."""
    try:
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_CHECKPOINT_BYTES:
                raise CheckpointError(f"{path}: {size:,} bytes, more than the {MAX_CHECKPOINT_BYTES >> 20} MiB "
                                      f"a checkpoint may hold")
            with zipfile.ZipFile(fh) as zf:
                infos = zf.infolist()
                total = sum(i.file_size for i in infos)
                if len(infos) > MAX_ENTRIES or total > MAX_CHECKPOINT_BYTES:
                    raise CheckpointError(f"{path}: {len(infos):,} entries of {total:,} bytes in all, more than "
                                          f"a checkpoint may hold ({MAX_ENTRIES:,}, {MAX_CHECKPOINT_BYTES >> 20} MiB)")
                arrays: dict[str, numpy.ndarray] = {}
                for info in infos:
                    if not info.filename.endswith(".npy"):
                        raise ValueError(f"entry {info.filename!r} is not a .npy array")
                    name = info.filename[:-len(".npy")]
                    if name in arrays:
                        raise ValueError(f"entry {info.filename!r} appears twice")
                    arrays[name] = _read_entry(zf, info)
                return arrays
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as exc:  # includes a FIFO, device or folder refused unopened
        raise CheckpointError(f"cannot read checkpoint {path}: {describe_os_error(exc)}") from None
    except (ValueError, SyntaxError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error,
            NotImplementedError, RuntimeError, struct.error, OverflowError, MemoryError) as exc:
        # zipfile/numpy header parsing of untrusted bytes: each of these means "not a valid archive"
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved).

    Checks the container (see the module docstring) and the metadata's JSON, not what the
    metadata means: that is the reader's schema (e.g. ``cnn_xp.app.run_checkpoint``).
    """
    path = os.fspath(path)
    arrays = _read_arrays(path)
    if "meta" not in arrays:
        raise CheckpointError(f"{path} is not a cnn_xp checkpoint (no 'meta' entry)")
    if arrays["meta"].dtype.kind != "U" or arrays["meta"].shape != ():
        raise CheckpointError(f"{path}: corrupt metadata (a {arrays['meta'].dtype} array of shape "
                              f"{arrays['meta'].shape}, not a JSON text)")
    try:
        meta = json.loads(str(arrays["meta"]))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: corrupt metadata ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt metadata (a JSON {type(meta).__name__}, not an object)")
    for name in arrays:
        if name != "meta" and name.split("/", 1)[0] not in ("meta", "model", "optim", "extra"):
            raise CheckpointError(f"{path}: unexpected entry {name!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format_version')!r}")
    model_state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    extra = {k[len("extra/"):]: v for k, v in arrays.items() if k.startswith("extra/")}
    opt_encoded = meta.pop("optimizer_state", None)
    try:
        optimizer_state = None if opt_encoded is None else _decode(opt_encoded, arrays)
        meta = _decode(meta, arrays)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc})") from None
    return Checkpoint(meta=meta, model_state=model_state, optimizer_state=optimizer_state, extra=extra)
