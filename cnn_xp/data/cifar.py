"""CIFAR-10 from its official *binary* version (``cifar-10-binary.tar.gz``; never the pickled one).

The archive holds ``cifar-10-batches-bin/``: ``data_batch_1.bin`` .. ``data_batch_5.bin`` (the
training split), ``test_batch.bin`` and ``batches.meta.txt`` (the class names, one a line).
Each ``.bin`` is a run of 3,073-byte records: 1 label byte, then the red, green and blue
planes of a 32x32 image, each row-major. A file that is not a whole number of records is an
error; files with fewer records than the official 10,000 (small test sets) are read as they
are.

Where it is looked for, as the IDX data sets (``sources``): ``data_dir`` (or
``data_dir/cifar10``) only, when given; else ``$CNN_XP_DATA`` (or ``.../cifar10``); else the
per-user cache. A folder may hold the archive or its extracted ``cifar-10-batches-bin/``
(or the ``.bin`` files themselves). A download fetches the archive (170,052,171 bytes) into
the download folder through the checksummed path (md5 and sha256 checked).
"""
from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from ..input_files import display_path, open_regular
from .descriptions import CIFAR10_CLASSES, CIFAR10_SHAPE, DataDescription
from .errors import DatasetError

ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
RECORD = 1 + 3 * 32 * 32
MAX_RECORDS = 100_000  # per file: ten times the official count
MAX_META = 64 * 1024


def parse_records(raw: bytes, name: str, num_classes: int):
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of one ``.bin`` file's bytes."""
    if len(raw) == 0 or len(raw) % RECORD:
        raise DatasetError(f"{name}: {len(raw):,} bytes is not a whole number of {RECORD:,}-byte CIFAR-10 records")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if int(labels.max()) >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DatasetError(f"{name}: record {bad} has label {int(labels[bad])}, outside 0..{num_classes - 1}")
    return records[:, 1:].reshape(-1, *CIFAR10_SHAPE).copy(), labels


def parse_meta(raw: bytes, name: str) -> tuple:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise DatasetError(f"{name}: not a text file of class names") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not 2 <= len(names) <= 256 or not all(0 < len(n) <= 64 and n.isprintable() for n in names):
        raise DatasetError(f"{name}: expected one class name a line (2..256 printable names)")
    return names


def _read_limited(fh, limit: int, name: str) -> bytes:
    raw = fh.read(limit + 1)
    if len(raw) > limit:
        raise DatasetError(f"{name}: more than {limit:,} bytes; not a CIFAR-10 file")
    return raw


def _from_folder(folder: Path):
    """{file name: bytes} of the CIFAR-10 files in ``folder`` (or None when they are not all there)."""
    paths = {n: folder / n for n in (*TRAIN_FILES, TEST_FILE)}
    if not all(p.is_file() for p in paths.values()):
        return None
    blobs = {}
    for name, path in paths.items():
        with open_regular(path) as fh:
            blobs[name] = _read_limited(fh, MAX_RECORDS * RECORD, display_path(path))
    meta = folder / META_FILE
    if meta.is_file():
        with open_regular(meta) as fh:
            blobs[META_FILE] = _read_limited(fh, MAX_META, display_path(meta))
    return blobs


def _from_archive(path: Path):
    """{file name: bytes} of the CIFAR-10 members of the archive at ``path``."""
    wanted = {*TRAIN_FILES, TEST_FILE, META_FILE}
    blobs = {}
    try:
        with open_regular(path) as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if base not in wanted or not member.isfile():
                    continue
                limit = MAX_META if base == META_FILE else MAX_RECORDS * RECORD
                if member.size > limit:
                    raise DatasetError(f"{display_path(path)}: member {base} claims {member.size:,} bytes; "
                                       f"not a CIFAR-10 archive")
                with tar.extractfile(member) as fh:
                    blobs[base] = _read_limited(fh, limit, f"{display_path(path)}:{base}")
    except DatasetError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise DatasetError(f"{display_path(path)}: not a readable CIFAR-10 archive ({type(exc).__name__}: "
                           f"{exc})") from None
    missing = sorted({*TRAIN_FILES, TEST_FILE} - set(blobs))
    if missing:
        raise DatasetError(f"{display_path(path)}: the archive lacks {', '.join(missing)}")
    return blobs


def find(folder: Path):
    """(what was found, {file name: bytes}) in ``folder``, or None."""
    for candidate in (folder / FOLDER, folder):
        if candidate.is_dir():
            blobs = _from_folder(candidate)
            if blobs is not None:
                return candidate, blobs
    archive = folder / ARCHIVE
    if archive.exists():
        return archive, _from_archive(archive)
    return None


def load_cifar10(data_dir=None, download: bool = True, progress: bool = True, mirrors=None):
    """CIFAR-10 as a ``loader.Dataset`` (50,000 + 10,000 images (3, 32, 32) uint8 when complete)."""
    from . import sources
    from .loader import Dataset
    from .prep import channel_stats

    sources.mirrors_for("cifar10", mirrors)  # a bad $CNN_XP_MIRRORS_CIFAR10 is refused up front
    found = None
    looked = sources.search_dirs("cifar10", data_dir)
    for folder in looked:
        found = find(folder)
        if found is not None:
            break
    if found is None:
        if not download:
            raise DatasetError(f"cifar10 not found (download disabled); looked in: "
                               f"{'; '.join(display_path(p) for p in looked)}. Put {ARCHIVE} or its {FOLDER}/ "
                               f"there, or run `cnn-xp download cifar10`")
        archive = fetch(data_dir, mirrors=mirrors, progress=progress)
        found = (archive, _from_archive(archive))
    where, blobs = found
    names = parse_meta(blobs[META_FILE], META_FILE) if META_FILE in blobs else CIFAR10_CLASSES
    parts = [parse_records(blobs[n], f"{display_path(where)}:{n}", len(names)) for n in TRAIN_FILES]
    test_images, test_labels = parse_records(blobs[TEST_FILE], f"{display_path(where)}:{TEST_FILE}", len(names))
    train_images = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    description = DataDescription("cifar10", CIFAR10_SHAPE, names, channel_stats(train_images), "resize")
    return Dataset("cifar10", train_images, train_labels, test_images, test_labels, names,
                   {"train_images": Path(where) / TRAIN_FILES[0]}, description)


def fetch(data_dir=None, mirrors=None, progress: bool = True) -> Path:
    """Download and verify the archive into the download folder; its path. A failed
    download removes the folders it created."""
    from . import sources
    from .download import _undo, fetch_file

    spec = sources.get_spec("cifar10")
    dest = sources.download_dir("cifar10", data_dir)
    created = [p for p in (dest, *dest.parents) if not p.exists()][::-1]
    try:
        return fetch_file(ARCHIVE, dest, sources.mirrors_for("cifar10", mirrors), spec.checksums[ARCHIVE],
                          progress=progress)
    except BaseException:
        _undo([], created)
        raise


__all__ = ["load_cifar10", "fetch", "parse_records", "parse_meta", "ARCHIVE", "FOLDER", "RECORD"]
