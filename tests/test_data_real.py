"""The real Fashion-MNIST of Debian's dataset-fashion-mnist package, when installed."""
from pathlib import Path

import numpy as np
import pytest

from cnn_xp.data import find_files, load_dataset, to_float, train_val_split

SYSTEM = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.skipif(
    not (SYSTEM / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion-mnist", data_dir=SYSTEM, download=False)


def test_shapes_dtypes_counts(fashion):
    assert fashion.folder == SYSTEM
    assert fashion.train_images.shape == (60000, 1, 28, 28) and fashion.train_images.dtype == np.uint8
    assert fashion.test_images.shape == (10000, 1, 28, 28) and fashion.test_images.dtype == np.uint8
    assert fashion.train_labels.shape == (60000,) and fashion.train_labels.dtype == np.int64
    assert fashion.test_labels.shape == (10000,)
    assert np.bincount(fashion.train_labels, minlength=10).tolist() == [6000] * 10
    assert np.bincount(fashion.test_labels, minlength=10).tolist() == [1000] * 10
    assert fashion.train_images.min() == 0 and fashion.train_images.max() == 255
    assert fashion.class_names[0] == "T-shirt/top"


def test_found_by_default_search(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("CNN_XP_DATA", raising=False)
    files = find_files("fashion-mnist")
    assert files is not None and files["test_labels"].parent == SYSTEM


def test_prepared_split(fashion):
    x = to_float(fashion.train_images)
    x_tr, t_tr, x_val, t_val = train_val_split(x, fashion.train_labels)
    assert x_tr.shape == (50000, 1, 28, 28) and x_val.shape == (10000, 1, 28, 28)
    assert x_tr.dtype == np.float32 and float(x_tr.max()) == 1.0
    assert len(t_tr) == 50000 and len(t_val) == 10000
