"""A run folder (RUN_DIR): where ``cnn-xp train`` keeps one run, held by one process at a time.

    checkpoint.npz  the last epoch: model, optimizer, recipe, training state (atomic)
    best.npz        the epoch with the best validation accuracy so far
    metrics.csv     one row per epoch (cnn_xp.callbacks.METRICS)
    summary.json    the recipe and the results, written when the run ends
    curves.png, filters.png, confusion.png
    .lock           exists while a process trains in the folder (flock held); holds its PID

The lock is an advisory ``flock`` on ``.lock``: the kernel releases it when the holder
exits, however it exits, so a lock file left by a killed process is stale by construction
and the next run takes it (the PID in the file is only for the message). A second ``cnn-xp
train`` on a held folder stops at once with one line naming the holder's PID.

The folder stays true to what happened: temp files of a killed write are removed when the
next run opens it, and a run that saves nothing removes the folders it created.
"""
from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime
from pathlib import Path

from ..atomic import remove_stale_temporaries
from ..errors import RunFolderError

CHECKPOINT = "checkpoint.npz"
BEST = "best.npz"
LOCK = ".lock"


def default_run_dir(model: str, dataset: str) -> Path:
    """``runs/<model>-<data set>-<time>`` (a folder data set by its folder's name)."""
    if dataset.startswith("folder:"):
        dataset = "folder-" + (Path(dataset[len("folder:"):]).name or "root")
    return Path("runs") / f"{model}-{dataset[:64]}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


class RunFolder:
    """``RunFolder(path).open()`` creates the folder if needed, proves it writable and takes
    its lock (RunFolderError otherwise); ``close(saved)`` releases it and, when nothing was
    saved, removes the folders ``open`` created."""

    def __init__(self, path):
        self.path = Path(path)
        self.created: list[Path] = []
        self._lock_fd: int | None = None

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def best(self) -> Path:
        return self.path / BEST

    def open(self) -> "RunFolder":
        path = self.path
        try:
            self.created = [p for p in (path, *path.parents) if not p.exists()][::-1]
            if path.exists() and not path.is_dir():
                raise NotADirectoryError(20, "not a folder")
            path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-test-", suffix=".tmp", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            # remove the parents made before it failed (e.g. a name too long for the file system)
            self.created = [p for p in self.created if os.path.isdir(p)]
            self.close(saved=False)
            raise RunFolderError(f"--out {path}: cannot write there ({_os_reason(exc)})") from None
        self._lock()
        remove_stale_temporaries(path)  # left by a write that was killed in an earlier run
        return self

    def _lock(self) -> None:
        import fcntl

        lock_path = self.path / LOCK
        for _ in range(10):
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as exc:
                raise RunFolderError(f"--out {self.path}: cannot create its lock file ({_os_reason(exc)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _holder(fd)
                os.close(fd)
                raise RunFolderError(f"{self.path} is in use by another cnn-xp process (PID {holder}); wait for it "
                                     f"to finish or choose another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except OSError:
                same = False
            if same:  # not a file its last holder removed while we opened it
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._lock_fd = fd
                return
            os.close(fd)
        raise RunFolderError(f"{self.path}: its lock file keeps changing; is another cnn-xp process starting there?")

    def close(self, saved: bool) -> None:
        """Release the lock (its file is removed first: a process that opened the old file
        meanwhile sees it is gone and retries); with nothing saved, remove the folders
        ``open`` created."""
        if self._lock_fd is not None:
            try:
                os.unlink(self.path / LOCK)
            except OSError:
                pass
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None
        if not saved:
            for folder in reversed(self.created):
                remove_stale_temporaries(folder)
                try:
                    folder.rmdir()
                except OSError:
                    return


def _holder(fd: int) -> str:
    """The PID in a held lock file. Its holder writes it just after taking the lock, so a
    file found empty is read again for a moment before the PID is called unknown."""
    for _ in range(50):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "unknown"


def latest_run_dir() -> Path | None:
    """The newest ``runs/*`` folder holding a checkpoint (by its checkpoint's time)."""
    found = [p for p in Path("runs").glob("*") if (p / CHECKPOINT).is_file()]
    return max(found, key=lambda p: (p / CHECKPOINT).stat().st_mtime) if found else None


__all__ = ["RunFolder", "default_run_dir", "latest_run_dir", "CHECKPOINT", "BEST", "LOCK"]
