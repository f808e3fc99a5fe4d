"""The trainer behind ``cnn-xp train``: epochs, metrics, checkpoints, plots, resume.

A run lives in one folder (RUN_DIR)::

    metrics.csv     epoch, train_loss, train_acc, val_loss, val_acc, seconds, images_per_second
    summary.json    model, dataset, device, hyperparameters, epochs, test_accuracy (0..1), ...
    checkpoint.npz  weights, optimizer state, epoch, RNG states (written atomically each epoch)
    curves.png      loss and accuracy per epoch
    filters.png     first-layer filters before and after training
    confusion.png   test confusion matrix

Resuming (``resume=True``) restores weights, optimizer state (parameter groups included),
the learning-rate schedule's step, the batch order RNG, the augmentation RNG and the dropout
RNGs at the last finished epoch, so on the CPU a run stopped after epoch k and resumed ends
bit-identical to an uninterrupted one.

A schedule is planned over ``schedule_epochs`` (default: the run's epochs, fixed when the run
starts), as PyTorch's ``T_max`` / ``total_steps``: stop after epoch 1 of a 3-epoch
schedule and resume with ``--epochs 3`` to finish it.

The folder stays true to what happened: temp files that a killed write left behind are
removed by the next run in it; a run that fails or is stopped before its first checkpoint
removes the folder it created; a stop (SIGINT, SIGTERM: :class:`Stopped`) ends in
:class:`RunInterrupted`, whose message suggests ``--resume`` only when a checkpoint exists.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy

from .. import backend, models, parallel, schedules
from . import plots, run_checkpoint
from ..atomic import remove_stale_temporaries, write_text
from ..augment import RandomAffine, check_strengths
from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..ops import cross_entropy
from ..optim import OPTIMIZERS, resolve_param_groups

METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_second")
CHECKPOINT = "checkpoint.npz"
SYNC_EVERY = 20  # batches between host reads of the running loss (progress bar + NaN check)


class UserError(ValueError):
    """A mistake in the user's request; the message is one line meant for the terminal."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Stopped(KeyboardInterrupt):
    """The process was asked to stop (``signal_name``: SIGINT, SIGTERM); the CLI raises it
    from its signal handlers. A plain KeyboardInterrupt counts as SIGINT."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name


class RunInterrupted(Exception):
    """A training run was stopped; the message says what was kept and how to go on."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal_name = signal_name


@dataclass
class TrainConfig:
    """One training run. ``None`` hyperparameters take the model's defaults (``models.MODELS``)."""

    model: str
    dataset: str = "mnist"
    device: str = "cpu"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    seed: int = 0
    data_dir: str | None = None
    out: str | None = None
    resume: bool = False
    val_size: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    dtype: str = "float32"
    download: bool = True
    progress: bool = True
    # per-parameter learning rates: [{"params": [patterns], "lr" or "lr_scale": x}] (cnn_xp.optim)
    lr_groups: list | None = None
    schedule: str | None = None  # constant, step, cosine, onecycle (cnn_xp.schedules)
    warmup_epochs: float | None = None
    schedule_epochs: int | None = None
    step_epochs: float | None = None
    gamma: float | None = None
    augment: dict | None = None  # cnn_xp.augment strengths; None with "augment" in explicit: off
    explicit: set = field(default_factory=set)  # names of hyperparameters the user gave


SCHEDULE_FLAGS = ("schedule", "warmup_epochs", "schedule_epochs", "step_epochs", "gamma")


def resolve_hyperparameters(cfg: TrainConfig) -> dict:
    """The model's defaults with the user's overrides, validated (UserError on a mistake)."""
    if cfg.model not in models.MODELS:
        raise UserError(f"unknown model {cfg.model!r}; choose one of {', '.join(models.MODELS)}")
    hp = models.MODELS[cfg.model].defaults()
    for key in ("optimizer", "lr", "batch_size", "epochs", "val_size"):
        value = getattr(cfg, key)
        if value is not None:
            hp[key] = value
    hp.update(seed=int(cfg.seed), dtype=cfg.dtype, limit_train=cfg.limit_train, limit_test=cfg.limit_test)
    hp["optimizer"] = str(hp["optimizer"]).lower()
    if cfg.lr_groups is not None:
        hp["lr_groups"] = [dict(g) for g in cfg.lr_groups]
    if "augment" in cfg.explicit or cfg.augment is not None:
        hp["augment"] = None if cfg.augment is None else dict(cfg.augment)
    hp["schedule"] = resolve_schedule(hp.get("schedule"), cfg, int(hp["epochs"]))
    validate_hyperparameters(hp)
    return hp


def resolve_schedule(default: dict | None, cfg: TrainConfig, epochs: int) -> dict | None:
    """The model's schedule with the user's schedule flags applied; None for none.

    The result is ``{"name", "epochs" (the horizon), "warmup_epochs", ...}``; naming another
    schedule than the model's drops the model's schedule options."""
    given = {key for key in SCHEDULE_FLAGS if getattr(cfg, key) is not None}
    sched = dict(default) if default else {"name": "constant"}
    if "schedule" in given and str(cfg.schedule).lower() != sched["name"]:
        sched = {"name": str(cfg.schedule).lower()}
    if sched["name"] not in schedules.SCHEDULES:
        raise UserError(f"unknown schedule {sched['name']!r}; choose one of {', '.join(schedules.SCHEDULES)}")
    for key in ("warmup_epochs", "step_epochs", "gamma"):
        if key in given:
            sched[key] = float(getattr(cfg, key))
    if "schedule_epochs" in given:
        sched["epochs"] = int(cfg.schedule_epochs)
    sched.setdefault("epochs", int(epochs))
    sched.setdefault("warmup_epochs", 0.0)
    if sched["name"] == "step":
        sched.setdefault("gamma", 0.1)
        if "step_epochs" not in sched:
            raise UserError("--schedule step needs --step-epochs N (the learning rate is multiplied by "
                            "--gamma every N epochs)")
    else:
        for key in ("step_epochs", "gamma"):
            if key in sched:
                raise UserError(f"--{key.replace('_', '-')} applies to --schedule step only, "
                                f"not to {sched['name']}")
    if sched["name"] == "constant" and not sched["warmup_epochs"]:
        return None
    return sched


def schedule_steps(sched: dict, steps_per_epoch: int) -> schedules.Schedule:
    """The :class:`cnn_xp.schedules.Schedule` of a resolved schedule dict, in steps."""
    kwargs = {"warmup_steps": int(round(float(sched["warmup_epochs"]) * steps_per_epoch))}
    if sched["name"] == "step":
        kwargs.update(step_size=max(1, int(round(float(sched["step_epochs"]) * steps_per_epoch))),
                      gamma=float(sched["gamma"]))
    for key in ("min_factor", "pct_start", "div_factor", "final_div_factor"):
        if key in sched:
            kwargs[key] = float(sched[key])
    return schedules.create(sched["name"], int(sched["epochs"]) * steps_per_epoch, **kwargs)


def augment_seed(seed: int) -> int:
    """The augmentation stream's seed: apart from the batch order's (which uses ``seed``)."""
    return int(numpy.random.SeedSequence([int(seed), 0x617567]).generate_state(1)[0])


def validate_hyperparameters(hp: dict) -> None:
    """UserError naming the flag of the first bad value in a resolved hyperparameter dict."""
    if hp["optimizer"] not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {hp['optimizer']!r}; choose one of {', '.join(OPTIMIZERS)}")
    for key in ("epochs", "batch_size"):
        if int(hp[key]) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be a positive integer, got {hp[key]}")
    if not (math.isfinite(float(hp["lr"])) and float(hp["lr"]) > 0):
        raise UserError(f"--lr must be a positive number, got {hp['lr']}")
    for key in ("val_size", "seed"):
        if int(hp[key]) < 0:
            raise UserError(f"--{key.replace('_', '-')} must be 0 or more, got {hp[key]}")
    for key in ("limit_train", "limit_test"):
        if hp[key] is not None and int(hp[key]) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be a positive integer, got {hp[key]}")
    if hp["dtype"] not in backend.FLOAT_DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(backend.FLOAT_DTYPES)}, got {hp['dtype']!r}")
    if hp.get("augment") is not None:
        try:
            check_strengths(hp["augment"])
        except ValueError as exc:
            raise UserError(f"--augment: {exc}") from None
    sched = hp.get("schedule")
    if sched is not None:
        if int(sched["epochs"]) < 1:
            raise UserError(f"--schedule-epochs must be a positive integer, got {sched['epochs']}")
        warmup = float(sched["warmup_epochs"])
        limit = int(sched["epochs"])
        if not (math.isfinite(warmup) and 0 <= warmup <= limit) or (sched["name"] == "onecycle" and warmup >= limit):
            raise UserError(f"--warmup-epochs must be in [0, {limit}{')' if sched['name'] == 'onecycle' else ']'} "
                            f"(the schedule's {limit} epochs), got {warmup:g}")
        if sched["name"] == "step" and not (float(sched["step_epochs"]) > 0 and 0 < float(sched["gamma"]) <= 1):
            raise UserError(f"--step-epochs must be positive and --gamma in (0, 1], got "
                            f"{sched['step_epochs']:g} and {sched['gamma']:g}")


def resume_conflicts(cfg: TrainConfig, hp: dict) -> list[tuple[str, object, object]]:
    """(flag, given, saved) for each learning-rate group, augmentation or schedule flag the
    user gave that differs from the run's resolved hyperparameters ``hp``."""
    conflicts = []
    if "lr_groups" in cfg.explicit and list(cfg.lr_groups or []) != list(hp.get("lr_groups") or []):
        conflicts.append(("--lr-group/--lr-scale", cfg.lr_groups, hp.get("lr_groups") or []))
    if "augment" in cfg.explicit and cfg.augment != hp.get("augment"):
        conflicts.append(("--augment", cfg.augment, hp.get("augment")))
    given = [key for key in SCHEDULE_FLAGS if getattr(cfg, key) is not None]
    if given:  # the flags, applied to the run's schedule, must leave it as it is
        try:
            requested = resolve_schedule(hp.get("schedule"), cfg, int(hp["epochs"]))
        except UserError as exc:
            requested = f"invalid ({exc})"
        if requested != hp.get("schedule"):
            flags = " ".join(f"--{key.replace('_', '-')} {getattr(cfg, key)}" for key in given)
            conflicts.append((flags, f"(schedule {requested})", hp.get("schedule")))
    return conflicts


def check_lr_groups(model_name: str, groups) -> None:
    """UserError (one line) unless every learning-rate group names parameters of the model."""
    if not groups:
        return
    names = [name for name, _, _ in models.build(model_name).params_and_grads()]
    try:
        resolve_param_groups(names, groups)
    except ValueError as exc:
        raise UserError(f"--lr-group/--lr-scale: {exc}") from None


def check_device(device: str) -> None:
    """UserError unless ``device`` is usable (the GPU reason comes from the backend)."""
    if device not in backend.DEVICES:
        raise UserError(f"unknown device {device!r}; choose one of {', '.join(backend.DEVICES)}")
    if device == "gpu":
        try:
            backend.cupy()
        except backend.GPUUnavailableError as exc:
            raise UserError(f"{exc}; `--device cpu` works on this machine") from None


def default_run_dir(model: str, dataset: str) -> Path:
    return Path("runs") / f"{model}-{dataset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def latest_run_dir(model: str, dataset: str) -> Path | None:
    """The newest ``runs/<model>-<dataset>-*`` folder holding a checkpoint."""
    found = sorted(p for p in Path("runs").glob(f"{model}-{dataset}-*") if (p / CHECKPOINT).is_file())
    return found[-1] if found else None


def prepare_run_dir(path: Path) -> list[Path]:
    """Create ``path`` and prove it writable (UserError otherwise); return the folders this
    created, outermost first (empty when ``path`` existed)."""
    created = [p for p in (path, *path.parents) if not p.exists()][::-1]
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(20, "not a folder")
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", suffix=".tmp", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot write there ({exc.strerror or exc})") from None
    return created


def remove_created_folders(created: list[Path]) -> None:
    """Undo :func:`prepare_run_dir` for a run that saved nothing: the folders it created
    go, innermost first, with any temp files in them; a folder holding anything else stays."""
    for folder in reversed(created):
        remove_stale_temporaries(folder)
        try:
            folder.rmdir()
        except OSError:
            return


def load_run_checkpoint(path) -> Checkpoint:
    """A checkpoint written by the trainer, validated against the schema of
    ``run_checkpoint`` (UserError naming the file and the field otherwise)."""
    return run_checkpoint.load_run_checkpoint(path, UserError)


def write_metrics(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
    write_text(path, buf.getvalue())


def package_versions(device: str) -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("cnn_xp", "numpy", "idx2numpy", "tqdm", "matplotlib", "pillow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if device == "gpu":
        versions["cupy"] = backend.cupy().__version__
    return versions


def evaluate_arrays(model, x, t, batch_size: int = 1000):
    """(mean loss, accuracy, predicted labels (N,) on the host) of device arrays x (N, ...), t (N,)."""
    n = int(x.shape[0])
    if n == 0:
        return None, None, numpy.zeros(0, dtype=numpy.int64)
    loss_sum, preds = None, []
    runner = parallel.BatchSlices(model) if model.device == "cpu" else model  # CPU: every core
    for start in range(0, n, batch_size):
        xb, tb = x[start:start + batch_size], t[start:start + batch_size]
        scores = runner.predict(xb, train=False)
        part = cross_entropy(scores, tb) * float(xb.shape[0])
        loss_sum = part if loss_sum is None else loss_sum + part
        preds.append(scores.argmax(axis=1))
    xp = backend.xp_of(x)
    predicted = backend.to_numpy(xp.concatenate(preds))
    truth = backend.to_numpy(t)
    return float(loss_sum) / n, float((predicted == truth).mean()), predicted


def confusion_matrix(truth, predicted, num_classes: int = models.NUM_CLASSES) -> numpy.ndarray:
    """(K, K) counts, rows true class, columns predicted class."""
    matrix = numpy.zeros((num_classes, num_classes), dtype=numpy.int64)
    numpy.add.at(matrix, (numpy.asarray(truth), numpy.asarray(predicted)), 1)
    return matrix


def per_class_accuracy(matrix: numpy.ndarray) -> list[float | None]:
    totals = matrix.sum(axis=1)
    return [float(matrix[i, i]) / float(totals[i]) if totals[i] else None for i in range(matrix.shape[0])]


def first_conv_weights(model):
    """Host copy of the first layer's W (out, in, kh, kw), or None if it is not a conv."""
    layer = model.layers[0]
    w = layer.params.get("W")
    if w is None or w.ndim != 4:
        return None
    return backend.to_numpy(w).copy()


def load_data(cfg: TrainConfig, hp: dict, out):
    """Host arrays (x_train, t_train, x_val, t_val, x_test, t_test, class_names)."""
    from ..data import load_dataset, to_float, train_val_split

    ds = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download, progress=cfg.progress)
    x, t = ds.train_images, ds.train_labels
    if hp["limit_train"] is not None:
        x, t = x[:hp["limit_train"]], t[:hp["limit_train"]]
    x_test, t_test = ds.test_images, ds.test_labels
    if hp["limit_test"] is not None:
        x_test, t_test = x_test[:hp["limit_test"]], t_test[:hp["limit_test"]]
    x, x_test = to_float(x, hp["dtype"]), to_float(x_test, hp["dtype"])
    val_size = int(hp["val_size"])
    if val_size >= x.shape[0]:
        raise UserError(f"--val-size {val_size} leaves no training images (only {x.shape[0]} available)")
    if val_size:
        x, t, x_val, t_val = train_val_split(x, t, val_size, seed=hp["split_seed"])
    else:
        x_val, t_val = x[:0], t[:0]
    print(f"data: {cfg.dataset} from {ds.folder}: {len(t)} train, {len(t_val)} validation, "
          f"{len(t_test)} test images", file=out)
    return x, t, x_val, t_val, x_test, t_test, list(ds.class_names)


def build_training(model_name: str, hp: dict, x_train, t_train, device: str):
    """The parts of a run of resolved hyperparameters ``hp``: (model, optimizer, batches,
    scheduler or None, augmenter or None), freshly seeded from ``hp["seed"]``. The trainer
    and ``cnn-xp bench --real`` both build their runs here."""
    from ..data import BatchIterator

    model = models.build(model_name, seed=hp["seed"], device=device, dtype=hp["dtype"])
    spec = models.MODELS[model_name]
    # The model's own optimizer settings (momentum, betas, ...) apply to its own optimizer only.
    optimizer_kwargs = spec.optimizer_kwargs if hp["optimizer"] == spec.optimizer.lower() else {}
    if hp.get("lr_groups"):
        optimizer_kwargs = {**optimizer_kwargs, "param_groups": hp["lr_groups"]}
    optimizer = OPTIMIZERS[hp["optimizer"]](model, lr=float(hp["lr"]), **optimizer_kwargs)
    batches = BatchIterator(x_train, t_train, hp["batch_size"], seed=hp["seed"], device=device)
    sched = hp.get("schedule")
    scheduler = None if sched is None else schedules.Scheduler(optimizer, schedule_steps(sched, len(batches)))
    strengths = hp.get("augment")
    augmenter = None if strengths is None else RandomAffine(**strengths, seed=augment_seed(hp["seed"]))
    return model, optimizer, batches, scheduler, augmenter


class Trainer:
    """Runs a :class:`TrainConfig`; :meth:`run` returns the summary dict."""

    def __init__(self, cfg: TrainConfig, out=None):
        self.cfg = cfg
        self.out = out if out is not None else sys.stdout

    # -- set-up ------------------------------------------------------------------------
    def _open_run(self):
        cfg = self.cfg
        check_device(cfg.device)
        if cfg.resume:
            run_dir = Path(cfg.out) if cfg.out else latest_run_dir(cfg.model, cfg.dataset)
            if run_dir is None or not (run_dir / CHECKPOINT).is_file():
                where = run_dir if run_dir is not None else f"runs/{cfg.model}-{cfg.dataset}-*"
                raise UserError(f"--resume: no {CHECKPOINT} in {where}")
            ckpt = load_run_checkpoint(run_dir / CHECKPOINT)
            hp = dict(ckpt.meta["hyperparameters"])
            if ckpt.meta["model"] != cfg.model or ckpt.meta["dataset"] != cfg.dataset:
                raise UserError(f"--resume: {run_dir} trained {ckpt.meta['model']} on {ckpt.meta['dataset']}, "
                                f"not {cfg.model} on {cfg.dataset}")
            structured = {"lr_groups", "augment", *SCHEDULE_FLAGS}
            for key in sorted(cfg.explicit - {"epochs"} - structured):
                if key in hp and getattr(cfg, key) != hp[key]:
                    raise UserError(f"--resume keeps the run's hyperparameters; --{key.replace('_', '-')} "
                                    f"{getattr(cfg, key)} differs from the run's {hp[key]}")
            for flag, given, saved in resume_conflicts(cfg, hp):
                raise UserError(f"--resume keeps the run's hyperparameters; {flag} {given} differs from the "
                                f"run's {saved}")
            done = int(ckpt.meta["epoch"])
            if cfg.epochs is not None and int(cfg.epochs) < done:
                raise UserError(f"--resume: {run_dir} has already trained {done} epochs, more than "
                                f"--epochs {cfg.epochs}; nothing was changed (pass --epochs N with N > {done} "
                                f"to train on)")
            if cfg.epochs is not None:
                hp["epochs"] = int(cfg.epochs)
            validate_hyperparameters(hp)
        else:
            hp = resolve_hyperparameters(cfg)
            check_lr_groups(cfg.model, hp["lr_groups"])
            run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.model, cfg.dataset)
            if (run_dir / CHECKPOINT).exists():
                raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
            ckpt = None
        self._created_folders = prepare_run_dir(run_dir)
        self._run_dir = run_dir
        remove_stale_temporaries(run_dir)  # left by a write that was killed in an earlier run
        return run_dir, hp, ckpt

    # -- the run -----------------------------------------------------------------------
    def run(self) -> dict:
        self._run_dir, self._created_folders, self._stage = None, [], "before training started"
        # CPU runs flush subnormal floats to zero on every computing thread (see
        # parallel.flush_denormals): dead units' decaying optimizer moments would otherwise
        # slow every later epoch. Restored when the run ends.
        flushing = self.cfg.device == "cpu"
        previous = parallel.flush_denormals(True) if flushing else False
        try:
            # Overflow shows up as a non-finite loss, which the epoch loop reports in one line.
            with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
                return self._run()
        except BaseException as exc:
            run_dir = self._run_dir
            saved = run_dir is not None and (run_dir / CHECKPOINT).is_file()
            if not saved:
                remove_created_folders(self._created_folders)  # nothing saved: leave no folder behind
            if isinstance(exc, KeyboardInterrupt) and run_dir is not None:
                raise self._interrupted(exc, run_dir, saved) from None
            raise
        finally:
            if flushing:
                parallel.flush_denormals(previous)

    def _interrupted(self, exc: KeyboardInterrupt, run_dir: Path, saved: bool) -> RunInterrupted:
        """The true account of a stopped run: what the folder holds and how to go on."""
        cfg = self.cfg
        signal_name = getattr(exc, "signal_name", "SIGINT")
        when = self._stage
        if not saved:
            kept = ("the run folder it had created was removed" if self._created_folders
                    else f"nothing was written to {run_dir}")
            return RunInterrupted(f"stopped by {signal_name} {when}; no epoch had finished, so no "
                                  f"checkpoint was saved and {kept}", signal_name)
        try:
            epoch = int(load_checkpoint(run_dir / CHECKPOINT).meta["epoch"])
            holds = f"holds epoch {epoch}"
        except Exception:  # the message must come out whatever the file holds
            holds = "is the last one saved"
        command = ["cnn-xp", "train", "--model", cfg.model, "--dataset", cfg.dataset]
        if cfg.data_dir:
            command += ["--data-dir", str(cfg.data_dir)]
        command += ["--resume", "--out", str(run_dir)]
        return RunInterrupted(f"stopped by {signal_name} {when}; {run_dir / CHECKPOINT} {holds}: continue "
                              f"with `{shlex.join(command)}`", signal_name)

    def _run(self) -> dict:
        cfg, out = self.cfg, self.out
        run_dir, hp, ckpt = self._open_run()
        x_tr, t_tr, x_val, t_val, x_test, t_test, class_names = load_data(cfg, hp, out)
        device = cfg.device
        model, optimizer, batches, scheduler, augmenter = build_training(cfg.model, hp, x_tr, t_tr, device)
        sched = hp.get("schedule")
        x_val, t_val = backend.to_device(x_val, device), backend.to_device(t_val, device)
        x_test, t_test = backend.to_device(x_test, device), backend.to_device(t_test, device)
        filters_before = first_conv_weights(model)
        history: list[dict] = []
        start_epoch, elapsed = 0, 0.0
        if ckpt is not None:
            model.load_state_dict(ckpt.model_state)
            optimizer.load_state_dict(ckpt.optimizer_state)
            batches.load_state_dict(ckpt.meta["rng"]["batches"])
            model.set_random_state(ckpt.meta["rng"]["model"])
            try:
                if augmenter is not None:
                    augmenter.load_state_dict(ckpt.meta["rng"]["augment"])
                if scheduler is not None:
                    scheduler.load_state_dict(ckpt.meta["schedule"])
            except (ValueError, TypeError, KeyError) as exc:
                raise UserError(f"{run_dir / CHECKPOINT}: {exc}") from None
            history = list(ckpt.meta["history"])
            start_epoch = int(ckpt.meta["epoch"])
            elapsed = float(ckpt.meta["wall_seconds"])
            filters_before = ckpt.extra.get("filters_before", filters_before)
            print(f"resuming {run_dir} after epoch {start_epoch}", file=out)
        extras = "".join(f"; {text}" for text in (
            ", ".join(f"lr {'x' if 'lr_scale' in g else ''}{g.get('lr_scale', g.get('lr')):g} for "
                      f"{','.join(g['patterns'])}" for g in optimizer.param_groups),
            "" if scheduler is None else f"schedule {sched['name']} over {sched['epochs']} epochs"
            + (f" ({sched['warmup_epochs']:g} of warm-up)" if sched["warmup_epochs"] else ""),
            "" if augmenter is None else f"augment {augmenter}") if text)
        print(f"model {cfg.model} ({model.num_params():,} parameters) on {device}, {hp['dtype']}; "
              f"{hp['optimizer']} lr {hp['lr']}, batch {hp['batch_size']}, epochs {hp['epochs']}{extras}; "
              f"run dir {run_dir}", file=out)
        n_train = batches.num_samples
        started = time.perf_counter()
        for epoch in range(start_epoch + 1, int(hp["epochs"]) + 1):
            self._stage = f"during epoch {epoch}"
            tic = time.perf_counter()
            train_loss, train_acc = self._train_epoch(model, optimizer, batches, epoch, hp, run_dir,
                                                      scheduler, augmenter)
            backend.synchronize(device)
            seconds = time.perf_counter() - tic
            val_loss, val_acc, _ = evaluate_arrays(model, x_val, t_val)
            row = {"epoch": epoch, "train_loss": round(train_loss, 6), "train_acc": round(train_acc, 6),
                   "val_loss": None if val_loss is None else round(val_loss, 6),
                   "val_acc": None if val_acc is None else round(val_acc, 6),
                   "seconds": round(seconds, 3), "images_per_second": round(n_train / seconds, 1)}
            history.append(row)
            val_text = "" if val_acc is None else f"  val loss {val_loss:.4f} acc {val_acc:.4f}"
            print(f"epoch {epoch}/{hp['epochs']}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
                  f"{val_text}  {seconds:.1f}s  {row['images_per_second']:.0f} img/s", file=out, flush=True)
            meta = {"model": cfg.model, "dataset": cfg.dataset, "device": device, "epoch": epoch,
                    "hyperparameters": hp, "class_names": class_names, "history": history,
                    "wall_seconds": elapsed + (time.perf_counter() - started),
                    "rng": {"batches": batches.state_dict(), "model": model.random_state()}}
            if augmenter is not None:
                meta["rng"]["augment"] = augmenter.state_dict()
            if scheduler is not None:
                meta["schedule"] = scheduler.state_dict()
            extra = {} if filters_before is None else {"filters_before": filters_before}
            save_checkpoint(run_dir / CHECKPOINT, Checkpoint(meta=meta, model_state=model.state_dict(),
                                                             optimizer_state=optimizer.state_dict(), extra=extra))
            self._stage = f"after epoch {epoch}"
            write_metrics(run_dir / "metrics.csv", history)
        self._stage = "while writing the results"
        wall = elapsed + (time.perf_counter() - started)
        return self._finish(run_dir, hp, model, history, class_names, x_test, t_test, filters_before, wall)

    def _train_epoch(self, model, optimizer, batches, epoch: int, hp: dict, run_dir: Path,
                     scheduler=None, augmenter=None) -> tuple[float, float]:
        """One pass over ``batches``: (mean training loss, training accuracy), each batch
        distorted by ``augmenter`` and each step followed by ``scheduler.step()`` when given.
        The sums stay on the device; the host reads them every SYNC_EVERY batches (progress
        bar, divergence)."""
        from tqdm import tqdm

        loss_sum = correct = None
        seen = 0
        bar = tqdm(batches, total=len(batches), desc=f"epoch {epoch}/{hp['epochs']}", unit="batch",
                   leave=False, disable=not self.cfg.progress, file=sys.stderr, dynamic_ncols=True)
        runner = parallel.BatchSlices(model) if model.device == "cpu" else model  # CPU: every core
        for step, (xb, tb) in enumerate(bar, 1):
            if augmenter is not None:
                xb = augmenter(xb)
            scores, loss = runner.scores_and_loss(xb, tb)
            runner.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            n = int(xb.shape[0])
            seen += n
            batch_loss = loss * float(n)
            hits = (scores.argmax(axis=1) == tb).sum()
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            correct = hits if correct is None else correct + hits
            if step % SYNC_EVERY == 0 or step == len(batches):
                running = float(loss_sum) / seen
                if not math.isfinite(running):
                    bar.close()
                    raise TrainingDiverged(
                        f"the training loss became {running} in epoch {epoch} (batch {step}); "
                        f"learning rate {hp['lr']} is too large: try a smaller --lr, e.g. "
                        f"{float(hp['lr']) / 10:g} (the last good weights are in {run_dir / CHECKPOINT} "
                        f"if an epoch finished)")
                bar.set_postfix(loss=f"{running:.4f}", acc=f"{int(correct) / seen:.4f}", refresh=False)
        bar.close()
        return float(loss_sum) / seen, int(correct) / seen

    def _finish(self, run_dir, hp, model, history, class_names, x_test, t_test, filters_before, wall) -> dict:
        cfg, out = self.cfg, self.out
        test_loss, test_acc, predicted = evaluate_arrays(model, x_test, t_test)
        matrix = confusion_matrix(backend.to_numpy(t_test), predicted, len(class_names))
        title = f"{cfg.model} on {cfg.dataset}"
        write_metrics(run_dir / "metrics.csv", history)
        if history:
            plots.plot_curves(history, run_dir / "curves.png", title=title)
        if filters_before is not None:
            plots.plot_filters(filters_before, first_conv_weights(model), run_dir / "filters.png")
        plots.plot_confusion(matrix, run_dir / "confusion.png", class_names,
                             title=f"{title}: test accuracy {test_acc:.4f}")
        train_seconds = sum(float(r["seconds"]) for r in history)
        summary = {
            "model": cfg.model, "dataset": cfg.dataset, "device": cfg.device,
            "hyperparameters": hp, "epochs": len(history),
            "test_accuracy": test_acc, "test_loss": test_loss,
            "test_images": int(t_test.shape[0]), "per_class_accuracy": dict(zip(class_names, per_class_accuracy(matrix))),
            "wall_seconds": round(wall, 3), "train_seconds": round(train_seconds, 3),
            "seconds_per_epoch": round(train_seconds / len(history), 3) if history else None,
            "parameters": model.num_params(), "run_dir": str(run_dir),
            "finished": datetime.now().isoformat(timespec="seconds"),
            "versions": package_versions(cfg.device),
        }
        write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        print(f"results in {run_dir}", file=out)
        print(f"test accuracy: {test_acc:.4f} ({int(round(test_acc * len(predicted)))}/{len(predicted)}), "
              f"test loss {test_loss:.4f}", file=out, flush=True)
        return summary


def train(cfg: TrainConfig, out=None) -> dict:
    """Run one training configuration; returns the summary written to summary.json."""
    return Trainer(cfg, out).run()


__all__ = ["TrainConfig", "Trainer", "train", "UserError", "TrainingDiverged", "Stopped", "RunInterrupted",
           "evaluate_arrays", "confusion_matrix", "per_class_accuracy", "METRIC_COLUMNS"]
