"""What each data set is made of, where its files are looked for, and where they come from.

Where a data set ``name`` is looked for (first folder that holds all four files wins):

1. with an explicit ``data_dir`` (the CLI's ``--data-dir``): ``<data_dir>`` then
   ``<data_dir>/<name>``, and nowhere else: a folder the user names is used or the run
   fails, it is never replaced by another copy found elsewhere;
2. else, with ``$CNN_XP_DATA`` set: ``$CNN_XP_DATA`` then ``$CNN_XP_DATA/<name>``, and
   nowhere else, for the same reason;
3. else the per-user cache (``platformdirs``: ``$XDG_CACHE_HOME/cnn_xp/<name>``, by default
   ``~/.cache/cnn_xp/<name>`` on Linux), then system folders (``/usr/share/datasets/<name>``:
   Debian's ``dataset-fashion-mnist``).

Downloads go to ``data_dir`` when given, else ``$CNN_XP_DATA/<name>``, else the cache.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..input_files import display_path
from .descriptions import CIFAR10_CLASSES, FASHION_MNIST, MNIST
from .errors import DatasetError

DATA_ENV = "CNN_XP_DATA"

# The four parts of a data set, in load order, and their canonical (dash-style) base names.
PARTS = ("train_images", "train_labels", "test_images", "test_labels")
BASE_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetSpec:
    """A data set's file checksums (of the published ``.gz`` files), mirrors and class names."""

    name: str
    mirrors: tuple[str, ...]
    checksums: dict[str, dict[str, str]]  # "<base>.gz" -> {"md5": ..., "sha256": ...}
    class_names: tuple[str, ...]
    system_dirs: tuple[str, ...] = field(default=())
    kind: str = "idx"  # "idx": the four IDX files (``loader``); "cifar10-binary": one archive (``cifar``)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        checksums={
            "train-images-idx3-ubyte.gz": {
                "md5": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "sha256": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            },
            "train-labels-idx1-ubyte.gz": {
                "md5": "d53e105ee54ea40749a09fcbcd1e9432",
                "sha256": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            },
            "t10k-images-idx3-ubyte.gz": {
                "md5": "9fb629c4189551a2d022fa330f9573f3",
                "sha256": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            },
            "t10k-labels-idx1-ubyte.gz": {
                "md5": "ec29112dd5afa0611ce80d1b7f02629c",
                "sha256": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            },
        },
        class_names=MNIST.class_names,
        system_dirs=("/usr/share/datasets/mnist",),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        # Zalando's published md5s of its .gz files. Debian's package recompressed them
        # (same IDX payload, other .gz bytes), so local files are checked by parsing instead.
        checksums={
            "train-images-idx3-ubyte.gz": {"md5": "8d4fb7e6c68d591d4c3dfef9ec88bf0d"},
            "train-labels-idx1-ubyte.gz": {"md5": "25c81989df183df01b3e8a0aad5dffbe"},
            "t10k-images-idx3-ubyte.gz": {"md5": "bef4ecab320f06d8554ea6380940ec79"},
            "t10k-labels-idx1-ubyte.gz": {"md5": "bb300cfdad3c16e7a12a480ee83cd310"},
        },
        class_names=FASHION_MNIST.class_names,
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


DATASETS["cifar10"] = DatasetSpec(
    name="cifar10",
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    checksums={"cifar-10-binary.tar.gz": {
        "md5": "c32a1d4ab5d03f1284b67883e8d87530",
        "sha256": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    }},
    class_names=CIFAR10_CLASSES,
    kind="cifar10-binary",
)
IDX_DATASETS = tuple(name for name, spec in DATASETS.items() if spec.kind == "idx")


def get_spec(name: str) -> DatasetSpec:
    """The spec of a data set by name, or DatasetError listing the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(
            f"unknown data set {name!r}; choose one of {', '.join(sorted(DATASETS))}"
        ) from None


def candidate_names(part: str) -> list[str]:
    """File names accepted for a part, in preference order.

    Both naming styles are accepted: ``train-images-idx3-ubyte`` (the published one) and
    ``train-images.idx3-ubyte`` (a dot before ``idx``), each raw or ``.gz``.
    """
    dash = BASE_NAMES[part]
    stem, _, kind = dash.rpartition("-idx")
    dot = f"{stem}.idx{kind}"
    return [dash, dash + ".gz", dot, dot + ".gz"]


def mirror_env_var(name: str) -> str:
    """Env var overriding a data set's mirrors, e.g. ``CNN_XP_MIRRORS_FASHION_MNIST``."""
    return "CNN_XP_MIRRORS_" + name.upper().replace("-", "_")


def _is_web_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in 0..65535)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and url.isprintable()
    except ValueError:  # e.g. a bad port or an unclosed IPv6 bracket
        return False


def mirrors_for(name: str, mirrors=None) -> list[str]:
    """Mirror base URLs: the ``mirrors`` argument, else the env var, else the built-in list.

    The env var (the one place it is read) holds URLs separated by spaces or commas; only
    ``http://`` and ``https://`` URLs are accepted, anything else (``file://``, ``ftp://``, a
    bare word) is a DatasetError naming the variable and its value. Each base gets a
    trailing ``/``.
    """
    if mirrors is None:
        var = mirror_env_var(name)
        value = os.environ.get(var, "")
        mirrors = value.replace(",", " ").split()
        bad = [m for m in mirrors if not _is_web_url(m)]
        if bad:
            raise DatasetError(f"{var} must hold http:// or https:// URLs (separated by spaces or commas), "
                               f"got {value!r}: {display_path(bad[0])} is not one")
        mirrors = mirrors or list(get_spec(name).mirrors)
    else:
        bad = [m for m in mirrors if not (isinstance(m, str) and _is_web_url(m))]
        if bad:
            raise DatasetError(f"mirror {bad[0]!r} is not an http:// or https:// URL")
    return [m if m.endswith("/") else m + "/" for m in mirrors]


def cache_dir(name: str) -> Path:
    """Per-user cache folder of a data set, from ``platformdirs`` (Linux:
    ``$XDG_CACHE_HOME/cnn_xp/<name>``, by default ``~/.cache/cnn_xp/<name>``)."""
    try:
        import platformdirs
    except ImportError:  # a bare host running from a working tree (the GPU check): the XDG rule
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "cnn_xp" / name
    return platformdirs.user_cache_path("cnn_xp", appauthor=False) / name


def data_env() -> Path | None:
    """``$CNN_XP_DATA`` (the one place it is read) as a folder (``~`` expanded), or None
    when unset or empty. Any other value names a folder: one that does not hold the data
    makes the search fail with that folder named, never another used instead."""
    value = os.environ.get(DATA_ENV, "")
    return Path(value).expanduser() if value else None


def chosen_folder(data_dir=None) -> str | None:
    """How the user named the data folder (``--data-dir DIR`` or ``$CNN_XP_DATA=DIR``), or None
    when the default search (cache, system folders) applies."""
    if data_dir is not None:
        return f"--data-dir {display_path(data_dir)}"
    env = data_env()
    return f"${DATA_ENV}={display_path(env)}" if env is not None else None


def search_dirs(name: str, data_dir=None) -> list[Path]:
    """Folders searched for data set ``name``, in order (see the module docstring)."""
    spec = get_spec(name)
    env = data_env()
    if data_dir is not None:
        dirs = [Path(data_dir), Path(data_dir) / name]
    elif env is not None:
        dirs = [env, env / name]
    else:
        dirs = [cache_dir(name)] + [Path(d) for d in spec.system_dirs]
    unique: list[Path] = []
    for d in dirs:
        d = d.expanduser()
        if d not in unique:
            unique.append(d)
    return unique


def download_dir(name: str, data_dir=None) -> Path:
    """Where downloads of ``name`` go: ``data_dir``, else ``$CNN_XP_DATA/<name>``, else the cache."""
    get_spec(name)
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = data_env()
    if env is not None:
        return env / name
    return cache_dir(name)


def find_in_dir(folder: Path) -> dict[str, Path]:
    """The parts present in ``folder`` (part -> path), by the first accepted name found.

    Any entry of an accepted name counts, a FIFO or a broken link too: reading it then
    fails with its own reason, instead of the folder being passed over in silence.
    """
    found: dict[str, Path] = {}
    for part in PARTS:
        for fname in candidate_names(part):
            path = folder / fname
            if os.path.lexists(path):
                found[part] = path
                break
    return found


def find_files(name: str, data_dir=None) -> dict[str, Path] | None:
    """Paths of the four files from the first searched folder holding all of them, or None."""
    for folder in search_dirs(name, data_dir):
        found = find_in_dir(folder)
        if len(found) == len(PARTS):
            return found
    return None


def describe_search(name: str, data_dir=None) -> str:
    """Human-readable search list, one folder per line, for the CLI and the README."""
    lines = [f"{name} is looked for in (first complete folder wins):"]
    for i, folder in enumerate(search_dirs(name, data_dir), 1):
        have = len(find_in_dir(folder))
        state = "complete" if have == len(PARTS) else (f"{have}/4 files" if have else "absent")
        lines.append(f"  {i}. {display_path(folder)}  [{state}]")
    return "\n".join(lines)
