"""IDX loading: round trips in every naming style and a clear DatasetError for each bad file."""
import gzip

import numpy as np
import pytest
from data_helpers import file_name, idx_bytes, isolated, tiny_arrays, write_dataset  # noqa: F401

from cnn_xp.data import DatasetError, load_dataset


@pytest.mark.parametrize("style", ["dash", "dot"])
@pytest.mark.parametrize("gz", [False, True])
def test_round_trip(isolated, style, gz):
    arrays = tiny_arrays(n_train=7, n_test=3, seed=5)
    write_dataset(isolated / "d", arrays, style=style, gz=gz)
    ds = load_dataset("mnist", data_dir=isolated / "d", download=False)
    assert ds.train_images.shape == (7, 1, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (3, 1, 28, 28)
    assert ds.train_labels.dtype == np.int64 and ds.train_labels.shape == (7,)
    np.testing.assert_array_equal(ds.train_images[:, 0], arrays["train_images"])
    np.testing.assert_array_equal(ds.train_labels, arrays["train_labels"])
    np.testing.assert_array_equal(ds.test_images[:, 0], arrays["test_images"])
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])
    assert ds.train_images.flags.writeable and ds.train_labels.flags.writeable
    assert ds.files["train_images"].name == file_name("train_images", style, gz)
    assert ds.class_names[3] == "3"


def test_gzip_detected_by_content_not_name(isolated):
    paths = write_dataset(isolated / "d", gz=True)
    paths["train_images"].rename(paths["train_images"].with_suffix(""))  # gz data, raw name
    ds = load_dataset("mnist", data_dir=isolated / "d", download=False)
    assert ds.train_images.shape == (12, 1, 28, 28)


def _break(isolated, part, data: bytes, gz=False):
    paths = write_dataset(isolated / "d", gz=gz)
    paths[part].write_bytes(data)
    return paths[part]


def _error(isolated) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", data_dir=isolated / "d", download=False)
    return str(info.value)


def test_bad_magic(isolated):
    arrays = tiny_arrays()
    path = _break(isolated, "train_images", idx_bytes(arrays["train_labels"]))  # labels in images slot
    msg = _error(isolated)
    assert str(path) in msg and "bad magic number 0x00000801" in msg and "0x00000803" in msg


def test_garbage_magic_in_gzip(isolated):
    path = _break(isolated, "test_labels", gzip.compress(b"<html>not found</html>"), gz=True)
    msg = _error(isolated)
    assert str(path) in msg and "bad magic number" in msg


def test_wrong_dimensions(isolated):
    path = _break(isolated, "train_images", idx_bytes(np.zeros((12, 27, 28), np.uint8)))
    msg = _error(isolated)
    assert str(path) in msg and "wrong dimensions (12, 27, 28)" in msg


def test_counts_disagree(isolated):
    path = _break(isolated, "test_labels", idx_bytes(np.zeros(4, np.uint8)))
    msg = _error(isolated)
    assert "t10k-images-idx3-ubyte" in msg and "5 images" in msg and "4 labels" in msg
    assert path.name in msg


def test_label_out_of_range(isolated):
    labels = np.arange(12, dtype=np.uint8) % 10
    labels[7] = 10
    path = _break(isolated, "train_labels", idx_bytes(labels))
    msg = _error(isolated)
    assert str(path) in msg and "label 10 at index 7 is outside 0..9" in msg


def test_truncated_raw_file(isolated):
    data = idx_bytes(tiny_arrays()["train_images"])
    path = _break(isolated, "train_images", data[:-100])
    msg = _error(isolated)
    assert str(path) in msg and "the header claims 12 images of 28x28 (9,424 bytes)" in msg
    assert "the file holds 9,324 bytes (truncated)" in msg


def test_superfluous_bytes(isolated):
    data = idx_bytes(tiny_arrays()["test_labels"])
    path = _break(isolated, "test_labels", data + b"\0")
    msg = _error(isolated)
    assert str(path) in msg and "the header claims 5 labels (13 bytes)" in msg and "(trailing data)" in msg


def test_empty_file(isolated):
    path = _break(isolated, "train_labels", b"")
    msg = _error(isolated)
    assert str(path) in msg and "truncated IDX file" in msg


def test_truncated_gzip(isolated):
    data = idx_bytes(tiny_arrays()["train_images"], gz=True)
    path = _break(isolated, "train_images", data[: len(data) // 2], gz=True)
    msg = _error(isolated)
    assert str(path) in msg and "truncated gzip" in msg


def test_corrupt_gzip(isolated):
    data = bytearray(idx_bytes(tiny_arrays()["train_images"], gz=True))
    data[-8:-4] = bytes(b ^ 0xFF for b in data[-8:-4])  # break the CRC32
    path = _break(isolated, "train_images", bytes(data), gz=True)
    msg = _error(isolated)
    assert str(path) in msg and "corrupt gzip" in msg and "CRC" in msg


def test_corrupt_deflate_stream(isolated):
    data = bytearray(idx_bytes(tiny_arrays()["train_images"], gz=True))
    data[10:40] = b"\xff" * 30
    path = _break(isolated, "train_images", bytes(data), gz=True)
    msg = _error(isolated)
    assert str(path) in msg and "corrupt gzip" in msg


def test_missing_files_offline(isolated):
    folder = isolated / "d"
    paths = write_dataset(folder)
    paths["test_labels"].unlink()
    msg = _error(isolated)
    assert f"mnist not found where --data-dir {folder} says" in msg
    assert "3 of 4 files; missing t10k-labels-idx1-ubyte[.gz]" in msg
    assert str(isolated / "cache") not in msg  # a named folder is the only one searched
    assert "cnn-xp download mnist" in msg
    assert "\n" not in msg


def test_missing_files_default_search(isolated):
    msg = " ".join(str(load_error(isolated)).split())
    assert "mnist not found" in msg and str(isolated / "cache" / "cnn_xp" / "mnist") in msg
    assert "cnn-xp download mnist" in msg and "--data-dir" in msg


def load_error(isolated):
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", download=False)
    return info.value


def test_unknown_name(isolated):
    with pytest.raises(DatasetError, match="unknown data set 'cifar'.*fashion-mnist, mnist"):
        load_dataset("cifar", download=False)
