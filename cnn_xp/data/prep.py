"""Preparation of loaded arrays: float scaling and per-channel normalisation, the
train/validation split, one-hot labels."""
from __future__ import annotations

import numpy as np

from .. import backend


def to_float(images, dtype="float32") -> np.ndarray:
    """uint8 images (N, H, W) or (N, C, H, W) -> floats in [0, 1], shape (N, C, H, W).

    ``dtype`` is float32 (default) or float64. A new host array is returned.
    """
    dtype = np.dtype(dtype)
    if dtype.name not in backend.FLOAT_DTYPES:
        raise ValueError(f"dtype must be float32 or float64, not {dtype.name}")
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (0..255), got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None, :, :]
    if images.ndim != 4:
        raise ValueError(f"expected images (N, H, W) or (N, C, H, W), got shape {images.shape}")
    out = images.astype(dtype)
    out *= 1.0 / 255.0  # Python float: no upcast
    return out


def channel_stats(images, chunk: int = 4096) -> dict:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W) scaled to [0, 1],
    computed in chunks (float64 sums) so memory stays bounded: ``{"mean": [...], "std": [...]}``."""
    images = np.asarray(images)
    n, c = images.shape[0], images.shape[1]
    total = np.zeros(c)
    squares = np.zeros(c)
    for start in range(0, n, chunk):
        part = images[start:start + chunk].astype(np.float64) / 255.0
        total += part.sum(axis=(0, 2, 3))
        squares += (part * part).sum(axis=(0, 2, 3))
    count = float(n * images.shape[2] * images.shape[3])
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return {"mean": [float(v) for v in mean], "std": [float(max(v, 1e-3)) for v in std]}


def normalize(x, normalization) -> np.ndarray:
    """``(x - mean) / std`` per channel of float images (N, C, H, W), in place; ``x`` as it
    is for ``normalization=None``."""
    if normalization is None:
        return x
    shape = (1, -1, 1, 1)
    x -= np.asarray(normalization["mean"], dtype=x.dtype).reshape(shape)
    x *= (1.0 / np.asarray(normalization["std"], dtype=np.float64)).astype(x.dtype).reshape(shape)
    return x


def to_input(images, normalization=None, dtype="float32") -> np.ndarray:
    """uint8 images -> the model's input: :func:`to_float`, then :func:`normalize`."""
    return normalize(to_float(images, dtype), normalization)


def train_val_split(images, labels, val_size: int = 10000, seed: int = 1):
    """Shuffle with ``numpy.random.default_rng(seed)`` and split off the last ``val_size``.

    Returns ``(train_images, train_labels, val_images, val_labels)``; with the defaults
    MNIST's 60,000 become 50,000 + 10,000 as in seed 000. ``val_size=0`` keeps all for
    training (shuffled) with empty validation arrays.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    n = images.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"{n} images but {labels.shape[0]} labels")
    val_size = int(val_size)
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in 0..{n - 1} for {n} samples, got {val_size}")
    order = np.random.default_rng(seed).permutation(n)
    train_idx, val_idx = order[: n - val_size], order[n - val_size:]
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def one_hot(labels, num_classes: int = 10, dtype="float32"):
    """Class indices (N,) -> one-hot (N, num_classes), on the labels' device."""
    xp = backend.xp_of(labels)
    labels = xp.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"expected labels of shape (N,), got {labels.shape}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    out = xp.zeros((labels.shape[0], num_classes), dtype=dtype)
    out[xp.arange(labels.shape[0]), labels] = 1
    return out
