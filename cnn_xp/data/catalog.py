"""``load_data(name)``: any data set the library knows, by name.

- ``mnist``, ``fashion-mnist``: the four IDX files (``loader``);
- ``cifar10``: the official binary version (``cifar``);
- ``folder:PATH``: a folder of class subfolders of images (``folder``), with its options
  ``channels``, ``image_size`` (H, W), ``test_fraction``, ``split_seed`` and ``skip_bad``.

Each returns a ``loader.Dataset`` whose ``description`` says what a model needs to know.
"""
from __future__ import annotations

from .errors import DatasetError

FOLDER_PREFIX = "folder:"


def is_known(name) -> bool:
    """Whether ``name`` names a data set (``folder:PATH`` with a non-empty PATH included)."""
    from .sources import DATASETS

    return isinstance(name, str) and (name in DATASETS or (name.startswith(FOLDER_PREFIX)
                                                           and len(name) > len(FOLDER_PREFIX)))


def load_data(name: str, data_dir=None, *, download: bool = True, progress: bool = True, channels=None,
              image_size=None, test_fraction: float = 0.2, split_seed: int = 0, skip_bad: bool = False):
    """The data set ``name`` (see the module docstring)."""
    from . import sources

    if isinstance(name, str) and name.startswith(FOLDER_PREFIX):
        from .folder import load_folder

        return load_folder(name[len(FOLDER_PREFIX):], channels=channels, image_size=image_size,
                           test_fraction=test_fraction, split_seed=split_seed, skip_bad=skip_bad)
    spec = sources.get_spec(name)
    if spec.kind == "cifar10-binary":
        from .cifar import load_cifar10

        return load_cifar10(data_dir, download=download, progress=progress)
    from .loader import load_dataset

    return load_dataset(name, data_dir, download=download, progress=progress)


__all__ = ["load_data", "is_known", "FOLDER_PREFIX", "DatasetError"]
