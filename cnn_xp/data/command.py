"""The ``cnn-xp download NAME [--data-dir DIR]`` command: make a data set present, prove it loads."""
from __future__ import annotations

import sys

from ..input_files import display_path
from . import sources
from .download import download
from .errors import DatasetError
from .loader import load_files


def download_command(name: str, data_dir=None, *, mirrors=None, progress: bool = True,
                     out=None, err=None) -> int:
    """Returns the exit status (0 ok, 2 error); errors print one line to ``err``.

    Without ``data_dir`` a data set already found in the search folders is only checked;
    with it, the files are made present in ``data_dir``.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        spec = sources.get_spec(name)
        sources.mirrors_for(name, mirrors)  # a bad $CNN_XP_MIRRORS_<NAME> is refused up front
        if spec.kind != "idx":
            return _download_archive(name, data_dir, mirrors, progress, out)
        files = sources.find_files(name) if data_dir is None else None
        verb = "already present"
        if files is None:
            files = download(name, data_dir, mirrors, progress=progress)
            verb = "ready"
        ds = load_files(name, files)
    except DatasetError as exc:
        print(f"cnn-xp: error: {' '.join(str(exc).split())}", file=err)
        return 2
    print(f"{name}: {verb} in {display_path(ds.folder)} ({len(ds.train_labels)} training + "
          f"{len(ds.test_labels)} test images)", file=out)
    return 0


def _download_archive(name: str, data_dir, mirrors, progress: bool, out) -> int:
    """CIFAR-10: make the archive (or its extracted folder) present and prove it loads."""
    from .cifar import fetch, find, load_cifar10

    found = None
    for folder in sources.search_dirs(name, data_dir):
        found = find(folder)
        if found is not None:
            break
    verb = "already present"
    if found is None:
        fetch(data_dir, mirrors=mirrors, progress=progress)
        verb = "ready"
    ds = load_cifar10(data_dir, download=False, mirrors=mirrors)
    print(f"{name}: {verb} in {display_path(ds.folder)} ({len(ds.train_labels)} training + "
          f"{len(ds.test_labels)} test images)", file=out)
    return 0
