"""Float scaling, the train/validation split and one-hot labels."""
import numpy as np
import pytest

from cnn_xp.data import one_hot, to_float, train_val_split


def test_to_float_scales_and_adds_channel():
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 256
    images = images.astype(np.uint8)
    x = to_float(images)
    assert x.shape == (2, 1, 28, 28) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_allclose(x[:, 0], images / 255.0, rtol=1e-6)
    x64 = to_float(images[:, None], dtype="float64")
    assert x64.dtype == np.float64 and x64.shape == (2, 1, 28, 28)
    np.testing.assert_allclose(x64[:, 0], images / 255.0, rtol=1e-15)
    assert images.dtype == np.uint8 and images.max() == 255  # input untouched


@pytest.mark.parametrize("bad", [np.zeros((2, 28, 28), np.float32), np.zeros((2, 784), np.uint8)])
def test_to_float_rejects(bad):
    with pytest.raises(ValueError):
        to_float(bad)


def test_to_float_rejects_integer_dtype():
    with pytest.raises(ValueError, match="float32 or float64"):
        to_float(np.zeros((1, 28, 28), np.uint8), dtype="int32")


def test_split_matches_seed_000_recipe():
    n = 60
    images = np.arange(n, dtype=np.uint8).repeat(4).reshape(n, 1, 2, 2)
    labels = np.arange(n) % 10
    x_tr, t_tr, x_val, t_val = train_val_split(images, labels, val_size=10, seed=1)
    order = np.random.default_rng(1).permutation(n)
    assert x_tr.shape == (50, 1, 2, 2) and x_val.shape == (10, 1, 2, 2)
    np.testing.assert_array_equal(x_tr[:, 0, 0, 0], order[:50])
    np.testing.assert_array_equal(x_val[:, 0, 0, 0], order[50:])
    np.testing.assert_array_equal(t_tr, order[:50] % 10)
    np.testing.assert_array_equal(t_val, order[50:] % 10)
    assert sorted(np.concatenate([x_tr, x_val])[:, 0, 0, 0].tolist()) == list(range(n))
    again = train_val_split(images, labels, val_size=10, seed=1)
    np.testing.assert_array_equal(again[0], x_tr)
    other = train_val_split(images, labels, val_size=10, seed=2)
    assert not np.array_equal(other[0], x_tr)


def test_split_val_size_zero():
    x_tr, t_tr, x_val, t_val = train_val_split(np.arange(8), np.arange(8), val_size=0)
    assert len(x_tr) == 8 and len(x_val) == 0 and len(t_val) == 0
    assert sorted(x_tr.tolist()) == list(range(8))


@pytest.mark.parametrize("val_size", [-1, 8, 9])
def test_split_bad_sizes(val_size):
    with pytest.raises(ValueError, match="val_size"):
        train_val_split(np.arange(8), np.arange(8), val_size=val_size)


def test_split_length_mismatch():
    with pytest.raises(ValueError, match="8 images but 7 labels"):
        train_val_split(np.arange(8), np.arange(7), val_size=2)


def test_one_hot():
    y = one_hot(np.array([3, 0, 9], dtype=np.uint8))
    assert y.shape == (3, 10) and y.dtype == np.float32
    expected = np.zeros((3, 10), np.float32)
    expected[[0, 1, 2], [3, 0, 9]] = 1
    np.testing.assert_array_equal(y, expected)
    assert one_hot(np.array([1]), num_classes=3, dtype="float64").tolist() == [[0.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="0..9"):
        one_hot(np.array([10]))
    with pytest.raises(ValueError, match="0..2"):
        one_hot(np.array([-1]), num_classes=3)
