"""``load_dataset``: find (or download) a data set's four IDX files and load them."""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import sources
from .download import download as fetch_dataset
from .descriptions import FASHION_MNIST, MNIST, DataDescription
from .errors import DatasetError
from ..input_files import display_path
from .idx import IdxFile, checked_labels, open_images, open_labels


@dataclass
class Dataset:
    """A loaded data set, host arrays.

    train_images (N, C, H, W) uint8, train_labels (N,) int64 class indices; same for test.
    ``files`` maps each part to the path it was read from; ``description`` says what a
    model needs to know of the data (``descriptions.DataDescription``).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    files: dict[str, Path] = field(default_factory=dict)
    description: DataDescription | None = None

    @property
    def folder(self) -> Path:
        """Folder the training images were read from."""
        return self.files["train_images"].parent


BUILT_IN = {"mnist": MNIST, "fashion-mnist": FASHION_MNIST}


def _check_pair(images: IdxFile, labels: IdxFile) -> None:
    """Images and labels agree in count (from their headers: nothing read yet)."""
    if images.count == 0:
        raise DatasetError(f"{images.shown}: holds no images (an empty IDX file: nothing to train or test on)")
    if images.count != labels.count:
        raise DatasetError(f"{images.shown}: {images.count} images but {display_path(Path(labels.path).name)} "
                           f"has {labels.count} labels")


def load_files(name: str, files: dict[str, Path]) -> Dataset:
    """Load a data set from explicit paths (keys: ``sources.PARTS``).

    The four headers are read and checked first (each file's claimed size against what it
    holds, each pair's counts against each other); only then is any data read, each file
    within the size its header implies (see ``idx``).
    """
    spec = sources.get_spec(name)
    with ExitStack() as stack:
        opened = {}
        for part in sources.PARTS:
            opener = open_images if part.endswith("images") else open_labels
            opened[part] = stack.enter_context(opener(files[part]))
        for split in ("train", "test"):
            _check_pair(opened[f"{split}_images"], opened[f"{split}_labels"])
        arrays = {}
        for part in sources.PARTS:
            data = opened[part].read()
            arrays[part] = data[:, None, :, :] if part.endswith("images") else checked_labels(files[part], data)
    return Dataset(name, arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                   arrays["test_labels"], spec.class_names, dict(files), BUILT_IN[name])


def _not_found_message(name: str, data_dir) -> str:
    chosen = sources.chosen_folder(data_dir)
    if chosen is not None:
        looked = []
        for folder in sources.search_dirs(name, data_dir):
            have = sources.find_in_dir(folder)
            missing = [sources.BASE_NAMES[p] + "[.gz]" for p in sources.PARTS if p not in have]
            looked.append(f"{display_path(folder)} ({len(have)} of 4 files; missing {', '.join(missing)})" if have
                          else f"{display_path(folder)} (absent or empty)")
        return (f"{name} not found where {chosen} says (download disabled; no other folder is "
                f"used instead): {'; '.join(looked)}. Put the four IDX files there, or run "
                f"`cnn-xp download {name}` with the same folder")
    looked = []
    for folder in sources.search_dirs(name, data_dir):
        have = sources.find_in_dir(folder)
        missing = [sources.BASE_NAMES[p] + "[.gz]" for p in sources.PARTS if p not in have]
        if have:
            looked.append(f"{display_path(folder)} (missing {', '.join(missing)})")
        else:
            looked.append(display_path(folder))
    return (
        f"{name} not found (download disabled); looked in: {'; '.join(looked)}. "
        f"Run `cnn-xp download {name}` or pass --data-dir DIR holding the four IDX files"
    )


def load_dataset(name: str, data_dir=None, download: bool = True, mirrors=None,
                 progress: bool = True) -> Dataset:
    """Load ``mnist`` or ``fashion-mnist``, downloading it when it is nowhere to be found.

    Folders are searched in ``sources.search_dirs`` order; the first one holding all four
    files is used (a broken file there is an error, not a reason to look further). A folder
    the user named (``data_dir``, ``$CNN_XP_DATA``) is the only one searched, and the only
    one a download goes to.
    """
    sources.get_spec(name)
    sources.mirrors_for(name, mirrors)  # a bad $CNN_XP_MIRRORS_<NAME> is refused whether or not it is needed
    files = sources.find_files(name, data_dir)
    if files is None:
        if not download:
            raise DatasetError(_not_found_message(name, data_dir))
        files = fetch_dataset(name, data_dir, mirrors=mirrors, progress=progress)
    return load_files(name, files)
