"""Fuzzing the checkpoint loader: a damaged or forged checkpoint.npz is refused with the
project's own error (UserError from the run-checkpoint schema, CheckpointError below it) or
accepted as one the trainer can really use: the weights load into the named model, the
optimizer state into its optimizer, the RNG states into the batch iterator and the dropout
layers, and a training step runs. Byte truncations and bit flips, random metadata, wrong
dtypes, forged .npy headers claiming huge or zero shapes, pickled entries."""
import io
import json
import struct
import zipfile

import numpy as np

from cnn_xp import Recipe
import pytest
from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from cnn_xp import models
from cnn_xp.app import cli
from cnn_xp.app.run_checkpoint import load_run_checkpoint
from cnn_xp.errors import CheckpointError as UserError
from cnn_xp.checkpoint import CheckpointError, load_checkpoint
from cnn_xp.data import BatchIterator
from cnn_xp.optim import OPTIMIZERS
from tiny_idx import write_dataset

FUZZ = fuzz(120)


class Base:
    """The bytes and arrays of one real checkpoint (short repr: hypothesis prints its arguments)."""

    def __init__(self, blob, arrays):
        self.blob, self.arrays = blob, arrays

    def __repr__(self):
        return f"<deep_convnet checkpoint, {len(self.blob):,} bytes>"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A real trainer checkpoint of deep_convnet (it has dropout RNG states) after 2 epochs."""
    root = tmp_path_factory.mktemp("fuzz-ckpt")
    data = write_dataset(root / "data", n_train=60, n_test=20)
    out = root / "run"
    assert cli.main(["train", "--model", "deep_convnet", "--dataset", "mnist", "--data-dir", data, "--epochs", "2",
                     "--batch-size", "30", "--out", str(out), "--no-download", "--no-progress"]) == 0
    path = out / "checkpoint.npz"
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    return Base(path.read_bytes(), arrays)


def assert_usable(ckpt):
    """What the trainer does with an accepted checkpoint, short of a whole epoch."""
    meta, hp = ckpt.meta, ckpt.meta["recipe"]
    model = models.build(meta["model"], seed=0, dtype=hp["dtype"])
    model.load_state_dict(ckpt.model_state)
    optimizer = Recipe.from_dict(hp).build_optimizer(model)
    optimizer.load_state_dict(ckpt.optimizer_state)
    x = np.zeros((4, 1, 28, 28), dtype=hp["dtype"])
    batches = BatchIterator(x, np.arange(4) % 10, 2, seed=hp["seed"])
    batches.load_state_dict(meta["rng"]["batches"])
    model.set_random_state(meta["rng"]["model"])
    xb, tb = next(iter(batches))
    model.loss(xb, tb)
    model.backward()
    optimizer.step()
    assert len(meta["class_names"]) == 10 and len(meta["history"]) == meta["epoch"]


def check(path):
    """The property: a usable checkpoint or the project's own one-line error."""
    try:
        ckpt = load_run_checkpoint(path, UserError)
    except UserError as exc:
        assert "\n" not in str(exc)
        return False
    assert_usable(ckpt)
    return True


def test_the_base_checkpoint_is_accepted(base, tmp_path):
    path = tmp_path / "c.npz"
    path.write_bytes(base.blob)
    assert check(path)


# -- bytes: truncation and bit flips, biased towards the zip structures at both ends -----
@FUZZ
@given(data=st.data())
def test_truncated_or_bit_flipped_files(base, tmp_path, data):
    blob = bytearray(base.blob)
    if data.draw(st.booleans(), "truncate"):
        cut = data.draw(st.one_of(st.integers(0, 4096), st.integers(len(blob) - 4096, len(blob) - 1),
                                  st.integers(0, len(blob) - 1)), "cut")
        del blob[cut:]
    else:
        for _ in range(data.draw(st.integers(1, 8), "flips")):
            i = data.draw(st.one_of(st.integers(0, 2048), st.integers(len(blob) - 4096, len(blob) - 1),
                                    st.integers(0, len(blob) - 1)), "at")
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
    path = tmp_path / "c.npz"
    path.write_bytes(bytes(blob))
    check(path)


# -- metadata: random JSON values put anywhere -------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["PCG64", "float32", "int8", "adam", "mnist", "deep_convnet"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    | st.fixed_dictionaries({"__array__": st.sampled_from(["model/0.W", "nope", "meta"])})
    | st.fixed_dictionaries({"__pairs__": st.lists(st.lists(inner, max_size=3), max_size=2)})
    | st.fixed_dictionaries({"__tuple__": st.lists(inner, max_size=3)}),
    max_leaves=12)


def paths_of(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths_of(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths_of(v, prefix + (i,))


def save_arrays(path, arrays):
    np.savez(path, **arrays)


@FUZZ
@given(data=st.data())
def test_random_metadata(base, tmp_path, data):
    arrays = dict(base.arrays)
    meta = json.loads(str(arrays["meta"]))
    for _ in range(data.draw(st.integers(1, 3), "edits")):
        paths = list(paths_of(meta))
        where = data.draw(st.sampled_from(paths), "path")
        action = data.draw(st.sampled_from(["replace", "delete"]), "action")
        if not where:
            meta = data.draw(JSON, "whole meta") if action == "replace" else {}
            if not isinstance(meta, dict):
                break
            continue
        parent = meta
        for key in where[:-1]:
            parent = parent[key]
        if action == "delete":
            del parent[where[-1]]
        else:
            parent[where[-1]] = data.draw(JSON, "value")
    arrays["meta"] = np.array(json.dumps(meta))
    path = tmp_path / "c.npz"
    save_arrays(path, arrays)
    check(path)


# -- arrays: wrong dtypes, wrong or zero shapes, pickled objects, forged headers ----------
WRONG = st.sampled_from(["int8", "float16", "float64", "bool", "complex64", "uint64", "<U3", ">f4", "object",
                         "zero dim", "extra dim", "scalar", "transposed"])


def wrong_array(kind, like):
    if kind == "object":
        return np.array([{"x": 1}], dtype=object)
    if kind == "zero dim":
        return np.zeros((0,) + like.shape[1:], like.dtype)
    if kind == "extra dim":
        return like[None]
    if kind == "scalar":
        return np.array(1.5, like.dtype)
    if kind == "transposed":
        return np.ascontiguousarray(like.T) if like.ndim > 1 else like.reshape(-1)[::-1].copy()
    return np.ones(like.shape, dtype=kind) if kind != "<U3" else np.full(like.shape, "abc")


@FUZZ
@given(data=st.data())
def test_wrong_dtypes_and_shapes(base, tmp_path, data):
    arrays = dict(base.arrays)
    names = sorted(arrays)
    for _ in range(data.draw(st.integers(1, 2), "edits")):
        name = data.draw(st.sampled_from(names), "entry")
        arrays[name] = wrong_array(data.draw(WRONG, "kind"), arrays[name])
    path = tmp_path / "c.npz"
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # NumPy pickles the object arrays: the loader must refuse those
    path.write_bytes(buf.getvalue())
    check(path)


def forged_npy(shape, descr="<f4", body=b"\0" * 16, version=b"\x01\x00") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY" + version + struct.pack("<H", len(header)) + header + body


@FUZZ
@given(shape=st.lists(st.one_of(st.sampled_from([0, 1, 2 ** 31, 2 ** 40, 2 ** 62]), st.integers(0, 2 ** 63 - 1)),
                      min_size=0, max_size=4).map(tuple),
       descr=st.sampled_from(["<f4", "<f8", "|u1", "|O", "<U5", "|V8", "[('a', '<f4')]", "bogus"]),
       body=st.binary(max_size=64), entry=st.sampled_from(["model/0.W", "meta", "optim/h/0.W", "extra/x"]))
def test_forged_npy_headers_allocate_nothing(base, tmp_path, shape, descr, body, entry):
    arrays = dict(base.arrays)
    path = tmp_path / "c.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for name, value in arrays.items():
            if name == entry:
                continue
            buf = io.BytesIO()
            np.save(buf, value)
            zf.writestr(name + ".npy", buf.getvalue())
        zf.writestr(entry + ".npy", forged_npy(shape, descr, body))
    try:
        load_checkpoint(path)
    except CheckpointError:
        pass
    check(path)


def test_an_entry_declaring_a_huge_size_is_refused_before_reading(base, tmp_path):
    """A zip bomb states its decompressed size in the central directory: refused from there."""
    path = tmp_path / "c.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.npy", forged_npy((), "<U10", b"\0" * 40))
        zf.writestr("model/0.W.npy", forged_npy((2 ** 29,), "<f4", b"\0" * 4096))
    blob = bytearray(path.read_bytes())
    entry = blob.rindex(b"PK\x01\x02")  # central directory record of the last entry
    blob[entry + 24:entry + 28] = struct.pack("<I", 0xC0000000)  # declared: 3 GiB uncompressed
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="more than a checkpoint may hold"):
        load_checkpoint(path)
