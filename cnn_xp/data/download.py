"""Checksummed downloads from a list of mirrors, and the ``cnn-xp download`` command.

Each file is streamed (with a tqdm bar) into a temp file in the destination folder, checked
against every published checksum (md5, sha256), then renamed into place (``atomic_open``);
a failed or mismatching mirror is skipped for the next one, and no partial file is left.
"""
from __future__ import annotations

import hashlib
import http.client
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..atomic import atomic_open
from . import sources
from .errors import DatasetError

CHUNK = 1 << 16


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


def _fetch_one(url: str, target: Path, checksums: dict[str, str], progress: bool,
               timeout: float) -> None:
    """Stream ``url`` into ``target`` atomically; _MirrorFailure (and no file) on any problem."""
    hashes = {alg: hashlib.new(alg) for alg in checksums}
    request = urllib.request.Request(url, headers={"User-Agent": "cnn_xp"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp, atomic_open(target, "wb") as out:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=target.name, disable=not progress, leave=False) as bar:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    bar.update(len(chunk))
            bad = _mismatch({a: h.hexdigest() for a, h in hashes.items()}, checksums)
            if bad:
                raise _MirrorFailure(bad)  # inside the ``with``: the temp file is dropped
    except urllib.error.HTTPError as exc:
        raise _MirrorFailure(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _MirrorFailure(str(exc.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _MirrorFailure(f"{type(exc).__name__}: {exc}") from None


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
        raise DatasetError(f"{dest}: cannot create the download folder ({exc.strerror or exc})") from None
    failures = []
    for base in mirrors:
        url = base + filename
        try:
            _fetch_one(url, target, checksums, progress, timeout)
            return target
        except _MirrorFailure as exc:
            failures.append(f"{url}: {exc}")
    tried = "; ".join(failures) if failures else "no mirror given"
    raise DatasetError(
        f"could not download {filename} ({tried}). Fetch it by hand from one of these URLs "
        f"and save it as {target}, or put all four files in a folder and pass --data-dir DIR"
    )


def download(name: str, data_dir=None, mirrors=None, *, progress: bool = True,
             timeout: float = 60.0) -> dict[str, Path]:
    """Make the four files of ``name`` present in its download folder; return their paths.

    Folder: ``sources.download_dir(name, data_dir)``. Mirrors: ``sources.mirrors_for``
    (argument, else ``$CNN_XP_MIRRORS_<NAME>``, else built in). A ``.gz`` file already
    there is kept when its checksums match and fetched again otherwise; a raw or
    dot-named file already there is the user's own and is kept as is.
    """
    spec = sources.get_spec(name)
    urls = sources.mirrors_for(name, mirrors)
    dest = sources.download_dir(name, data_dir)
    present = sources.find_in_dir(dest)
    files: dict[str, Path] = {}
    for part in sources.PARTS:
        filename = sources.BASE_NAMES[part] + ".gz"
        checksums = spec.checksums[filename]
        have = present.get(part)
        if have is not None and have.name != filename:
            files[part] = have
            continue
        if have is not None and _mismatch(file_digests(have, tuple(checksums)), checksums) is None:
            files[part] = have
            continue
        files[part] = fetch_file(filename, dest, urls, checksums, progress=progress, timeout=timeout)
    return files


def download_command(name: str, data_dir=None, *, mirrors=None, progress: bool = True,
                     out=None, err=None) -> int:
    """``cnn-xp download NAME [--data-dir DIR]``: returns the exit status (0 ok, 2 error).

    Without ``data_dir`` a data set already found in the search folders is only checked;
    with it, the files are made present in ``data_dir``. Errors print one line to stderr.
    """
    from .loader import load_files

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        sources.get_spec(name)
        files = sources.find_files(name) if data_dir is None else None
        verb = "already present"
        if files is None:
            files = download(name, data_dir, mirrors, progress=progress)
            verb = "ready"
        ds = load_files(name, files)
    except DatasetError as exc:
        print(f"cnn-xp: error: {exc}", file=err)
        return 2
    print(f"{name}: {verb} in {ds.folder} ({len(ds.train_labels)} training + "
          f"{len(ds.test_labels)} test images)", file=out)
    return 0
