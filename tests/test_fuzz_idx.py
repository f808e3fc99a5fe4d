"""Fuzzing the IDX reader: any bytes give a valid array or a DatasetError, never anything else
(no other exception, no allocation from a header's claim). Truncations, bit flips, huge and
zero dimensions, wrong type codes, junk, raw or gzip; gzip streams split into members,
truncated, with trailing bytes, wrong header counts and bombs, read within bounded memory."""
import gzip
import struct
import tracemalloc

import numpy as np
import pytest
from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st

from cnn_xp.data import DatasetError, load_files
from cnn_xp.data.idx import read_images, read_labels
from data_helpers import gzip_bomb, tiny_arrays, write_dataset

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


# -- gzip streams: split into members, truncated, trailing bytes, wrong counts, bombs ------
SLACK = 3 << 20  # a read chunk, gzip's buffers and the header's few bytes


def with_count(payload: bytes, count: int) -> bytes:
    return payload[:4] + struct.pack(">I", count) + payload[8:]


@st.composite
def gzip_stream(draw):
    """(kind, file bytes, the stream's intended data, the header's claimed total size, whether
    the file is intact: every member whole, nothing after it but gzip's zero padding)."""
    kind = draw(st.sampled_from(["images", "labels"]))
    n = draw(st.integers(0, 4))
    payload = idx(kind, n, np.random.default_rng(draw(st.integers(0, 99))))
    item = 784 if kind == "images" else 1
    count = n
    if draw(st.integers(0, 2)) == 0:  # a header count that is not what follows
        count = draw(st.one_of(st.integers(0, 12), st.sampled_from([2 ** 20, 2 ** 31, 2 ** 32 - 1])))
        payload = with_count(payload, count)
    header = 16 if kind == "images" else 8
    claimed = header + count * item
    zeros = draw(st.sampled_from([0, 0, 1, 783, 4096, 1 << 20, (3 << 20) + 5, 16 << 20]))  # a bomb's tail
    data = payload + bytes(zeros) if zeros < 4096 else payload
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=2)))
    members = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    blob = b"".join(gzip.compress(m, mtime=0) for m in members)
    if zeros >= 4096:
        blob += gzip_bomb(b"", zeros)
        data += bytes(zeros)
    intact = True
    if draw(st.integers(0, 3)) == 0:
        blob = blob[:draw(st.integers(0, len(blob) - 1))]
        intact = False
    tail = draw(st.sampled_from(["none", "none", "zeros", "garbage", "gzip magic"]))
    if tail == "zeros":
        blob += bytes(draw(st.integers(1, 64)))  # gzip's own padding: allowed
    elif tail == "garbage":
        blob += b"\x01" + draw(st.binary(max_size=64))
        intact = False
    elif tail == "gzip magic":
        blob += b"\x1f\x8b" + draw(st.binary(max_size=32))
        intact = False
    return kind, blob, data, claimed, intact


@FUZZ
@given(case=gzip_stream())
def test_gzip_streams_read_exactly_their_claim_within_bounded_memory(tmp_path, case):
    kind, blob, data, claimed, intact = case
    path = tmp_path / "stream-idx.gz"
    path.write_bytes(blob)
    reader = read_images if kind == "images" else read_labels
    tracemalloc.start()
    try:
        array = reader(path)
    except DatasetError as exc:
        array = None
        assert str(path) in str(exc) and "\n" not in str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # memory follows the data really there, never beyond the claim (a bomb's tail is not inflated)
    assert peak <= min(claimed, len(data)) * (9 if kind == "labels" else 1) + SLACK, (peak, claimed, len(data))
    if array is not None:  # only ever the stream's own data (a truncation at a member's end
        check_result(kind, array)  # can leave a shorter valid stream), exactly as much as claimed
        assert claimed <= len(data) and array.astype(np.uint8).tobytes() == data[claimed - array.size:claimed]
    elif intact and len(data) == claimed:
        pytest.fail(f"an intact gzip stream holding exactly its claim was refused")


@FUZZ
@given(n_images=st.sampled_from([1, 3, 1000, 2 ** 20, 2 ** 32 - 1]), n_labels=st.sampled_from([0, 1, 3, 2 ** 20]),
       bomb=st.sampled_from(["images", "labels", "none"]))
def test_pairs_whose_headers_disagree_are_refused_before_any_data_is_read(tmp_path, n_images, n_labels, bomb):
    """The counts of the images and labels headers are compared before either file's data is
    read: a disagreeing pair costs only its headers, bomb or not."""
    folder = tmp_path / "pair"
    paths = write_dataset(folder, tiny_arrays(n_train=3, n_test=2), gz=True)
    inflated = 64 << 20
    images = struct.pack(">IIII", 0x803, n_images, 28, 28)
    labels = struct.pack(">II", 0x801, n_labels)
    paths["train_images"].write_bytes(gzip_bomb(images, inflated if bomb == "images" else 784 * min(n_images, 3)))
    paths["train_labels"].write_bytes(gzip_bomb(labels, inflated if bomb == "labels" else min(n_labels, 3)))
    tracemalloc.start()
    try:
        load_files("mnist", paths)
    except DatasetError as exc:
        message = str(exc)
    else:
        message = ""
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if n_images == n_labels:
        return  # (e.g. 3 and 3, one of them followed by a bomb's tail: refused while reading)
    disagree = f"{paths['train_images']}: {n_images} images but train-labels-idx1-ubyte.gz has {n_labels} labels"
    own_claim = [p for p in ("train_images", "train_labels") if message.startswith(f"{paths[p]}: the header claims")]
    assert message == disagree or own_claim, message  # a claim over the limits: refused from its own header
    assert peak < SLACK
