"""Atomic file writes: a temp file in the target's folder, fsync, ``os.replace``, fsync the folder.

A reader never sees a half-written file, and an interrupted write leaves the old one intact.
The file's bytes are flushed to disk before the rename and the folder's entry after it (as
SQLite does for its journal), so after a crash the name holds the old file or the whole new one.

A process killed mid-write (SIGKILL, power loss) can leave its temp file behind; it is named
``.<target name>-<random>.tmp`` and :func:`remove_stale_temporaries` clears such files for
the names a program writes, the next time it works in that folder.
"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_folder(folder) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself has happened
    finally:
        os.close(fd)


def temp_prefix(path) -> str:
    """The prefix of the temp files that :func:`atomic_open` makes for ``path``."""
    return f".{os.path.basename(os.fspath(path))}-"


@contextmanager
def atomic_open(path, mode: str = "wb", encoding: str | None = None):
    """``with atomic_open(path, "wb") as fh: ...`` writes ``path`` all at once on success.

    The file gets the usual permissions (0666 minus the umask), like ``open(path, "w")``.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, mode, encoding=encoding, **({} if "b" in mode else {"newline": ""})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    fsync_folder(folder)


def write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def stale_temporaries(folder, names=None) -> list[str]:
    """Paths in ``folder`` of temp files that :func:`atomic_open` left behind: regular files
    named ``.<name>-XXXXXXXX.tmp``, for the ``names`` given (None: for any name)."""
    middle = "|".join(re.escape(n) for n in names) if names is not None else r".+"
    pattern = re.compile(r"\.(?:" + middle + r")-[A-Za-z0-9_]{6,}" + re.escape(TEMP_SUFFIX) + r"\Z")
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    return sorted(e.path for e in entries if pattern.match(e.name) and e.is_file(follow_symlinks=False))


def remove_stale_temporaries(folder, names=None) -> list[str]:
    """Delete what :func:`stale_temporaries` finds; return the paths removed.

    Call it only where no other process is writing those names in that folder.
    """
    removed = []
    for path in stale_temporaries(folder, names):
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed
