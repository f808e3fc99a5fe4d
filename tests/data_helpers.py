"""Shared helpers for the tests of cnn_xp.data: tiny IDX data sets and a local HTTP mirror."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import idx2numpy
import numpy as np
import pytest

from cnn_xp.data import sources

PARTS = sources.PARTS


def tiny_arrays(n_train=12, n_test=5, seed=0) -> dict[str, np.ndarray]:
    """Random uint8 images (N, 28, 28) and labels (N,) in 0..9 for the four parts."""
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def file_name(part: str, style: str = "dash", gz: bool = False) -> str:
    """``train-images-idx3-ubyte`` (dash) or ``train-images.idx3-ubyte`` (dot), maybe ``.gz``."""
    names = sources.candidate_names(part)
    base = names[0] if style == "dash" else names[2]
    return base + (".gz" if gz else "")


def idx_bytes(array, gz: bool = False) -> bytes:
    data = idx2numpy.convert_to_string(np.ascontiguousarray(array))
    return gzip.compress(data, mtime=0) if gz else data


def write_dataset(folder, arrays=None, style="dash", gz=False) -> dict[str, Path]:
    """Write the four IDX files of ``arrays`` into ``folder``; return part -> path."""
    arrays = tiny_arrays() if arrays is None else arrays
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for part in PARTS:
        path = folder / file_name(part, style, gz)
        path.write_bytes(idx_bytes(arrays[part], gz))
        paths[part] = path
    return paths


def checksums_of(data: bytes) -> dict[str, str]:
    return {"md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No user cache, no $CNN_XP_DATA, no mirror env vars, no system folders."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(sources.DATA_ENV, raising=False)
    for name in list(sources.DATASETS):
        monkeypatch.delenv(sources.mirror_env_var(name), raising=False)
    patched = {n: dataclasses.replace(s, system_dirs=()) for n, s in sources.DATASETS.items()}
    monkeypatch.setattr(sources, "DATASETS", patched)
    return tmp_path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list  # set per server

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()


@contextlib.contextmanager
def http_server(root):
    """Serve folder ``root`` on 127.0.0.1 (free port); yield (base_url, list of paths requested)."""
    requests: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def gzip_bomb(payload: bytes, zeros: int) -> bytes:
    """A gzip file of ``payload`` followed by ``zeros`` zero bytes: about 1 KiB of file per
    MiB of data (a 1 MiB file inflates to 1 GiB), made in milliseconds by repeating one
    compressed MiB of zeros as further gzip members (readers see one stream)."""
    mib, rest = divmod(zeros, 1 << 20)
    member = gzip.compress(bytes(1 << 20), mtime=0)
    return gzip.compress(payload, mtime=0) + member * mib + (gzip.compress(bytes(rest), mtime=0) if rest else b"")


# The child's own peak: VmHWM of its memory map (ru_maxrss would carry the parent's peak
# across fork and exec, i.e. whatever the test process reached before).
_MEASURED = """\
import re, resource, sys
rss_file, code = sys.argv[1], sys.argv[2]
try:
    exec(code)
finally:
    try:
        with open("/proc/self/status") as f:
            peak = int(re.search(r"^VmHWM:\\s+(\\d+) kB", f.read(), re.M).group(1))
    except (OSError, AttributeError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(rss_file, "w") as f:
        f.write(str(peak))
"""


def run_measured(code: str, tmp_path, *args, timeout: float = 120, env=None):
    """Run Python ``code`` in a child (this worktree first on its path; ``sys.argv[3:]`` are
    ``args``); (CompletedProcess, the child's peak resident memory in MiB)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests"), env.get("PYTHONPATH", "")])
    rss_file = Path(tmp_path) / "peak-rss-kib"
    proc = subprocess.run([sys.executable, "-c", _MEASURED, str(rss_file), code, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    return proc, int(rss_file.read_text()) / 1024


CLI_CODE = "from cnn_xp.app.cli import main\nraise SystemExit(main(sys.argv[3:]))"  # run_measured(CLI_CODE, tmp, *argv)
