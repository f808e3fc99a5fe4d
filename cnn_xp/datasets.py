"""``cnn_xp.datasets.load(name)``: a data set as the zoo's models take it.

    (x_train, t_train), (x_test, t_test) = cnn_xp.datasets.load("mnist")

``x``: (N, 1, 28, 28) float32 in [0, 1]; ``t``: (N,) int64 class indices. The files are
found on disk or downloaded and verified (``cnn_xp.data.load_dataset`` says where it looks).
"""
from __future__ import annotations

from .data import load_dataset, to_float
from .data.sources import DATASETS


def load(name: str, data_dir=None, download: bool = True, dtype: str = "float32", progress: bool = False):
    """``((x_train, t_train), (x_test, t_test))`` of the data set ``name`` (see the module docstring)."""
    ds = load_dataset(name, data_dir, download=download, progress=progress)
    return ((to_float(ds.train_images, dtype), ds.train_labels),
            (to_float(ds.test_images, dtype), ds.test_labels))


def class_names(name: str) -> list[str]:
    """The class names of the data set ``name``, in label order."""
    from .data.sources import get_spec

    return list(get_spec(name).class_names)


__all__ = ["load", "class_names", "DATASETS"]
