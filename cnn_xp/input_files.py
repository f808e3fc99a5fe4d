"""Opening input files (data, checkpoints, images) for reading: regular files only.

A FIFO, a device, a socket or a directory named as an input is refused from its ``stat``,
before anything opens it, so reading can never block on a pipe nor stream a device forever.
The open itself is non-blocking and re-checked with ``fstat``, so a path swapped for a FIFO
between the check and the open cannot block either.

``display_path`` is how any user-supplied path is shown (answers, error messages): ordinary
names as they are, anything holding a control character or another non-printable one
escaped, so a file name can never add a line to the output or send a terminal a sequence.
"""
from __future__ import annotations

import os
import stat

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFileError(OSError):
    """The path exists but is not a regular file; ``strerror`` says what it is."""


def _refuse_unless_regular(mode: int, path) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    raise NotRegularFileError(0, f"is {kind}, not a regular file", os.fspath(path))


def check_regular(path) -> os.stat_result:
    """``os.stat(path)`` (symlinks followed) if it is a regular file.

    Raises FileNotFoundError / PermissionError / ... as ``os.stat`` does, and
    NotRegularFileError for anything that is not a regular file.
    """
    info = os.stat(path)
    _refuse_unless_regular(info.st_mode, path)
    return info


def open_regular(path):
    """A binary read-only file object for ``path``, which must be a regular file.

    Same errors as :func:`check_regular`; the caller closes the file (``with``).
    """
    check_regular(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        _refuse_unless_regular(os.fstat(fd).st_mode, path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def describe_os_error(exc: OSError) -> str:
    """A short reason for an OSError: its strerror when it has one, else its text."""
    return exc.strerror or str(exc)


def display_path(path) -> str:
    """``path`` as text that is safe to print on one line.

    An ordinary name (printable characters only, no backslash, not starting with a quote)
    is returned as is. Any other is returned as Python's ``repr`` of it, quotes included:
    newlines, tabs, escape sequences, bidi overrides, non-breaking spaces and undecodable
    bytes (``\\udcff`` from the file system's surrogate escapes) appear escaped, and the quotes
    say that they are (a backslash is escaped too, so the text reads back unambiguously).
    """
    name = os.fsdecode(os.fspath(path))
    if name.isprintable() and "\\" not in name and not name.startswith(("'", '"')):
        return name
    return repr(name)
