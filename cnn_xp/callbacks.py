"""Callbacks: what ``fit`` does besides training, as in Keras.

Subclass :class:`Callback` and override any hook; ``self.training`` is the running
:class:`cnn_xp.training.Training` (model, optimizer, history, ``stop_training``, ...).

- ``on_train_begin(logs)`` / ``on_train_end(logs)``;
- ``on_epoch_begin(epoch, logs)`` / ``on_epoch_end(epoch, logs)``: ``epoch`` counts from 1;
  the end's ``logs`` are the epoch's metrics (:data:`METRICS`);
- ``on_batch_end(batch, logs)``: ``logs["size"]`` and ``logs["batch_loss"]`` (the batch's
  mean loss, a 0-d array on the model's device: ``float()`` of it waits for the device)
  always; the epoch's running ``loss`` and ``acc`` (floats) every ``SYNC_EVERY`` batches
  and on the last.

Shipped: :class:`Checkpoint` (atomic, every epoch, last and best), :class:`MetricsCSV`,
:class:`Progress`, :class:`EarlyStopping` and :class:`DivergenceGuard`. Hooks run in
``order`` (lower first): the guard first, so nothing is saved from a diverged epoch.
"""
from __future__ import annotations

import csv
import io
import math
import sys

from .errors import TrainingDiverged, WriteError

# The per-epoch metrics ``fit`` reports (History rows, epoch-end logs, metrics.csv columns).
METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_second")


class Callback:
    """Base class: every hook does nothing."""

    order = 0

    def set_training(self, training) -> None:
        self.training = training

    def on_train_begin(self, logs) -> None: ...

    def on_train_end(self, logs) -> None: ...

    def on_epoch_begin(self, epoch: int, logs) -> None: ...

    def on_epoch_end(self, epoch: int, logs) -> None: ...

    def on_batch_end(self, batch: int, logs) -> None: ...


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


class DivergenceGuard(Callback):
    """Stops training with ``TrainingDiverged`` when the running loss becomes NaN/Inf (checked
    whenever ``fit`` reads it) or, after an epoch, when a weight or the validation loss does.
    The message names the epoch and the step."""

    order = -100

    def on_batch_end(self, batch, logs):
        if "loss" in logs and not _finite(logs["loss"]):
            raise TrainingDiverged(self._message(f"the training loss became {logs['loss']} in epoch "
                                                 f"{logs['epoch']}, step {batch}"))

    def on_epoch_end(self, epoch, logs):
        problem = self.training.health()
        if problem is not None:
            raise TrainingDiverged(self._message(f"after epoch {epoch} {problem}"))

    def _message(self, what: str) -> str:
        lr = float(self.training.optimizer.lr)
        return f"{what}; learning rate {lr:g} is too large: try a smaller one, e.g. {lr / 10:g}"


class EarlyStopping(Callback):
    """Ends training when ``monitor`` (a metric of the epoch logs) has not improved by more
    than ``min_delta`` for ``patience`` epochs. ``mode``: "min", "max" or "auto" (max for
    accuracies). Epochs without the metric (e.g. no validation data) are not counted."""

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0, mode: str = "auto"):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be auto, min or max, got {mode!r}")
        if isinstance(patience, bool) or int(patience) != patience or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.best, self.wait, self.stopped_epoch = None, 0, None

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs):
        value = logs.get(self.monitor)
        if value is None:
            return
        if self._better(float(value)):
            self.best, self.wait = float(value), 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.training.stop_training = True
            self.training.history.stopped = (f"early stopping after epoch {epoch}: {self.monitor} has not improved "
                                             f"on {self.best:.4f} for {self.wait} epochs")


class Checkpoint(Callback):
    """Saves the model, optimizer and training state after every epoch, atomically, to
    ``path`` (the last epoch) and, with ``best_path``, to ``best_path`` whenever
    ``monitor`` improves. Only healthy weights are saved (finite, with a finite loss, see
    ``Training.health``). ``meta``: extra metadata (a dict, or a callable returning one)
    stored with them, e.g. the recipe and class names; the file loads with ``cnn_xp.load``.

    ``last_saved`` is the epoch of the newest file at ``path`` (None before the first). A
    failed write raises ``WriteError`` saying which earlier file is intact.
    """

    order = 50

    def __init__(self, path, *, best_path=None, monitor: str = "val_loss", mode: str = "auto", meta=None,
                 extra=None):
        from pathlib import Path

        self.path = Path(path)
        self.best_path = None if best_path is None else Path(best_path)
        self.monitor = monitor
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.meta, self.extra = meta, extra
        self.last_saved: int | None = None
        self.best: float | None = None
        self.best_epoch: int | None = None

    def set_training(self, training) -> None:
        super().set_training(training)
        if training.epoch and self.last_saved is None and self.path.is_file():
            self.last_saved = training.epoch  # a resumed run: the file holds where it starts

    def _save(self, path) -> None:
        from .saving import save

        meta = self.meta() if callable(self.meta) else dict(self.meta or {})
        extra = self.extra() if callable(self.extra) else dict(self.extra or {})
        try:
            save(self.training.model, path, meta=meta, optimizer=self.training.optimizer,
                 training_state=self.training.state(), extra=extra)
        except OSError as exc:
            intact = (f"the previous checkpoint, of epoch {self.last_saved}, is intact" if self.last_saved
                      else "no earlier checkpoint existed")
            reason = exc.strerror or type(exc).__name__
            raise WriteError(f"cannot write {path} ({reason}); {intact}") from None

    def on_epoch_end(self, epoch, logs):
        if self.training.health() is not None:
            return
        self._save(self.path)
        self.last_saved = epoch
        value = logs.get(self.monitor)
        if self.best_path is not None and value is not None and (
                self.best is None or (value < self.best if self.mode == "min" else value > self.best)):
            self._save(self.best_path)
            self.best, self.best_epoch = float(value), epoch


class MetricsCSV(Callback):
    """Rewrites ``path`` after every epoch (atomically) with one row per finished epoch,
    the columns of :data:`METRICS`."""

    order = 60

    def __init__(self, path):
        self.path = path

    def on_epoch_end(self, epoch, logs):
        write_metrics(self.path, self.training.history.rows)


def write_metrics(path, rows) -> None:
    """``rows`` (epoch metric dicts) as a CSV file, atomically; WriteError on failure."""
    from .atomic import write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRICS})
    try:
        write_text(path, buf.getvalue())
    except OSError as exc:
        raise WriteError(f"cannot write {path} ({exc.strerror or type(exc).__name__})") from None


class Progress(Callback):
    """A tqdm bar per epoch when ``stream`` (default stderr) is a terminal, and one line per
    epoch on ``out`` (default stdout) always. ``bar``: force the bar on or off."""

    order = 40

    def __init__(self, out=None, stream=None, bar: bool | None = None):
        self.out, self.stream, self.bar_wanted = out, stream, bar
        self._bar = None

    def _streams(self):
        return (self.out if self.out is not None else sys.stdout,
                self.stream if self.stream is not None else sys.stderr)

    def on_epoch_begin(self, epoch, logs):
        _, stream = self._streams()
        show = self.bar_wanted if self.bar_wanted is not None else bool(getattr(stream, "isatty", bool)())
        if show:
            from tqdm import tqdm

            self._bar = tqdm(total=logs["batches"], desc=f"epoch {epoch}/{self.training.epochs}", unit="batch",
                             leave=False, file=stream, dynamic_ncols=True)

    def on_batch_end(self, batch, logs):
        if self._bar is not None:
            self._bar.update(1)
            if "loss" in logs:
                self._bar.set_postfix(loss=f"{logs['loss']:.4f}", acc=f"{logs['acc']:.4f}", refresh=False)

    def _close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_epoch_end(self, epoch, logs):
        self._close()
        out, _ = self._streams()
        val = "" if logs["val_acc"] is None else f"  val loss {logs['val_loss']:.4f} acc {logs['val_acc']:.4f}"
        speed = "" if logs["images_per_second"] is None else f"  {logs['images_per_second']:.0f} img/s"
        print(f"epoch {epoch}/{self.training.epochs}  train loss {logs['train_loss']:.4f} acc "
              f"{logs['train_acc']:.4f}{val}  lr {logs['lr']:.3g}  {logs['seconds']:.1f}s{speed}", file=out, flush=True)

    def on_train_end(self, logs):
        self._close()
        if self.training.history.stopped:
            print(self.training.history.stopped, file=self._streams()[0], flush=True)


__all__ = ["METRICS", "Callback", "Checkpoint", "MetricsCSV", "Progress", "EarlyStopping", "DivergenceGuard", "write_metrics"]
