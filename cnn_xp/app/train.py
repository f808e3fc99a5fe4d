"""``cnn-xp train``: a recipe trained through ``cnn_xp.fit`` in a run folder (``run_folder``).

A new run resolves its recipe (the zoo entry's defaults and the flags given), takes the
run folder's lock and trains; ``--resume RUN`` needs nothing more: the model, data, data
dir and recipe come from RUN's checkpoint. With ``--epochs N`` past a finished schedule's
horizon the schedule is re-planned over N epochs, continuing at the step it reached, and
one line says so. Of the other recipe flags, ``--data-dir`` is applied on resume and
recorded; any other that differs from the run's is refused in one line.

On the CPU an unchanged resume ends bit-identical to a run that never stopped (weights,
optimizer state, batch order, augmentation, dropout and schedule are all restored).

A stop (SIGINT, SIGTERM: :class:`Stopped`) ends in :class:`RunInterrupted`, whose message
says what the folder holds and suggests ``--resume`` only when a checkpoint exists; a
diverged run names the last healthy checkpoint, if one was saved.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import backend
from ..callbacks import Callback, Checkpoint, MetricsCSV, Progress
from ..errors import ConfigError, TrainingDiverged, WriteError
from ..recipe import Recipe, flag_of, recipe_fields
from ..training import fit
from .data_prep import prepare_data
from .results import first_conv_weights, write_results
from .run_folder import RunFolder, default_run_dir, latest_run_dir


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
class TrainRequest:
    """``cnn-xp train`` as asked: the recipe fields given (``overrides``), and how to run."""

    overrides: dict = field(default_factory=dict)
    resume: str | None = None  # a run folder, or "latest"
    out: str | None = None
    device: str = "cpu"
    download: bool = True
    progress: bool = True


def check_device(device: str) -> None:
    """ConfigError/DeviceError unless ``device`` is usable (the GPU reason from the backend)."""
    if device not in backend.DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(backend.DEVICES)}, got {device!r}")
    if device == "gpu":
        try:
            backend.cupy()
        except backend.GPUUnavailableError as exc:
            raise backend.GPUUnavailableError(f"{exc}; `--device cpu` works on this machine") from None


def load_run_checkpoint(path):
    """A run checkpoint read and validated (``run_checkpoint``'s schema)."""
    from .run_checkpoint import load_run_checkpoint as load

    return load(path)


def absolute_paths(overrides: dict) -> dict:
    """``overrides`` with its data folder and ``folder:PATH`` data set made absolute, so the
    run folder names its data wherever it is resumed from."""
    out = dict(overrides)
    if out.get("data_dir") is not None:
        out["data_dir"] = str(Path(out["data_dir"]).expanduser().resolve())
    if str(out.get("dataset", "")).startswith("folder:"):
        out["dataset"] = "folder:" + str(Path(out["dataset"][len("folder:"):]).expanduser().resolve())
    return out


def resumed_recipe(saved: Recipe, overrides: dict, done: int, out, run_dir="the run") -> Recipe:
    """The run's recipe with the flags given on ``--resume`` applied or refused (see the
    module docstring), its schedule re-planned when the new epochs pass its horizon."""
    apply = {f.name for f in recipe_fields() if f.metadata["on_resume"] == "apply"}
    changes = {}
    for key, value in overrides.items():
        if key == "augment" and value == "none":
            value = None
        current = getattr(saved, key)
        if key == "lr_groups":
            value = tuple(value)
        if value == current:
            continue
        if key not in apply:
            flag = flag_of(key)
            raise ConfigError(f"--resume continues the run's recipe; {flag} {value} differs from the run's "
                              f"{current} (start a new run to change it)")
        changes[key] = value
    epochs = changes.get("epochs", saved.epochs)
    if epochs < done:
        raise ConfigError(f"--resume: {run_dir} has already trained {done} epochs, more than --epochs {epochs}; "
                          f"nothing was changed (pass --epochs N with N > {done} to train on)")
    horizon = saved.schedule_epochs or saved.epochs
    if saved.schedule != "constant" and epochs > horizon:
        changes["schedule_epochs"] = epochs
        new = f"epoch {epochs} trains" if epochs == done + 1 else f"epochs {done + 1}-{epochs} train"
        print(f"schedule: the {saved.schedule} schedule was planned over {horizon} epochs; re-planned over "
              f"{epochs}, continuing from the step it reached, so {new} at a live learning rate", file=out)
    return saved.replace(**changes) if changes else saved


class _Stage(Callback):
    """Keeps the words for where a stop found the run: "during epoch N" from the start of
    an epoch (``order`` first), "after epoch N" once its checkpoint is saved (``order`` after
    Checkpoint): two instances, one for each."""

    def __init__(self, trainer, order: int):
        self.trainer, self.order = trainer, order

    def on_epoch_begin(self, epoch, logs):
        if self.order < 0:
            self.trainer.stage = f"during epoch {epoch}"

    def on_epoch_end(self, epoch, logs):
        if self.order > 0:
            self.trainer.stage = f"after epoch {epoch}"


class Trainer:
    """Runs a :class:`TrainRequest`; :meth:`run` returns the summary written to summary.json."""

    def __init__(self, request: TrainRequest, out=None):
        self.request = request
        self.out = out if out is not None else sys.stdout
        self.folder: RunFolder | None = None
        self.stage = "before training started"
        self.checkpointer: Checkpoint | None = None

    def _open(self):
        """(recipe, checkpoint or None): the folder locked, the recipe resolved."""
        req = self.request
        if req.resume is None:
            overrides = dict(req.overrides)
            model = overrides.pop("model", None)
            if model is None:
                raise ConfigError("--model is required (or --resume RUN to continue a run)")
            recipe = Recipe.create(model, **absolute_paths(overrides))
            self.folder = RunFolder(req.out or default_run_dir(recipe.model, recipe.dataset)).open()
            if self.folder.checkpoint.exists():
                raise ConfigError(f"{self.folder.path} already holds a run; `cnn-xp train --resume "
                                  f"{self.folder.path}` continues it, or choose another --out")
            return recipe, None
        if req.resume == "latest":  # --resume alone: the run in --out, else the newest under runs/
            run_dir = Path(req.out) if req.out is not None else latest_run_dir()
        else:
            run_dir = Path(req.resume)
            if req.out is not None and Path(req.out) != run_dir:
                raise ConfigError(f"--resume {run_dir} continues that run in its own folder; drop --out {req.out}")
        if run_dir is None:
            raise ConfigError("--resume: no run with a checkpoint in runs/; name the run folder: --resume RUN")
        if not (run_dir / "checkpoint.npz").is_file():
            raise ConfigError(f"--resume: no checkpoint.npz in {run_dir}")
        self.folder = RunFolder(run_dir).open()
        ckpt = load_run_checkpoint(self.folder.checkpoint)
        saved = Recipe.from_dict(ckpt.meta["recipe"], where=f"{self.folder.checkpoint}: recipe")
        recipe = resumed_recipe(saved, absolute_paths(req.overrides), int(ckpt.meta["epoch"]), self.out, run_dir)
        return recipe, ckpt

    def run(self) -> dict:
        check_device(self.request.device)
        try:
            return self._run()
        except BaseException as exc:
            if self.folder is None:
                raise
            saved = self.folder.checkpoint.is_file()
            self.folder.close(saved)
            if isinstance(exc, KeyboardInterrupt):
                raise self._interrupted(exc, saved) from None
            if isinstance(exc, TrainingDiverged):
                raise TrainingDiverged(f"{exc}; {self._kept()}") from None
            if isinstance(exc, WriteError) and saved and "intact" not in str(exc):
                raise WriteError(f"{exc}; {self._kept()}") from None
            raise

    def _kept(self) -> str:
        """What the folder holds, for a message about a run that ended early."""
        folder = self.folder
        epoch = None if self.checkpointer is None else self.checkpointer.last_saved
        if not folder.checkpoint.is_file():
            return "no checkpoint was saved"
        held = f"epoch {epoch}" if epoch is not None else "the last epoch saved"
        return f"{folder.checkpoint} holds {held} with healthy weights"

    def _interrupted(self, exc: KeyboardInterrupt, saved: bool) -> RunInterrupted:
        signal_name = getattr(exc, "signal_name", "SIGINT")
        if not saved:
            kept = ("the run folder it had created was removed" if self.folder.created
                    else f"nothing was written to {self.folder.path}")
            return RunInterrupted(f"stopped by {signal_name} {self.stage}; no epoch had finished, so no "
                                  f"checkpoint was saved and {kept}", signal_name)
        command = shlex.join(["cnn-xp", "train", "--resume", str(self.folder.path)])
        epoch = None if self.checkpointer is None else self.checkpointer.last_saved
        holds = f"holds epoch {epoch}" if epoch is not None else "is the last one saved"
        return RunInterrupted(f"stopped by {signal_name} {self.stage}; {self.folder.checkpoint} {holds}: "
                              f"continue with `{command}`", signal_name)

    def _run(self) -> dict:
        req, out = self.request, self.out
        recipe, ckpt = self._open()
        explicit = frozenset(req.overrides) if ckpt is None else frozenset(f.name for f in recipe_fields())
        data = prepare_data(recipe, explicit=explicit, download=req.download,
                            progress=req.progress and sys.stderr.isatty())  # download bars: a terminal only
        recipe = data.recipe
        print(data.describe(), file=out)
        model = recipe.build_model(req.device, data.description)
        optimizer = recipe.build_optimizer(model)
        initial_state, filters_before = None, first_conv_weights(model)
        if ckpt is not None:
            model.load_state_dict(ckpt.model_state)
            optimizer.load_state_dict(ckpt.optimizer_state)
            initial_state = {k: ckpt.meta[k] for k in ("epoch", "history", "wall_seconds", "rng", "schedule")
                             if k in ckpt.meta}
            filters_before = ckpt.extra.get("filters_before", filters_before)
            print(f"resuming {self.folder.path} after epoch {ckpt.meta['epoch']} of {recipe.epochs}", file=out)
        print(f"model {recipe.model} ({model.num_params():,} parameters) on {req.device}, {recipe.dtype}: "
              f"{recipe.describe()}; run folder {self.folder.path}", file=out)
        if ckpt is None:
            print(f"training {recipe.epochs} epochs (--epochs N to change)", file=out, flush=True)
        meta = {"model": recipe.model, "dataset": recipe.dataset, "device": req.device, "recipe": recipe.to_dict(),
                "class_names": data.class_names, "input_shape": list(model.input_shape),
                "data": data.description.to_dict(), "validation": data.validation}
        self.checkpointer = Checkpoint(self.folder.checkpoint, best_path=self.folder.best, monitor="val_acc",
                                       meta=meta, extra={} if filters_before is None else
                                       {"filters_before": filters_before})
        callbacks = [self.checkpointer, MetricsCSV(self.folder.path / "metrics.csv"), _Stage(self, -150),
                     _Stage(self, 55),
                     Progress(out=out, bar=None if req.progress else False)]
        history = fit(model, optimizer, (data.x_train, data.t_train), epochs=recipe.epochs,
                      batch_size=recipe.batch_size, validation_data=(data.x_val, data.t_val),
                      schedule=recipe.schedule_spec(), augment=recipe.augment, callbacks=callbacks,
                      seed=recipe.seed, initial_state=initial_state)
        self.stage = "while writing the results"
        summary = write_results(self.folder.path, recipe, model, history.rows, data, filters_before,
                                device=req.device, wall_seconds=self.checkpointer.training.wall_seconds)
        self.folder.close(saved=True)
        print(f"results in {self.folder.path}", file=out)
        print(f"test accuracy: {summary['test_accuracy']:.4f} ({summary['test_correct']}/{summary['test_images']}), "
              f"test loss {summary['test_loss']:.4f}", file=out, flush=True)
        return summary


def train(request: TrainRequest, out=None) -> dict:
    """Run one ``cnn-xp train`` request; returns the summary written to summary.json."""
    return Trainer(request, out).run()


__all__ = ["TrainRequest", "Trainer", "train", "Stopped", "RunInterrupted", "check_device", "resumed_recipe"]
