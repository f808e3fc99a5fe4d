"""Run folders stay true (issue 16's run rows): killed writes leave nothing for long, a run
that saved nothing leaves no folder, SIGINT/SIGTERM stop cleanly with a true message, atomic
writes reach the disk, and SIGKILL at random moments never costs more than the running epoch."""
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnn_xp import atomic
from cnn_xp.app import cli
from cnn_xp.app.run_checkpoint import load_run_checkpoint
from cnn_xp.checkpoint import load_checkpoint
from train_helpers import data_dir, isolated  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]




def train_argv(data_dir, out, *extra):
    return ["train", "--model", "simple_convnet", "--dataset", "mnist", "--data-dir", str(data_dir),
            "--out", str(out), "--no-download", "--no-progress", *extra]


def child_env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    return env


# A child that signals itself at a chosen moment of a real run: the CLI's own handlers take it.
SELF_SIGNAL = r"""
import os, signal, sys
from cnn_xp.app import cli, train
from cnn_xp.callbacks import Callback
stage, sig = sys.argv[1], getattr(signal, sys.argv[2])
class SignalAt(Callback):
    def on_epoch_begin(self, epoch, logs):
        if stage == f"epoch{epoch}":
            os.kill(os.getpid(), sig)
real_fit = train.fit
def fit(*args, callbacks=(), **options):
    return real_fit(*args, callbacks=[*callbacks, SignalAt()], **options)
train.fit = fit
real_prepare = train.prepare_data
def prepare_data(*args, **options):
    if stage == "loading":
        os.kill(os.getpid(), sig)
    return real_prepare(*args, **options)
train.prepare_data = prepare_data
sys.exit(cli.main(sys.argv[3:]))
"""


def self_signal(stage, sig, argv):
    return subprocess.run([sys.executable, "-c", SELF_SIGNAL, stage, sig, *argv], capture_output=True,
                          text=True, timeout=120, env=child_env())


# -- SIGINT / SIGTERM before the first checkpoint -----------------------------------------
@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
@pytest.mark.parametrize("stage", ["loading", "epoch1"])
def test_a_stop_before_the_first_checkpoint_leaves_nothing(data_dir, tmp_path, sig, code, stage):
    out = tmp_path / "runs" / "r"
    proc = self_signal(stage, sig, train_argv(data_dir, out, "--epochs", "3"))
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    when = "during epoch 1" if stage == "epoch1" else "before training started"
    assert lines[0] == (f"cnn-xp: stopped by {sig} {when}; no epoch had finished, so no checkpoint was saved "
                        f"and the run folder it had created was removed")
    assert "--resume" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # the parent it created too


def test_a_stop_in_a_folder_the_user_made_keeps_the_folder(data_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    proc = self_signal("epoch1", "SIGTERM", train_argv(data_dir, out, "--epochs", "3"))
    assert proc.returncode == 143
    assert f"nothing was written to {out}" in proc.stderr
    assert out.is_dir() and list(out.iterdir()) == []


# -- SIGINT / SIGTERM after a checkpoint: the message points at --resume, which works ------
@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stop_after_a_checkpoint_suggests_resume_and_resume_works(data_dir, tmp_path, sig, code):
    out = tmp_path / "r"
    proc = self_signal("epoch3", sig, train_argv(data_dir, out, "--epochs", "4"))
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0] == (f"cnn-xp: stopped by {sig} during epoch 3; {out / 'checkpoint.npz'} holds epoch 2: "
                        f"continue with `cnn-xp train --resume {out}`")
    assert load_run_checkpoint(out / "checkpoint.npz").meta["epoch"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["best.npz", "checkpoint.npz", "metrics.csv"]  # no temp
    assert cli.main(["train", "--resume", str(out), "--no-progress"]) == 0  # nothing more needed
    assert load_checkpoint(out / "checkpoint.npz").meta["epoch"] == 4


def test_an_external_sigterm_mid_run(data_dir, tmp_path):
    """SIGTERM from another process while epochs and checkpoint writes go by."""
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "cnn_xp", *train_argv(data_dir, out, "--epochs", "1000")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        for line in proc.stdout:
            if line.startswith("epoch 3/"):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert len(err.strip().splitlines()) == 1 and f"--resume {out}`" in err
    found = re.match(r"cnn-xp: stopped by SIGTERM (during|after) epoch (\d+); .* holds epoch (\d+): continue", err)
    assert found, err
    when, running, held = found.group(1), int(found.group(2)), int(found.group(3))
    assert held == (running if when == "after" else running - 1) and held >= 2  # true to the file
    assert load_run_checkpoint(out / "checkpoint.npz").meta["epoch"] == held
    assert atomic.stale_temporaries(out) == []


# -- a late error (CNN_XP_THREADS=abc) ----------------------------------------------------
def test_a_late_error_removes_the_folder_it_created(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNN_XP_THREADS", "abc")
    out = tmp_path / "a" / "b" / "run"
    assert cli.main(train_argv(data_dir, out, "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cnn-xp: error: CNN_XP_THREADS must be a positive integer, got 'abc'"]
    assert not (tmp_path / "a").exists()


def test_a_failure_after_a_checkpoint_keeps_the_run(data_dir, tmp_path, monkeypatch, capsys):
    from cnn_xp.app import plots

    monkeypatch.setattr(plots, "plot_confusion", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    out = tmp_path / "run"
    with pytest.raises(OSError):
        cli.main(train_argv(data_dir, out, "--epochs", "1"))
    assert load_checkpoint(out / "checkpoint.npz").meta["epoch"] == 1


# -- SIGKILL while writing: the next run in that folder removes the temp files -------------
KILL_IN_RENAME = r"""
import os, signal, sys
n = [0]; real = os.replace
def replace(src, dst):
    n[0] += 1
    if n[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)  # the temp file is written and fsynced, not renamed
    real(src, dst)
os.replace = replace
from cnn_xp.app import cli
sys.exit(cli.main(sys.argv[2:]))
"""


def test_temp_files_of_a_killed_write_are_removed_by_the_next_run(data_dir, tmp_path):
    out = tmp_path / "r"
    # renames: 1 checkpoint, 2 best, 3 metrics (epoch 1), 4 checkpoint (epoch 2), ...
    proc = subprocess.run([sys.executable, "-c", KILL_IN_RENAME, "4", *train_argv(data_dir, out, "--epochs", "3")],
                          capture_output=True, text=True, timeout=120, env=child_env())
    assert proc.returncode == -signal.SIGKILL
    left = [Path(p).name for p in atomic.stale_temporaries(out)]
    assert len(left) == 1 and left[0].startswith(".checkpoint.npz-")
    assert load_run_checkpoint(out / "checkpoint.npz").meta["epoch"] == 1  # the old one, intact
    (out / ".curves.png-abcd1234.tmp").write_bytes(b"half a png")  # as a kill during plotting leaves
    assert cli.main(train_argv(data_dir, out, "--epochs", "3", "--resume")) == 0
    assert atomic.stale_temporaries(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["best.npz", "checkpoint.npz", "confusion.png",
                                                     "curves.png", "filters.png", "metrics.csv", "summary.json"]


def test_sigkill_at_random_moments_never_costs_more_than_an_epoch(data_dir, tmp_path, monkeypatch):
    """Kill -9 0-60 ms after a random epoch line (mostly mid-write), several times, resuming each
    time: every checkpoint left loads and validates, and the end is bit-identical to one
    uninterrupted run (CPU, one thread)."""
    monkeypatch.setenv("CNN_XP_THREADS", "1")
    common = ("--epochs", "12", "--batch-size", "50", "--seed", "3", "--limit-train", "150", "--limit-test", "20")
    assert cli.main(train_argv(data_dir, tmp_path / "full", *common)) == 0
    out = tmp_path / "killed"
    rng = random.Random(16)
    kills = 0
    while kills < 3:
        resume = ("--resume",) if (out / "checkpoint.npz").exists() else ()
        proc = subprocess.Popen([sys.executable, "-m", "cnn_xp", *train_argv(data_dir, out, *common,
                                                                              *resume)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=child_env(CNN_XP_THREADS="1"))
        wanted = rng.randint(1, 3)
        seen = 0
        for line in proc.stdout:
            seen += line.startswith("epoch ")
            if seen == wanted:
                time.sleep(rng.uniform(0.0, 0.06))
                break
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
        if proc.returncode == -signal.SIGKILL:
            kills += 1
        if (out / "checkpoint.npz").exists():
            load_run_checkpoint(out / "checkpoint.npz")  # always a whole, valid checkpoint
    assert cli.main(train_argv(data_dir, out, *common, "--resume")) == 0
    full, killed = load_checkpoint(tmp_path / "full" / "checkpoint.npz"), load_checkpoint(out / "checkpoint.npz")
    assert killed.meta["epoch"] == 12
    for key, value in full.model_state.items():
        assert np.array_equal(value, killed.model_state[key]), key
    for key, value in full.optimizer_state.items():
        assert np.array_equal(value, killed.optimizer_state[key]), key
    assert full.meta["rng"] == killed.meta["rng"]
    assert atomic.stale_temporaries(out) == []


# -- atomic writes fsync the folder after the rename ---------------------------------------
def test_atomic_write_fsyncs_the_file_then_the_folder_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic.write_text(tmp_path / "a.txt", "hello")
    assert events == ["fsync file", "rename", "fsync folder"]
    assert (tmp_path / "a.txt").read_text() == "hello" and os.listdir(tmp_path) == ["a.txt"]


def test_stale_temporaries_match_only_what_atomic_open_makes(tmp_path):
    names = [".checkpoint.npz-k2j4_9xa.tmp", ".metrics.csv-abcdefgh.tmp", ".write-test-0a1b2c3d.tmp",
             "checkpoint.npz", ".notes.tmp", "x-abcdefgh.tmp", ".hidden-abc.txt"]
    for name in names:
        (tmp_path / name).write_text("")
    (tmp_path / ".dir-abcdefgh.tmp").mkdir()
    found = sorted(Path(p).name for p in atomic.stale_temporaries(tmp_path))
    assert found == sorted(names[:3])
    assert [Path(p).name for p in atomic.stale_temporaries(tmp_path, ["metrics.csv"])] == [names[1]]
    atomic.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[3:] + [".dir-abcdefgh.tmp"])
