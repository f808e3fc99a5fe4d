"""``folder:PATH`` data sets: one subfolder per class of image files, as torchvision's ImageFolder.

    PATH/cat/001.png  PATH/cat/002.jpg  PATH/dog/a.bmp ...              (split here), or
    PATH/train/cat/...  PATH/train/dog/...  PATH/test/cat/...  PATH/test/dog/...

Class names are the subfolder names, sorted. With ``train/`` and ``test/`` both present they
are the splits (test may lack a class, not add one); otherwise each class is split with a
seeded stratified draw, ``test_fraction`` of it (at least one image of a class with two or
more) going to the test split.

Files: PNG, JPEG, BMP, GIF, TIFF and WebP (by extension, any case); hidden files and other
extensions are passed over. Each is read as untrusted input (``images.decode``: regular
files only, a pixel budget before decoding); a link that leads out of PATH is refused. A
file that cannot be read is one error naming it, or, with ``skip_bad``, skipped and counted.

Channels: 1 when every image is grey (R = G = B everywhere), else 3, or as ``channels`` says.
Sizes: every image must have one size, unless ``image_size`` (H, W) is given: then each is
resized to it (antialiased, Lanczos). An image of another size without it is one error
naming the file.

Decoded arrays are cached (``sources.cache_dir("folders")``), keyed by the file list with
each file's size and modification time and the options, so a second run starts at once.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..input_files import display_path
from .descriptions import DataDescription
from .errors import DatasetError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_BYTES = 4 << 30  # decoded pixels of a whole folder data set
MAX_FILES = 1_000_000
CACHE_VERSION = 1


def _image_files(folder: Path, root: Path) -> list[Path]:
    files = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.suffix.lower() not in EXTENSIONS:
            continue
        real = entry.resolve()
        if entry.is_symlink() and not real.is_relative_to(root):
            raise DatasetError(f"{display_path(entry)}: a link out of the data folder {display_path(root)}; refused")
        files.append(entry)
        if len(files) > MAX_FILES:
            raise DatasetError(f"{display_path(folder)}: more than {MAX_FILES:,} images")
    return files


def _class_folders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def list_folder(path, test_fraction: float = 0.2, split_seed: int = 0):
    """(class names, [(file, label)] train, [(file, label)] test) of a folder data set."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"folder:{display_path(root)}: no such folder")
    root = root.resolve()
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() and test_dir.is_dir():
        classes = [p.name for p in _class_folders(train_dir)]
        extra = sorted({p.name for p in _class_folders(test_dir)} - set(classes))
        if extra:
            raise DatasetError(f"{display_path(test_dir)}: class folders {', '.join(extra)} are not in "
                               f"{display_path(train_dir)}")
        index = {name: k for k, name in enumerate(classes)}
        train = [(f, index[c.name]) for c in _class_folders(train_dir) for f in _image_files(c, root)]
        test = [(f, index[c.name]) for c in _class_folders(test_dir) for f in _image_files(c, root)]
    else:
        classes = [p.name for p in _class_folders(root)]
        rng = np.random.default_rng(split_seed)
        train, test = [], []
        for label, folder in enumerate(_class_folders(root)):
            files = _image_files(folder, root)
            order = rng.permutation(len(files))
            n_test = int(round(len(files) * test_fraction))
            if len(files) >= 2:
                n_test = min(max(n_test, 1), len(files) - 1)
            picked = set(order[:n_test].tolist())
            for i, f in enumerate(files):
                (test if i in picked else train).append((f, label))
    if len(classes) < 2:
        raise DatasetError(f"folder:{display_path(root)}: needs at least two class subfolders, found "
                           f"{len(classes)}")
    bad = [name for name in classes if not (0 < len(name) <= 64 and name.isprintable())]
    if bad:
        raise DatasetError(f"folder:{display_path(root)}: class folder name {bad[0]!r} is not a printable name "
                           f"of 1..64 characters")
    empty = sorted(set(classes) - {classes[label] for _, label in train})
    if empty:
        raise DatasetError(f"folder:{display_path(root)}: no training images in class {', '.join(empty)}")
    if not test:
        raise DatasetError(f"folder:{display_path(root)}: no test images (add PATH/test/<class>/ or more images)")
    return classes, train, test


def _cache_key(entries, channels, image_size, skip_bad) -> str:
    listing = []
    for path, label in entries:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DatasetError(f"{display_path(path)}: cannot read ({exc.strerror or exc})") from None
        listing.append([str(path), label, st.st_size, st.st_mtime_ns])
    text = json.dumps([CACHE_VERSION, channels, image_size, bool(skip_bad), listing])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _decode_all(entries, image_size, skip_bad):
    """(list of (H, W, 3) uint8 arrays, labels, skipped count)."""
    from .images import ImageError, decode

    arrays, labels, skipped, budget = [], [], 0, 0
    size = None
    for path, label in entries:
        try:
            img = decode(path)
            rgb = img.convert("RGB")
            if image_size is not None:
                from PIL import Image

                rgb = rgb.resize((image_size[1], image_size[0]), Image.LANCZOS)
            array = np.asarray(rgb, dtype=np.uint8)
        except ImageError as exc:
            if skip_bad:
                skipped += 1
                continue
            raise DatasetError(f"{exc} (--skip-bad skips unreadable files)") from None
        if size is None:
            size, first = array.shape[:2], path
        elif array.shape[:2] != size:
            raise DatasetError(f"{display_path(path)} is {array.shape[1]}x{array.shape[0]} pixels, "
                               f"{display_path(first)} {size[1]}x{size[0]}: pass --image-size HxW to resize "
                               f"every image")
        budget += array.size
        if budget > MAX_BYTES:
            raise DatasetError(f"the images decode to more than {MAX_BYTES >> 30} GiB; pass --image-size HxW "
                               f"to shrink them")
        arrays.append(array)
        labels.append(label)
    return arrays, labels, skipped


def _stack(arrays, channels):
    images = np.stack(arrays).transpose(0, 3, 1, 2)  # (N, 3, H, W)
    return np.ascontiguousarray(images[:, :1] if channels == 1 else images)


def load_folder(path, *, channels=None, image_size=None, test_fraction: float = 0.2, split_seed: int = 0,
                skip_bad: bool = False, cache: bool = True):
    """The folder data set at ``path`` as a ``loader.Dataset`` (see the module docstring);
    its ``skipped`` counts the unreadable files passed over."""
    from .loader import Dataset
    from .sources import cache_dir

    classes, train, test = list_folder(path, test_fraction, split_seed)
    root = Path(path).expanduser().resolve()
    size = None if image_size is None else tuple(int(d) for d in image_size)
    key = _cache_key(train + test, channels, size, skip_bad)
    cached = cache_dir("folders") / f"{key}.npz"
    arrays = _read_cache(cached) if cache else None
    if arrays is None:
        train_arrays, train_labels, skipped_train = _decode_all(train, size, skip_bad)
        test_arrays, test_labels, skipped_test = _decode_all(test, size, skip_bad)
        if not train_arrays or not test_arrays:
            raise DatasetError(f"folder:{display_path(root)}: no readable {'training' if not train_arrays else 'test'}"
                               f" images")
        if (train_arrays[0].shape != test_arrays[0].shape):
            raise DatasetError(f"folder:{display_path(root)}: the test images are "
                               f"{test_arrays[0].shape[1]}x{test_arrays[0].shape[0]}, the training images "
                               f"{train_arrays[0].shape[1]}x{train_arrays[0].shape[0]}: pass --image-size HxW")
        grey = all(bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())
                   for a in train_arrays + test_arrays)
        found = channels or (1 if grey else 3)
        arrays = {"train_images": _stack(train_arrays, found), "train_labels": np.asarray(train_labels, np.int64),
                  "test_images": _stack(test_arrays, found), "test_labels": np.asarray(test_labels, np.int64),
                  "skipped": np.asarray(skipped_train + skipped_test)}
        if cache:
            _write_cache(cached, arrays)
    from .prep import channel_stats

    shape = tuple(int(d) for d in arrays["train_images"].shape[1:])
    description = DataDescription(f"folder:{root}", shape, tuple(classes), channel_stats(arrays["train_images"]),
                                  "resize")
    files = {"train_images": root / "train" if (root / "train").is_dir() else root}
    ds = Dataset(description.name, arrays["train_images"], arrays["train_labels"], arrays["test_images"],
                 arrays["test_labels"], tuple(classes), files, description)
    ds.skipped = int(arrays["skipped"])
    return ds


def _read_cache(path: Path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in ("train_images", "train_labels", "test_images", "test_labels",
                                            "skipped")}
    except (OSError, ValueError, KeyError, EOFError):
        return None  # absent or damaged: decode again


def _write_cache(path: Path, arrays) -> None:
    from ..atomic import atomic_open

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as fh:
            np.savez(fh, **arrays)
    except OSError:
        pass  # a cache that cannot be written only costs the next run its decoding


__all__ = ["load_folder", "list_folder", "EXTENSIONS"]
