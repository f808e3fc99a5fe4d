"""``cnn_xp.callbacks``: hook order and logs, EarlyStopping, DivergenceGuard (a huge rate, and
finite weights that give a NaN/inf loss), Checkpoint (last, best, never unhealthy weights, a
failed write), MetricsCSV and Progress."""
import csv
import errno
import io
import os
import re

import numpy as np
import pytest

import cnn_xp
from cnn_xp import atomic, models, optim
from cnn_xp.callbacks import (METRICS, Callback, Checkpoint, DivergenceGuard, EarlyStopping, MetricsCSV,
                              Progress)
from cnn_xp.checkpoint import load_checkpoint
from cnn_xp.errors import TrainingDiverged, WriteError
from train_helpers import BlowUp, data_dir, isolated  # noqa: F401 (fixtures)

BATCH = 50


@pytest.fixture(scope="module")
def tiny(data_dir):
    (x, t), (x_test, t_test) = cnn_xp.datasets.load("mnist", data_dir=data_dir, download=False)
    return (x[:100], t[:100]), (x_test[:40], t_test[:40])


def fresh(optimizer="adam", lr=1e-3, seed=0):
    model = models.build("simple_convnet", seed=seed)
    return model, optim.create(optimizer, model, lr=lr)


class Recorder(Callback):
    def __init__(self, calls, name="rec", order=0):
        self.calls, self.name, self.order = calls, name, order

    def on_train_begin(self, logs):
        self.calls.append((self.name, "train_begin", None, dict(logs)))

    def on_epoch_begin(self, epoch, logs):
        self.calls.append((self.name, "epoch_begin", epoch, dict(logs)))

    def on_batch_end(self, batch, logs):
        self.calls.append((self.name, "batch_end", batch, dict(logs)))

    def on_epoch_end(self, epoch, logs):
        self.calls.append((self.name, "epoch_end", epoch, dict(logs)))

    def on_train_end(self, logs):
        self.calls.append((self.name, "train_end", None, dict(logs)))


class Scripted(Callback):
    """Puts ``values[epoch]`` into the epoch-end logs as ``key`` before the others see them."""

    order = -50

    def __init__(self, key, values):
        self.key, self.values = key, values

    def on_epoch_end(self, epoch, logs):
        logs[self.key] = self.values[epoch - 1]


class QuietGuard(DivergenceGuard):
    """A guard that lets everything through (replaces fit's own)."""

    def on_batch_end(self, batch, logs):
        pass

    def on_epoch_end(self, epoch, logs):
        pass


# -- hooks -------------------------------------------------------------------------------
def test_hooks_are_called_in_order_with_the_documented_logs(tiny):
    (x, t), val = tiny
    calls = []
    model, opt = fresh()
    history = cnn_xp.fit(model, opt, (x, t), epochs=2, batch_size=BATCH, validation_data=val, verbose=False,
                         callbacks=[Recorder(calls)])
    steps = len(x) // BATCH
    hooks = [(hook, n) for _, hook, n, _ in calls]
    per_epoch = lambda e: [("epoch_begin", e)] + [("batch_end", s) for s in range(1, steps + 1)] + [("epoch_end", e)]
    assert hooks == [("train_begin", None), *per_epoch(1), *per_epoch(2), ("train_end", None)]
    assert calls[0][3] == {"epochs": 2, "initial_epoch": 0}
    assert calls[1][3] == {"batches": steps}
    for _, hook, n, logs in calls:
        if hook == "batch_end":
            assert {"epoch", "size", "batch_loss"} <= set(logs) and logs["size"] == BATCH
            assert np.isfinite(float(logs["batch_loss"]))
            if n == steps:  # the last batch carries the epoch's running means
                assert 0 <= logs["acc"] <= 1 and np.isfinite(logs["loss"])
        if hook == "epoch_end":
            assert tuple(logs) == METRICS and logs == history.rows[n - 1]
    assert calls[-1][3] == {"epoch": 2, "stopped": None}


def test_callbacks_run_in_their_order(tiny):
    (x, t), _ = tiny
    calls = []
    model, opt = fresh()
    late, early = Recorder(calls, "late", order=10), Recorder(calls, "early", order=-10)
    cnn_xp.fit(model, opt, (x, t), epochs=1, batch_size=BATCH, verbose=False, callbacks=[late, early])
    names = [name for name, hook, _, _ in calls if hook == "epoch_end"]
    assert names == ["early", "late"]
    assert [name for name, hook, _, _ in calls if hook == "train_begin"] == ["early", "late"]


def test_a_resumed_fit_tells_train_begin_its_initial_epoch(tiny):
    (x, t), _ = tiny
    model, opt = fresh()
    states = []

    class Keep(Callback):
        def on_epoch_end(self, epoch, logs):
            states.append(self.training.state())

    cnn_xp.fit(model, opt, (x, t), epochs=1, batch_size=BATCH, verbose=False, callbacks=[Keep()])
    calls = []
    cnn_xp.fit(model, opt, (x, t), epochs=3, batch_size=BATCH, verbose=False, initial_state=states[0],
               callbacks=[Recorder(calls)])
    assert calls[0][3] == {"epochs": 3, "initial_epoch": 1}
    assert [n for _, hook, n, _ in calls if hook == "epoch_end"] == [2, 3]


# -- EarlyStopping -------------------------------------------------------------------------
def test_early_stopping_after_patience_epochs_without_improvement(tiny):
    (x, t), _ = tiny
    model, opt = fresh()
    stopper = EarlyStopping(monitor="score", patience=2, mode="min")
    # best 0.5 at epoch 2; epoch 4 improves on epoch 3 but not on the best; epoch 4 is the 2nd without
    history = cnn_xp.fit(model, opt, (x, t), epochs=10, batch_size=BATCH, verbose=False,
                         callbacks=[Scripted("score", [1.0, 0.5, 0.7, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]),
                                    stopper])
    assert history.epoch == [1, 2, 3, 4]
    assert stopper.stopped_epoch == 4 and stopper.best == 0.5
    assert history.stopped is not None and "after epoch 4" in history.stopped and "score" in history.stopped


def test_early_stopping_waits_again_after_an_improvement(tiny):
    (x, t), _ = tiny
    model, opt = fresh()
    history = cnn_xp.fit(model, opt, (x, t), epochs=6, batch_size=BATCH, verbose=False,
                         callbacks=[Scripted("score", [0.1, 0.2, 0.3, 0.35, 0.36, 0.37]),
                                    EarlyStopping(monitor="score", patience=2)])  # "auto": min
    assert history.epoch == [1, 2, 3] and "after epoch 3" in history.stopped
    history = cnn_xp.fit(*fresh(), (x, t), epochs=5, batch_size=BATCH, verbose=False,
                         callbacks=[Scripted("val_acc", [0.1, 0.2, 0.3, 0.3, 0.3]),
                                    EarlyStopping(monitor="val_acc", patience=2)])  # "auto": max for acc
    assert history.epoch == [1, 2, 3, 4, 5] and history.stopped == (
        "early stopping after epoch 5: val_acc has not improved on 0.3000 for 2 epochs")


def test_without_early_stopping_fit_runs_every_epoch(tiny):
    (x, t), _ = tiny
    history = cnn_xp.fit(*fresh(), (x, t), epochs=3, batch_size=BATCH, verbose=False,
                         callbacks=[Scripted("score", [1.0, 1.0, 1.0])])
    assert history.epoch == [1, 2, 3] and history.stopped is None


# -- DivergenceGuard ---------------------------------------------------------------------------
def test_a_huge_learning_rate_raises_training_diverged_naming_epoch_and_step(tiny, tmp_path):
    (x, t), _ = tiny
    model, opt = fresh(optimizer="sgd", lr=1e30)
    with pytest.raises(TrainingDiverged) as info:
        cnn_xp.fit(model, opt, (x, t), epochs=2, batch_size=BATCH, verbose=False,
                   callbacks=[Checkpoint(tmp_path / "c.npz")])
    message = str(info.value)
    assert re.search(r"in epoch 1, step \d+", message), message
    assert "nan" in message or "inf" in message
    assert "learning rate 1e+30 is too large" in message and "\n" not in message
    assert not (tmp_path / "c.npz").exists()


def test_finite_weights_that_give_a_nan_loss_are_caught_after_the_epoch(tiny, tmp_path):
    (x, t), val = tiny
    model, opt = fresh()
    path = tmp_path / "c.npz"
    with pytest.raises(TrainingDiverged) as info:
        cnn_xp.fit(model, opt, (x, t), epochs=3, batch_size=BATCH, validation_data=val, verbose=False,
                   callbacks=[BlowUp(2), Checkpoint(path)])
    assert str(info.value).startswith("after epoch 2 the weights give a loss of ")
    assert all(np.isfinite(v).all() for v in model.state_dict().values())  # finite weights, yet caught
    assert load_checkpoint(path).meta["epoch"] == 1  # the last healthy epoch
    saved = cnn_xp.load(path)
    assert np.isfinite(cnn_xp.evaluate(saved, val)["loss"])


def test_checkpoint_never_writes_unhealthy_weights_even_when_the_guard_lets_them_pass(tiny, tmp_path):
    (x, t), val = tiny
    model, opt = fresh()
    path, best = tmp_path / "c.npz", tmp_path / "best.npz"
    history = cnn_xp.fit(model, opt, (x, t), epochs=2, batch_size=BATCH, validation_data=val, verbose=False,
                         callbacks=[QuietGuard(), BlowUp(2), Checkpoint(path, best_path=best, monitor="train_acc")])
    assert history.epoch == [1, 2]  # the quiet guard let epoch 2 end
    assert load_checkpoint(path).meta["epoch"] == 1 and load_checkpoint(best).meta["epoch"] == 1
    for file in (path, best):
        assert np.isfinite(cnn_xp.evaluate(cnn_xp.load(file), val)["loss"])
    # without the probe's validation data the training images are probed: still not saved
    model, opt = fresh()
    cnn_xp.fit(model, opt, (x, t), epochs=2, batch_size=BATCH, verbose=False,
               callbacks=[QuietGuard(), BlowUp(2), Checkpoint(tmp_path / "d.npz")])
    assert load_checkpoint(tmp_path / "d.npz").meta["epoch"] == 1


# -- Checkpoint ------------------------------------------------------------------------------
def test_checkpoint_writes_last_every_epoch_and_best_only_on_improvement(tiny, tmp_path, monkeypatch):
    (x, t), _ = tiny
    from cnn_xp import saving

    written = []
    real_save = saving.save
    monkeypatch.setattr(saving, "save", lambda model, path, **kw: written.append(os.path.basename(path))
                        or real_save(model, path, **kw))
    model, opt = fresh()
    last, best = tmp_path / "last.npz", tmp_path / "best.npz"
    ckpt = Checkpoint(last, best_path=best, monitor="score", mode="min", meta={"note": "mine"})
    cnn_xp.fit(model, opt, (x, t), epochs=4, batch_size=BATCH, verbose=False,
               callbacks=[Scripted("score", [1.0, 0.5, 0.7, 0.5]), ckpt])
    assert written == ["last.npz", "best.npz", "last.npz", "best.npz", "last.npz", "last.npz"]
    assert load_checkpoint(last).meta["epoch"] == 4 and load_checkpoint(best).meta["epoch"] == 2
    assert ckpt.best_epoch == 2 and ckpt.best == 0.5 and ckpt.last_saved == 4
    meta = load_checkpoint(last).meta
    assert meta["note"] == "mine" and [r["epoch"] for r in meta["history"]] == [1, 2, 3, 4]
    reloaded = cnn_xp.load(last)
    assert np.array_equal(reloaded.predict(x[:5]), model.predict(x[:5]))


def test_a_failed_checkpoint_write_is_a_write_error_and_the_old_file_is_intact(tiny, tmp_path, monkeypatch):
    (x, t), _ = tiny
    path = tmp_path / "c.npz"
    before = {}
    real_replace = os.replace

    class DiskFullFromEpoch2(Callback):
        def on_epoch_begin(self, epoch, logs):
            if epoch == 2:
                before["bytes"] = path.read_bytes()

                def replace(src, dst, *args, **kwargs):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

                monkeypatch.setattr(atomic.os, "replace", replace)

    model, opt = fresh()
    with pytest.raises(WriteError) as info:
        cnn_xp.fit(model, opt, (x, t), epochs=3, batch_size=BATCH, verbose=False,
                   callbacks=[DiskFullFromEpoch2(), Checkpoint(path)])
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    message = str(info.value)
    assert message == (f"cannot write {path} (No space left on device); the previous checkpoint, of epoch 1, "
                       f"is intact")
    assert isinstance(info.value, OSError)  # WriteError is an OSError as well
    assert path.read_bytes() == before["bytes"]
    assert load_checkpoint(path).meta["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]  # no temp file left


def test_a_failed_first_write_says_no_checkpoint_existed(tiny, tmp_path, monkeypatch):
    (x, t), _ = tiny

    def replace(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(WriteError, match=r"\(No space left on device\); no earlier checkpoint existed$"):
        cnn_xp.fit(*fresh(), (x, t), epochs=1, batch_size=BATCH, verbose=False,
                   callbacks=[Checkpoint(tmp_path / "c.npz")])
    assert list(tmp_path.iterdir()) == []


# -- MetricsCSV and Progress ------------------------------------------------------------------------
def test_metrics_csv_columns_are_the_metrics(tiny, tmp_path):
    (x, t), val = tiny
    path = tmp_path / "metrics.csv"
    history = cnn_xp.fit(*fresh(optimizer="sgd", lr=0.05), (x, t), epochs=2, batch_size=BATCH, validation_data=val,
                         schedule="cosine", verbose=False, callbacks=[MetricsCSV(path)])
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert tuple(reader.fieldnames) == METRICS and "lr" in reader.fieldnames
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["lr"]) for r in rows] == history.history["lr"]
    assert [float(r["val_acc"]) for r in rows] == history.history["val_acc"]
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])


def test_metrics_csv_leaves_validation_empty_without_validation_data(tiny, tmp_path):
    (x, t), _ = tiny
    path = tmp_path / "m.csv"
    cnn_xp.fit(*fresh(), (x, t), epochs=1, batch_size=BATCH, verbose=False, callbacks=[MetricsCSV(path)])
    rows = list(csv.DictReader(open(path, newline="")))
    assert rows[0]["val_loss"] == "" and rows[0]["val_acc"] == "" and rows[0]["train_loss"] != ""


class FakeStream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_progress_prints_one_line_per_epoch_and_a_bar_only_on_a_terminal(tiny, tty):
    (x, t), val = tiny
    out, stream = io.StringIO(), FakeStream(tty)
    cnn_xp.fit(*fresh(), (x, t), epochs=2, batch_size=BATCH, validation_data=val,
               callbacks=[Progress(out=out, stream=stream)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    for epoch, line in enumerate(lines, 1):
        assert line.startswith(f"epoch {epoch}/2  train loss ") and " val loss " in line and " lr 0.001" in line
    bar = stream.getvalue()
    if tty:
        assert "epoch 1/2" in bar and "epoch 2/2" in bar and "batch" in bar
    else:
        assert bar == ""


def test_progress_says_why_training_stopped_early(tiny):
    (x, t), _ = tiny
    out = io.StringIO()
    cnn_xp.fit(*fresh(), (x, t), epochs=5, batch_size=BATCH,
               callbacks=[Scripted("score", [1.0] * 5), EarlyStopping("score", patience=1),
                          Progress(out=out, stream=FakeStream(False))])
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("early stopping after epoch 2: score")
