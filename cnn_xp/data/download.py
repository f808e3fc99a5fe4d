"""Checksummed downloads from a list of mirrors.

Each file is fetched with ``pooch``'s HTTP downloader (requests, a tqdm bar) straight into
an atomic temp file in the destination folder (``atomic_open``: fsync, rename, fsync of the
folder), hashed on the way with every published checksum (md5, sha256) and renamed into
place only when all match. A failed or mismatching mirror is skipped for the next one, and
no partial file is left; temp files of a download that was killed are removed by the next
download into that folder. ``pooch.retrieve`` itself is not used: it renames without an
fsync and leaves ``tmpXXXX`` files behind when killed, which nothing could tell apart later.
"""
from __future__ import annotations

import hashlib
import logging
import re
from contextlib import contextmanager
from pathlib import Path

from ..atomic import atomic_open, remove_stale_temporaries
from ..input_files import display_path
from . import sources
from .errors import DatasetError

CHUNK = 1 << 16
MAX_DOWNLOAD_BYTES = 1 << 30  # no published file comes near; a mirror streaming more is cut off


class _MirrorFailure(Exception):
    """One mirror failed for one file; the message is the reason."""


def file_digests(path, algorithms=("md5", "sha256")) -> dict[str, str]:
    """Hex digests of a file's bytes."""
    hashes = {alg: hashlib.new(alg) for alg in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for h in hashes.values():
                h.update(chunk)
    return {alg: h.hexdigest() for alg, h in hashes.items()}


def _mismatch(digests: dict[str, str], checksums: dict[str, str]) -> str | None:
    for alg, expected in checksums.items():
        if digests[alg] != expected.lower():
            return f"{alg} mismatch (got {digests[alg]}, expected {expected.lower()})"
    return None


class _HashingWriter:
    """A write-only file object for pooch: passes bytes on to ``out``, hashing and counting."""

    def __init__(self, out, algorithms):
        self.out = out
        self.hashes = {alg: hashlib.new(alg) for alg in algorithms}
        self.size = 0

    def write(self, chunk: bytes) -> int:
        self.size += len(chunk)
        if self.size > MAX_DOWNLOAD_BYTES:
            raise _MirrorFailure(f"more than {MAX_DOWNLOAD_BYTES:,} bytes sent: not the published file")
        for h in self.hashes.values():
            h.update(chunk)
        return self.out.write(chunk)

    def flush(self) -> None:
        self.out.flush()

    def digests(self) -> dict[str, str]:
        return {alg: h.hexdigest() for alg, h in self.hashes.items()}


@contextmanager
def _quiet_pooch():
    """pooch logs every download at INFO level on stderr; keep the CLI's output its own."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield pooch
    finally:
        logger.setLevel(level)


def _reason(exc) -> str:
    """A short reason for a requests/pooch failure (HTTP status, or the OS error's text)."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} {exc.response.reason or ''}".rstrip()
    text = str(exc)
    errno_text = re.findall(r"\[Errno -?\d+\] ([^'\"\)]+)", text)
    if errno_text:
        return f"{type(exc).__name__}: {errno_text[-1].strip()}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fetch_one(url: str, target: Path, checksums: dict[str, str], progress: bool,
               timeout: float) -> None:
    """Download ``url`` into ``target`` atomically; _MirrorFailure (and no file) on any problem."""
    import requests

    with _quiet_pooch() as pooch:
        # Only http(s) mirrors get here: sources.mirrors_for refuses any other URL.
        downloader = pooch.HTTPDownloader(progressbar=progress, chunk_size=CHUNK, timeout=timeout,
                                          headers={"User-Agent": "cnn_xp"})
        try:
            with atomic_open(target, "wb") as out:
                writer = _HashingWriter(out, tuple(checksums))
                downloader(url, writer, None)
                bad = _mismatch(writer.digests(), checksums)
                if bad:
                    raise _MirrorFailure(bad)  # inside the ``with``: the temp file is dropped
        except _MirrorFailure:
            raise
        except (requests.RequestException, OSError, ValueError, EOFError) as exc:
            raise _MirrorFailure(_reason(exc)) from None


def fetch_file(filename: str, dest_dir, mirrors, checksums: dict[str, str], *,
               progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``filename`` from the first mirror whose copy matches ``checksums``.

    ``mirrors`` are base URLs (``filename`` is appended). Returns the final path; raises
    DatasetError listing every URL tried and why, plus what to do by hand.
    """
    if not checksums:
        raise ValueError(f"no checksum given for {filename}: refusing an unchecked download")
    dest = Path(dest_dir)
    target = dest / filename
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"{display_path(dest)}: cannot create the download folder ({exc.strerror or exc})") from None
    remove_stale_temporaries(dest, [filename])
    failures = []
    for base in mirrors:
        url = base + filename
        try:
            _fetch_one(url, target, checksums, progress, timeout)
            return target
        except _MirrorFailure as exc:
            failures.append(f"{display_path(url)}: {exc}")
    tried = "; ".join(failures) if failures else "no mirror given"
    raise DatasetError(
        f"could not download {filename} ({tried}). Fetch it by hand from one of these URLs "
        f"and save it as {display_path(target)}, or put all four files in a folder and pass --data-dir DIR"
    )


def download(name: str, data_dir=None, mirrors=None, *, progress: bool = True,
             timeout: float = 60.0) -> dict[str, Path]:
    """Make the four files of ``name`` present in its download folder; return their paths.

    Folder: ``sources.download_dir(name, data_dir)``. Mirrors: ``sources.mirrors_for``
    (argument, else ``$CNN_XP_MIRRORS_<NAME>``, else built in). A ``.gz`` file already
    there is kept when its checksums match and fetched again otherwise; a raw or
    dot-named file already there is the user's own and is kept as is. A download that
    fails removes what it fetched and the folders it created.
    """
    spec = sources.get_spec(name)
    urls = sources.mirrors_for(name, mirrors)
    dest = sources.download_dir(name, data_dir)
    created = [p for p in (dest, *dest.parents) if not p.exists()][::-1]
    fetched: list[Path] = []
    try:
        return _download_parts(spec, dest, urls, progress, timeout, fetched)
    except BaseException:
        _undo(fetched, created)  # a failed download leaves nothing behind
        raise


def _undo(fetched: list[Path], created: list[Path]) -> None:
    """Remove the files a failed download fetched and the folders it created (innermost first)."""
    for path in fetched:
        try:
            path.unlink()
        except OSError:
            pass
    for folder in reversed(created):
        remove_stale_temporaries(folder)
        try:
            folder.rmdir()
        except OSError:
            return


def _download_parts(spec, dest: Path, urls, progress: bool, timeout: float, fetched: list) -> dict[str, Path]:
    present = sources.find_in_dir(dest)
    files: dict[str, Path] = {}
    for part in sources.PARTS:
        filename = sources.BASE_NAMES[part] + ".gz"
        checksums = spec.checksums[filename]
        have = present.get(part)
        if have is not None and have.name != filename:
            files[part] = have
            continue
        if have is not None and have.is_file() and _mismatch(file_digests(have, tuple(checksums)),
                                                             checksums) is None:
            files[part] = have
            continue
        files[part] = fetch_file(filename, dest, urls, checksums, progress=progress, timeout=timeout)
        fetched.append(files[part])
    return files
