"""Run folders against hostile input, round 2: two runs started at once on one --out, a stale
.lock left by a SIGKILLed run, an --out name over 255 bytes, metrics.csv replaced by a folder,
and divergence messages that name a checkpoint only when it holds healthy weights."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cnn_xp
from cnn_xp.app import cli, train as train_module
from cnn_xp.app.run_checkpoint import load_run_checkpoint
from cnn_xp.app.run_folder import LOCK
from cnn_xp.checkpoint import load_checkpoint
from train_helpers import BlowUp, data_dir, isolated, no_plots, train  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
WAIT = 120  # seconds before a child that never gets there fails the test

pytestmark = pytest.mark.usefixtures("no_plots")


def child_env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def train_argv(data_dir, out, *extra):
    return ["train", "--model", "simple_convnet", "--dataset", "mnist", "--data-dir", str(data_dir),
            "--out", str(out), "--no-download", "--no-progress", "--limit-test", "20", *extra]


def one_line(capsys, code, expected=2) -> str:
    captured = capsys.readouterr()
    assert code == expected, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("cnn-xp: error: "), lines[0]
    return lines[0]


# A child that starts training when GO exists, and (at the start of epoch 1, holding the folder)
# waits until RELEASE exists; with STAGE "kill<N>" it SIGKILLs itself at the start of epoch N.
CHILD = r"""
import os, signal, sys, time
from pathlib import Path
from cnn_xp.app import cli, plots, train
from cnn_xp.callbacks import Callback
go, release, stage = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
for name in ("plot_curves", "plot_filters", "plot_confusion"):
    setattr(plots, name, lambda *args, **kwargs: None)
class Hold(Callback):
    def on_epoch_begin(self, epoch, logs):
        if stage == f"kill{epoch}":
            os.kill(os.getpid(), signal.SIGKILL)
        if epoch == 1 and stage == "hold":
            while not release.exists():
                time.sleep(0.01)
real_fit = train.fit
train.fit = lambda *args, callbacks=(), **kw: real_fit(*args, callbacks=[*callbacks, Hold()], **kw)
while not go.exists():
    time.sleep(0.005)
sys.exit(cli.main(sys.argv[4:]))
"""


def start_child(tmp_path, stage, argv):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "go"), str(tmp_path / "release"), stage,
                             *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


def first_to_exit(procs):
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                return proc
        time.sleep(0.01)
    raise AssertionError("neither child exited")


# -- two runs at once ------------------------------------------------------------------------
def test_two_runs_started_at_once_on_one_folder(data_dir, tmp_path):
    out = tmp_path / "shared"
    seeds = {}
    procs = []
    try:
        for seed in (11, 22):
            proc = start_child(tmp_path, "hold", train_argv(data_dir, out, "--epochs", "2", "--seed", str(seed)))
            seeds[proc.pid] = seed
            procs.append(proc)
        (tmp_path / "go").touch()  # both start now
        loser = first_to_exit(procs)
        (tmp_path / "release").touch()
        winner = procs[1] if loser is procs[0] else procs[0]
        _, loser_err = loser.communicate(timeout=WAIT)
        winner_out, winner_err = winner.communicate(timeout=WAIT)
    finally:
        for proc in procs:
            proc.kill()
    assert winner.returncode == 0, winner_err
    assert loser.returncode == 2
    assert loser_err.splitlines() == [f"cnn-xp: error: {out} is in use by another cnn-xp process (PID {winner.pid}); "
                                      f"wait for it to finish or choose another --out"]
    seed = seeds[winner.pid]
    ckpt = load_run_checkpoint(out / "checkpoint.npz")
    summary = json.loads((out / "summary.json").read_text())
    assert ckpt.meta["recipe"]["seed"] == summary["recipe"]["seed"] == seed  # both from the winner's run
    assert ckpt.meta["epoch"] == summary["epochs"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["best.npz", "checkpoint.npz", "metrics.csv", "summary.json"]
    assert f"run folder {out}" in winner_out


def test_a_run_on_a_held_folder_stops_at_once_in_process(data_dir, tmp_path, capsys):
    """The same from this process: the holder is a child; the folder's files stay as they are."""
    out = tmp_path / "held"
    proc = start_child(tmp_path, "hold", train_argv(data_dir, out, "--epochs", "1"))
    try:
        (tmp_path / "go").touch()
        deadline = time.monotonic() + WAIT
        while not ((out / LOCK).is_file() and (out / LOCK).read_text().strip() == str(proc.pid)):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        line = one_line(capsys, cli.main(train_argv(data_dir, out, "--epochs", "1")))
        assert line == (f"cnn-xp: error: {out} is in use by another cnn-xp process (PID {proc.pid}); wait for it "
                        f"to finish or choose another --out")
        line = one_line(capsys, cli.main(["train", "--resume", str(out), "--no-progress"]))
        assert "no checkpoint.npz" in line  # nothing saved yet: nothing to resume
        (tmp_path / "release").touch()
        _, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert load_run_checkpoint(out / "checkpoint.npz").meta["recipe"]["seed"] == 0
    assert not (out / LOCK).exists()


def test_a_lock_taken_but_not_yet_signed_still_names_its_holder(tmp_path, monkeypatch):
    """The race of two starts: the second reads the lock file between the holder's flock and
    its write of the PID. It reads again, and names the PID."""
    import fcntl

    from cnn_xp.app.run_folder import RunFolder
    from cnn_xp.errors import RunFolderError

    folder = tmp_path / "run"
    folder.mkdir()
    holder = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken, still empty
    real_pread, reads = os.pread, []

    def pread(fd, n, offset):
        data = real_pread(fd, n, offset)
        if not reads:  # the holder signs just after this first read
            os.pwrite(holder, b"4242\n", 0)
        reads.append(data)
        return data

    monkeypatch.setattr(os, "pread", pread)
    try:
        with pytest.raises(RunFolderError, match=r"in use by another cnn-xp process \(PID 4242\)"):
            RunFolder(folder).open()
    finally:
        os.close(holder)
    assert reads[0] == b"" and len(reads) == 2


# -- a stale lock ----------------------------------------------------------------------------
def test_a_stale_lock_of_a_sigkilled_run_does_not_block_resume(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    (tmp_path / "go").touch()
    proc = start_child(tmp_path, "kill2", train_argv(data_dir, out, "--epochs", "2"))
    proc.communicate(timeout=WAIT)
    assert proc.returncode == -signal.SIGKILL
    assert (out / LOCK).read_text().strip() == str(proc.pid)  # left behind, naming the dead process
    assert load_run_checkpoint(out / "checkpoint.npz").meta["epoch"] == 1
    assert cli.main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert load_run_checkpoint(out / "checkpoint.npz").meta["epoch"] == 2
    assert not (out / LOCK).exists()


def test_a_stale_lock_before_any_checkpoint_does_not_block_a_new_run(data_dir, tmp_path):
    out = tmp_path / "run"
    (tmp_path / "go").touch()
    proc = start_child(tmp_path, "kill1", train_argv(data_dir, out, "--epochs", "1"))
    proc.communicate(timeout=WAIT)
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.iterdir()) == [LOCK]
    assert cli.main(train_argv(data_dir, out, "--epochs", "1")) == 0
    assert load_run_checkpoint(out / "checkpoint.npz").meta["epoch"] == 1
    assert not (out / LOCK).exists()


# -- names too long ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["x" * 256, "é" * 128, "deep/" + "y" * 300])
def test_an_out_name_over_255_bytes_is_one_line(data_dir, tmp_path, capsys, name):
    before = sorted(os.listdir(tmp_path))
    out = tmp_path / name
    line = one_line(capsys, train(data_dir, out, "--epochs", "1"))
    assert "File name too long" in line and line.startswith("cnn-xp: error: --out ")
    assert sorted(os.listdir(tmp_path)) == before  # nothing created ("deep" neither)


# -- metrics.csv replaced by a folder ---------------------------------------------------------------
def test_metrics_csv_replaced_by_a_folder_is_one_line_and_the_checkpoint_is_intact(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "1") == 0
    (out / "metrics.csv").unlink()
    (out / "metrics.csv").mkdir()
    capsys.readouterr()
    line = one_line(capsys, cli.main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]))
    assert line == (f"cnn-xp: error: cannot write {out / 'metrics.csv'} (Is a directory); "
                    f"{out / 'checkpoint.npz'} holds epoch 2 with healthy weights")
    ckpt = load_run_checkpoint(out / "checkpoint.npz")  # the whole schema holds
    assert ckpt.meta["epoch"] == 2 and [r["epoch"] for r in ckpt.meta["history"]] == [1, 2]
    assert (out / "metrics.csv").is_dir() and not (out / LOCK).exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    # with the folder gone, the run goes on from epoch 2
    (out / "metrics.csv").rmdir()
    assert cli.main(["train", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 0
    assert load_run_checkpoint(out / "checkpoint.npz").meta["epoch"] == 3


# -- divergence messages -----------------------------------------------------------------------
def blow_up_in(monkeypatch, epoch):
    real_fit = train_module.fit
    monkeypatch.setattr(train_module, "fit", lambda *args, callbacks=(), **kw: real_fit(
        *args, callbacks=[*callbacks, BlowUp(epoch)], **kw))


def test_a_divergence_names_the_checkpoint_of_the_last_healthy_epoch(data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    blow_up_in(monkeypatch, 2)
    line = one_line(capsys, train(data_dir, out, "--epochs", "3"), expected=1)
    assert line.startswith("cnn-xp: error: training stopped: after epoch 2 the weights give a loss of ")
    assert line.endswith(f"; {out / 'checkpoint.npz'} holds epoch 1 with healthy weights")
    assert load_checkpoint(out / "checkpoint.npz").meta["epoch"] == 1
    model = cnn_xp.load(out / "checkpoint.npz")
    assert all(np.isfinite(v).all() for v in model.state_dict().values())
    (x, t), _ = cnn_xp.datasets.load("mnist", data_dir=data_dir, download=False)
    assert np.isfinite(cnn_xp.evaluate(model, (x[:50], t[:50]))["loss"])
    assert not (out / "summary.json").exists() and not (out / LOCK).exists()


def test_a_divergence_in_a_resumed_run_names_the_checkpoint_it_started_from(data_dir, tmp_path, capsys,
                                                                            monkeypatch):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "2") == 0
    capsys.readouterr()
    blow_up_in(monkeypatch, 3)
    line = one_line(capsys, cli.main(["train", "--resume", str(out), "--epochs", "4", "--no-progress"]), expected=1)
    assert line.endswith(f"; {out / 'checkpoint.npz'} holds epoch 2 with healthy weights"), line
    assert load_run_checkpoint(out / "checkpoint.npz").meta["epoch"] == 2


@pytest.mark.parametrize("how", ["blow-up", "huge lr"])
def test_a_divergence_before_any_healthy_epoch_names_no_checkpoint(data_dir, tmp_path, capsys, monkeypatch, how):
    out = tmp_path / "run"
    if how == "blow-up":
        blow_up_in(monkeypatch, 1)
        code = train(data_dir, out, "--epochs", "2")
    else:
        code = train(data_dir, out, "--epochs", "2", "--optimizer", "sgd", "--lr", "1e30")
    line = one_line(capsys, code, expected=1)
    assert line.endswith("; no checkpoint was saved") and "checkpoint.npz" not in line
    assert "epoch 1" in line
    assert not out.exists()  # the folder it had created is gone with nothing in it
