"""``fit`` and ``evaluate``: the library's one training loop and one evaluation.

``fit(model, optimizer, (x, t), epochs=..., batch_size=...)`` trains a ``Sequential`` in
mini-batches on its device and returns a :class:`History`. Everything else a run needs
plugs in through arguments and callbacks (``cnn_xp.callbacks``), as in Keras:

- ``validation_data=(x_val, t_val)``: evaluated after every epoch (``val_loss``, ``val_acc``);
- ``schedule``: a learning-rate schedule (``cnn_xp.schedules``), given as a name
  (``"cosine"``), a dict in epochs (``{"name": "step", "step_epochs": 5, "gamma": 0.5,
  "warmup_epochs": 1, "epochs": 20}``, ``{"name": "multistep", "milestones": [82, 123]}``;
  ``epochs`` is the horizon, default ``epochs``), or a ``Schedule`` in steps;
- ``augment``: random affine distortions and / or random crops and flips of each training
  batch, as strengths (``{"shift": 0.1}``, ``{"crop": 4, "flip": 1}``; see
  ``cnn_xp.augment``) or an augmenter (``RandomAffine``, ``RandomCropFlip``, ...);
- ``shuffle``: draw a new batch order every epoch (default) or keep the data's order;
- ``initial_state``: a :meth:`Training.state` (saved in every run checkpoint) to continue a
  run after its last finished epoch; with the model's and optimizer's restored state, the
  continued run is bit-identical on the CPU to one that never stopped.

Data: ``x`` (N, C, H, W) floating point, ``t`` (N,) integer class indices, host or device
arrays. On the CPU each batch is split across every core (``parallel.runner_for``) and
subnormal floats flush to zero while ``fit`` runs (restored after).

The per-epoch metrics (``History.history`` and each callback's ``logs``): ``epoch``,
``train_loss``, ``train_acc`` (running means over the epoch's batches, in training mode),
``val_loss``, ``val_acc`` (None without validation data), ``lr`` (the mean base learning
rate of the epoch's steps, the schedule applied), ``seconds`` and ``images_per_second``.
"""
from __future__ import annotations

import math
import time

import numpy

from . import backend, parallel, schedules
from .callbacks import METRICS, DivergenceGuard, Progress
from .ops import cross_entropy

SYNC_EVERY = 20  # batches between host reads of the running loss (progress, divergence)
PROBE_IMAGES = 256  # training images a finiteness check evaluates when there is no validation set


class History:
    """What ``fit`` returns: ``rows`` (one dict of :data:`METRICS` per epoch, resumed
    epochs included), ``history`` (metric -> one value per epoch, as Keras) and
    ``stopped`` (why training ended early, or None)."""

    def __init__(self, rows=None):
        self.rows: list[dict] = [dict(r) for r in (rows or [])]
        self.stopped: str | None = None

    @property
    def epoch(self) -> list[int]:
        return [int(r["epoch"]) for r in self.rows]

    @property
    def history(self) -> dict[str, list]:
        return {key: [r.get(key) for r in self.rows] for key in METRICS if key != "epoch"}

    def __repr__(self) -> str:
        return f"History({len(self.rows)} epochs, last {self.rows[-1] if self.rows else None})"


def build_schedule(schedule, steps_per_epoch: int, epochs: int):
    """A ``schedules.Schedule`` (in steps) from ``fit``'s ``schedule`` argument, or None."""
    if schedule is None or isinstance(schedule, schedules.Schedule):
        return schedule
    spec = {"name": schedule} if isinstance(schedule, str) else dict(schedule)
    name = str(spec.pop("name", "constant")).lower()
    horizon = int(spec.pop("epochs", None) or epochs)
    kwargs = {"warmup_steps": int(round(float(spec.pop("warmup_epochs", 0.0) or 0.0) * steps_per_epoch))}
    if name == "constant" and not kwargs["warmup_steps"]:
        return None
    if "step_epochs" in spec:
        kwargs["step_size"] = max(1, int(round(float(spec.pop("step_epochs")) * steps_per_epoch)))
    if "milestones" in spec:  # epochs -> steps
        kwargs["milestones"] = [max(1, int(round(float(m) * steps_per_epoch))) for m in spec.pop("milestones")]
    kwargs.update(spec)
    return schedules.create(name, horizon * steps_per_epoch, **kwargs)


def build_augmenter(augment, seed: int):
    """The augmenter of ``fit``'s ``augment`` argument (strengths or an augmenter), or None:
    strengths without crop / flip give a ``RandomAffine`` seeded ``augment_seed(seed)`` (as
    they always have: the same distortions), crop / flip alone a ``RandomCropFlip`` seeded
    ``crop_flip_seed(seed)``, both kinds the two chained (``augment.build``)."""
    if augment is None or callable(augment):
        return augment
    from .augment import build

    return build(dict(augment), augment_seed(seed), crop_flip_seed(seed))


def augment_seed(seed: int) -> int:
    """The augmentation stream's seed: apart from the batch order's (which uses ``seed``)."""
    return int(numpy.random.SeedSequence([int(seed), 0x617567]).generate_state(1)[0])


def crop_flip_seed(seed: int) -> int:
    """The crop / flip stream's seed: apart from the batch order's and the affine one's."""
    return int(numpy.random.SeedSequence([int(seed), 0x617567, 1]).generate_state(1)[0])


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


class Training:
    """One ``fit`` call as its callbacks see it: ``model``, ``optimizer``, ``batches`` (the
    shuffled ``BatchIterator``), ``scheduler`` and ``augmenter`` (or None), ``epochs`` (the
    last epoch to train), ``epoch`` (epochs finished), ``history`` (a :class:`History`),
    ``validation_data`` (device arrays or None) and ``stop_training`` (set it to end after
    the current epoch)."""

    def __init__(self, model, optimizer, batches, scheduler, augmenter, epochs, validation_data):
        self.model, self.optimizer, self.batches = model, optimizer, batches
        self.scheduler, self.augmenter = scheduler, augmenter
        self.epochs, self.epoch = int(epochs), 0
        self.validation_data = validation_data
        self.history = History()
        self.stop_training = False
        self.wall_seconds = 0.0
        self._health: tuple[int, str | None] | None = None

    def state(self) -> dict:
        """JSON-able state at the last finished epoch: ``epoch``, ``history``,
        ``wall_seconds``, ``rng`` (batch order, dropout, augmentation) and ``schedule``."""
        state = {"epoch": self.epoch, "history": [dict(r) for r in self.history.rows],
                 "wall_seconds": float(self.wall_seconds),
                 "rng": {"batches": self.batches.state_dict(), "model": self.model.random_state()}}
        if self.augmenter is not None:
            state["rng"]["augment"] = self.augmenter.state_dict()
        if self.scheduler is not None:
            state["schedule"] = self.scheduler.state_dict()
        return state

    def load_state(self, state: dict) -> None:
        """Continue after ``state``'s epoch (ValueError if it does not fit this run)."""
        self.batches.load_state_dict(state["rng"]["batches"])
        self.model.set_random_state(state["rng"]["model"])
        if self.augmenter is not None:
            self.augmenter.load_state_dict(state["rng"]["augment"])
        if self.scheduler is not None:
            saved = state["schedule"]
            if saved.get("schedule") != self.scheduler.schedule.config():
                # a re-planned schedule (a run extended past its horizon) continues at the saved step
                saved = {"steps": saved["steps"], "schedule": self.scheduler.schedule.config()}
            self.scheduler.load_state_dict(saved)
        self.history = History(state["history"])
        self.epoch = int(state["epoch"])
        self.wall_seconds = float(state["wall_seconds"])

    def health(self) -> str | None:
        """None when every weight is finite and the loss on the validation data (or on the
        first training images) is finite; else what is wrong. Cached per finished epoch."""
        if self._health is not None and self._health[0] == self.epoch:
            return self._health[1]
        problem = None
        for name, layer, key in self.model.params_and_grads():
            value = layer.params[key]
            if not bool(backend.xp_of(value).isfinite(value).all()):
                problem = f"weight {name} holds NaN or infinite values"
                break
        if problem is None:
            x, t = self.validation_data or (self.batches.x, self.batches.t)
            x, t = x[:PROBE_IMAGES], t[:PROBE_IMAGES]
            if int(x.shape[0]):
                loss = evaluate_loss(self.model, x, t)
                if not _finite(loss):
                    problem = f"the weights give a loss of {loss}"
        self._health = (self.epoch, problem)
        return problem


def _output_width(model) -> int:
    """The class count of a model whose last learnable layer has a bias (Affine, Conv2D)."""
    for layer in reversed(model.layers):
        if "b" in layer.params:
            return int(layer.params["b"].shape[0])
    return 0


def _score_width(model, sample_shape) -> int:
    """K of the model's scores (N, K) for samples of ``sample_shape``; 0 when unknown."""
    shape = tuple(int(d) for d in sample_shape)
    try:
        for layer in model.layers:
            shape = tuple(layer.output_shape(shape))
    except Exception:  # a layer that cannot say, or input it refuses (the forward will say why)
        return 0
    return shape[0] if len(shape) == 1 else 0


def _labels_checked(model, x, labels) -> bool:
    """True when the loss takes ``checked`` labels and running totals (SoftmaxCrossEntropy)
    and ``labels`` are class indices (N,) each in 0..K-1 of the model's K outputs for ``x``,
    checked here once for the whole run; ValueError (the loss's message) for a label
    outside. False where that is not known before a forward: each batch is then checked by
    the loss."""
    from .layers import SoftmaxCrossEntropy
    from .ops.softmax import first_bad_label

    classes = _score_width(model, x.shape[1:])
    if not (isinstance(model.loss_layer, SoftmaxCrossEntropy) and classes and labels.ndim == 1
            and labels.dtype.kind in "iu"):
        return False
    bad = first_bad_label(labels, classes) if int(labels.shape[0]) else None
    if bad is not None:
        index, label = bad
        raise ValueError(f"softmax cross-entropy: label {label} at index {index} is outside 0..{classes - 1}")
    return True


def _call(callbacks, hook: str, *args) -> None:
    for callback in callbacks:
        getattr(callback, hook)(*args)


def fit(model, optimizer, train_data, *, epochs: int, batch_size: int = 100, validation_data=None,
        schedule=None, augment=None, callbacks=(), seed: int = 0, initial_state: dict | None = None,
        verbose: bool = True, shuffle: bool = True):
    """Train ``model`` with ``optimizer`` on ``train_data = (x, t)`` until epoch ``epochs``;
    returns a :class:`History`. See the module docstring for the arguments.

    ``seed`` seeds the batch order and the augmentation (the weights and dropout are the
    model's). ``verbose`` adds a :class:`callbacks.Progress` unless one is given, and a
    :class:`callbacks.DivergenceGuard` is always there (one of yours replaces it): a loss
    or weight that becomes NaN/Inf raises ``TrainingDiverged`` naming the epoch and step.
    """
    from .data.batches import BatchIterator

    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    x, t = train_data
    batches = BatchIterator(x, t, batch_size, seed=seed, device=model.device, shuffle=shuffle)
    if validation_data is not None:
        xv, tv = validation_data
        validation_data = None if int(xv.shape[0]) == 0 else (model.as_input(xv), backend.to_device(tv, model.device))
    sched = build_schedule(schedule, len(batches), int(epochs))
    scheduler = None if sched is None else schedules.Scheduler(optimizer, sched)
    training = Training(model, optimizer, batches, scheduler, build_augmenter(augment, seed), epochs,
                        validation_data)
    if initial_state is not None:
        training.load_state(initial_state)
    callbacks = list(callbacks)
    if not any(isinstance(c, DivergenceGuard) for c in callbacks):
        callbacks.insert(0, DivergenceGuard())
    if verbose and not any(isinstance(c, Progress) for c in callbacks):
        callbacks.append(Progress())
    callbacks.sort(key=lambda c: c.order)
    for callback in callbacks:
        callback.set_training(training)

    flushing = model.device == "cpu"
    previous = parallel.flush_denormals(True) if flushing else False
    try:
        # Overflow shows up as a non-finite loss, which the DivergenceGuard reports.
        with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
            _fit_epochs(training, callbacks)
    finally:
        if flushing:
            parallel.flush_denormals(previous)
    return training.history


def _fit_epochs(training: Training, callbacks) -> None:
    model, optimizer, batches = training.model, training.optimizer, training.batches
    runner = parallel.runner_for(model)
    xp = backend.xp_of(batches.t)
    fused_metrics = _labels_checked(model, batches.x, batches.t)
    started, wall_before = time.perf_counter(), training.wall_seconds
    _call(callbacks, "on_train_begin", {"epochs": training.epochs, "initial_epoch": training.epoch})
    for epoch in range(training.epoch + 1, training.epochs + 1):
        if training.stop_training:
            break
        _call(callbacks, "on_epoch_begin", epoch, {"batches": len(batches)})
        tic = time.perf_counter()
        totals = xp.zeros(2, dtype="float64")  # summed loss, hits: read every SYNC_EVERY steps
        seen, lr_sum, steps = 0, 0.0, 0
        for step, (xb, tb) in enumerate(batches, 1):
            if training.augmenter is not None:
                xb = training.augmenter(xb)
            if fused_metrics:
                scores, loss = runner.scores_and_loss(xb, tb, totals=totals, checked=True)
            else:
                scores, loss = runner.scores_and_loss(xb, tb)
                totals += xp.stack((loss * float(xb.shape[0]), (scores.argmax(axis=1) == tb).sum())).astype("float64")
            runner.backward()
            lr_sum += float(optimizer.lr) * float(optimizer.lr_factor)
            optimizer.step()
            if training.scheduler is not None:
                training.scheduler.step()
            n = int(xb.shape[0])
            seen, steps = seen + n, steps + 1
            logs = {"epoch": epoch, "size": n, "batch_loss": loss}
            if step % SYNC_EVERY == 0 or step == len(batches):
                loss_sum, correct = (float(v) for v in backend.to_numpy(totals))
                logs.update(loss=loss_sum / seen, acc=correct / seen)
            _call(callbacks, "on_batch_end", step, logs)
        backend.synchronize(model.device)
        seconds = time.perf_counter() - tic
        val_loss = val_acc = None
        if training.validation_data is not None:
            result = evaluate(model, training.validation_data)
            val_loss, val_acc = result["loss"], result["accuracy"]
        row = {"epoch": epoch, "train_loss": round(loss_sum / seen, 6),
               "train_acc": round(correct / seen, 6),
               "val_loss": None if val_loss is None else round(val_loss, 6),
               "val_acc": None if val_acc is None else round(val_acc, 6),
               "lr": float(f"{lr_sum / steps:.6g}"), "seconds": round(seconds, 3),
               "images_per_second": round(seen / seconds, 1) if seconds > 0 else None}
        training.epoch = epoch
        training.history.rows.append(row)
        training.wall_seconds = wall_before + (time.perf_counter() - started)
        _call(callbacks, "on_epoch_end", epoch, dict(row))
    _call(callbacks, "on_train_end", {"epoch": training.epoch, "stopped": training.history.stopped})


def evaluate_loss(model, x, t, batch_size: int = 1000) -> float | None:
    """Mean loss of ``model`` (inference mode) on ``x``, ``t``; None for no samples."""
    return evaluate(model, (x, t), batch_size=batch_size)["loss"]


def evaluate(model, data, batch_size: int = 1000, num_classes: int | None = None) -> dict:
    """The model's inference-mode results on ``data = (x, t)`` in batches of ``batch_size``:
    ``{"loss", "accuracy", "n", "per_class", "predicted", "confusion"}``.

    ``per_class``: the accuracy on each class index (None where it has no sample);
    ``predicted``: (N,) predicted class indices on the host; ``confusion``: (K, K) host
    counts, rows true class, columns predicted. ``loss`` and ``accuracy`` are None for N = 0.
    """
    x, t = data
    n = int(x.shape[0])
    runner = parallel.runner_for(model)
    loss_sum, preds = None, []
    for start in range(0, n, int(batch_size)):
        xb = model.as_input(x[start:start + batch_size])
        tb = backend.to_device(t[start:start + batch_size], model.device)
        scores = runner.predict(xb, train=False)
        part = cross_entropy(scores, tb) * float(xb.shape[0])
        loss_sum = part if loss_sum is None else loss_sum + part
        preds.append(scores.argmax(axis=1))  # on the device: one copy to the host below
    if num_classes is None:  # the scores' width, or the model's last bias without data
        num_classes = int(scores.shape[1]) if preds else _output_width(model)
    predicted = (backend.to_numpy(backend.xp_of(preds[0]).concatenate(preds)) if preds
                 else numpy.zeros(0, dtype=numpy.int64))
    truth = backend.to_numpy(t).astype(numpy.int64, copy=False)
    matrix = numpy.zeros((num_classes, num_classes), dtype=numpy.int64)
    numpy.add.at(matrix, (truth, predicted), 1)
    totals = matrix.sum(axis=1)
    per_class = [float(matrix[i, i]) / float(totals[i]) if totals[i] else None for i in range(num_classes)]
    return {"loss": float(loss_sum) / n if n else None,
            "accuracy": float((predicted == truth).mean()) if n else None,
            "n": n, "per_class": per_class, "predicted": predicted, "confusion": matrix}


__all__ = ["fit", "evaluate", "History", "Training", "METRICS", "build_schedule", "build_augmenter",
           "augment_seed", "crop_flip_seed"]
