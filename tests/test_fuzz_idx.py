"""Fuzzing the IDX reader: any bytes give a valid array or a DatasetError, never anything else
(no other exception, no allocation from a header's claim). Truncations, bit flips, huge and
zero dimensions, wrong type codes, junk, raw or gzip."""
import gzip
import struct

import numpy as np
import pytest
from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from cnn_xp.data import DatasetError
from cnn_xp.data.idx import read_images, read_labels

FUZZ = fuzz(300)


def idx(kind: str, n: int, rng) -> bytes:
    if kind == "images":
        return struct.pack(">IIII", 0x803, n, 28, 28) + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes()
    return struct.pack(">II", 0x801, n) + rng.integers(0, 10, n, dtype=np.uint8).tobytes()


U32 = st.one_of(st.sampled_from([0, 1, 27, 28, 29, 2 ** 31, 0xFFFFFFF0, 0xFFFFFFFF]),
                st.integers(0, 2 ** 32 - 1))


@st.composite
def forged_header(draw, kind):
    """A header with drawn dimensions (often huge or zero) over a short body."""
    magic = 0x803 if kind == "images" else 0x801
    if draw(st.integers(0, 4)) == 0:  # sometimes another type code or number of dimensions
        magic = (draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x42])) << 8) | draw(st.integers(0, 5))
    ndim = magic & 0xFF
    dims = [draw(U32) for _ in range(ndim)]
    if kind == "images" and ndim == 3 and draw(st.booleans()):
        dims[1:] = [28, 28]  # only the count is hostile
    return struct.pack(f">I{ndim}I", magic, *dims) + draw(st.binary(max_size=2000))


@st.composite
def hostile_idx(draw):
    kind = draw(st.sampled_from(["images", "labels"]))
    if draw(st.booleans()):
        data = bytearray(draw(forged_header(kind)))
    else:
        n = draw(st.integers(0, 4))
        data = bytearray(idx(kind, n, np.random.default_rng(draw(st.integers(0, 99)))))
    for _ in range(draw(st.integers(0, 3))):
        mutation = draw(st.sampled_from(["truncate", "flip", "dim", "magic", "append"]))
        if mutation == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)):]
        elif mutation == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif mutation == "dim" and len(data) >= 8:
            slot = draw(st.integers(1, (len(data) // 4) - 1 if kind == "labels" else 3))
            if 4 * slot + 4 <= len(data):
                data[4 * slot:4 * slot + 4] = struct.pack(">I", draw(U32))
        elif mutation == "magic" and len(data) >= 4:
            data[2:4] = bytes([draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF])),
                               draw(st.integers(0, 255))])
        elif mutation == "append":
            data += draw(st.binary(max_size=64))
    compress = draw(st.sampled_from(["raw", "gzip", "gzip then damage"]))
    blob = bytes(data)
    if compress != "raw":
        blob = bytearray(gzip.compress(blob, mtime=0))
        if compress == "gzip then damage":
            if draw(st.booleans()):
                del blob[draw(st.integers(0, len(blob) - 1)):]
            else:
                i = draw(st.integers(0, len(blob) - 1))
                blob[i] ^= 1 << draw(st.integers(0, 7))
        blob = bytes(blob)
    return kind, blob


def check_result(kind, array):
    if kind == "images":
        assert array.ndim == 3 and array.shape[1:] == (28, 28) and array.dtype == np.uint8
    else:
        assert array.ndim == 1 and array.dtype == np.int64
        assert array.size == 0 or (array.min() >= 0 and array.max() <= 9)
    assert array.flags.writeable


@FUZZ
@given(case=hostile_idx())
def test_idx_reader_returns_valid_arrays_or_dataset_error(tmp_path, case):
    kind, blob = case
    path = tmp_path / "file-idx"
    path.write_bytes(blob)
    reader = read_images if kind == "images" else read_labels
    try:
        array = reader(path)
    except DatasetError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    check_result(kind, array)


@FUZZ
@given(blob=st.binary(max_size=300), kind=st.sampled_from(["images", "labels"]))
def test_idx_reader_on_random_bytes(tmp_path, blob, kind):
    path = tmp_path / "random-idx"
    path.write_bytes(blob)
    try:
        check_result(kind, (read_images if kind == "images" else read_labels)(path))
    except DatasetError:
        pass


@pytest.mark.parametrize("gz", [False, True])
def test_the_fuzzer_sees_valid_files_as_valid(tmp_path, gz):
    blob = idx("images", 3, np.random.default_rng(0))
    path = tmp_path / "ok"
    path.write_bytes(gzip.compress(blob) if gz else blob)
    assert read_images(path).shape == (3, 28, 28)
