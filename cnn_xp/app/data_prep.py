"""A recipe's data: the training, validation and test arrays a run trains and tests on.

The recipe's limits apply first (the first ``limit_train`` / ``limit_test`` images), then
``val_size`` training images are held out (a seeded split, ``split_seed``). A zoo entry's
validation size counts MNIST's 60,000 training images; on a subset or on other data it is
scaled to the same fraction (a recipe that holds 10,000 of 60,000 images out holds 1,000 of
6,000 out); an explicit ``--val-size`` that leaves no training image is an error saying
what to pass. Likewise a zoo entry's epochs count passes over MNIST's 60,000 images: on a
data set of another size (not a subset) the default becomes as many images seen, at most
``MAX_EPOCH_SCALE`` times the entry's epochs (an explicit ``--epochs`` is kept). A recipe that holds
nothing out is validated on the test set, and the run says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..models import MODELS

MAX_EPOCH_SCALE = 20


@dataclass
class RunData:
    """Host arrays of a run, its (possibly adjusted) recipe, and what to say about them."""

    recipe: object
    x_train: object
    t_train: object
    x_val: object
    t_val: object
    x_test: object
    t_test: object
    class_names: list
    folder: Path
    validation: str  # "held-out" or "test"
    notes: list = None  # what the data changed in the recipe, one line each
    description: object = None  # the data's DataDescription (shape, classes, normalisation)
    skipped: int = 0  # unreadable files a folder data set passed over (--skip-bad)
    scaled_from: int | None = None  # the zoo's val_size, when it was scaled to the images used

    def describe(self) -> str:
        val = (f"{len(self.t_val)} validation" if self.validation == "held-out"
               else "validation on the test set (the recipe holds no images out; --val-size N holds N out)")
        if self.scaled_from is not None:
            val += (f" (the model's {self.scaled_from:,} of {MODELS[self.recipe.model].data_size:,} scaled in "
                    f"proportion; --val-size N holds N out)")
        shape = "x".join(map(str, self.description.input_shape))
        skipped = f"; {self.skipped} unreadable files skipped" if self.skipped else ""
        line = (f"data: {self.recipe.dataset} from {self.folder}: {len(self.t_train)} train, {val}, "
                f"{len(self.t_test)} test images of {shape}, {len(self.class_names)} classes{skipped}")
        return "\n".join([line, *(self.notes or [])])


def check_data_dir(data_dir) -> None:
    """ConfigError unless ``data_dir`` (when given) is an existing folder: only ``cnn-xp
    download`` creates one."""
    if data_dir is None:
        return
    if not Path(data_dir).is_dir():
        what = "is not a folder" if Path(data_dir).exists() else "does not exist"
        raise ConfigError(f"--data-dir {data_dir} {what} (`cnn-xp download NAME --data-dir {data_dir}` creates "
                          f"it and downloads into it)")


def load_test_data(dataset: str, data_dir, dtype: str, *, description=None, options=None, download: bool = True,
                   limit: int | None = None, progress: bool = True):
    """(x_test, t_test, class names, folder) of a data set, for ``evaluate``: normalised as
    ``description`` (the checkpoint's) says, loaded with the recipe's data ``options``."""
    from ..data import load_data, to_input

    check_data_dir(data_dir)
    ds = load_data(dataset, data_dir, download=download, progress=progress, **(options or {}))
    x, t = ds.test_images, ds.test_labels
    if limit is not None:
        x, t = x[:limit], t[:limit]
    norm = (description or ds.description).normalization
    return to_input(x, norm, dtype), t, list(ds.class_names), ds.folder


def prepare_data(recipe, *, explicit=frozenset(), download: bool = True, progress: bool = True) -> RunData:
    """The :class:`RunData` of ``recipe``; ``explicit``: the recipe fields the user gave
    (an explicit ``val_size`` is never scaled)."""
    from ..data import load_data, to_input, train_val_split

    check_data_dir(recipe.data_dir)
    ds = load_data(recipe.dataset, recipe.data_dir, download=download, progress=progress, **recipe.data_options())
    x, t = ds.train_images, ds.train_labels
    notes = []
    full, size = int(x.shape[0]), MODELS[recipe.model].data_size
    if full != size and "epochs" not in explicit:
        epochs = min(recipe.epochs * MAX_EPOCH_SCALE, max(1, round(recipe.epochs * size / full)))
        if epochs != recipe.epochs:
            factor = epochs / recipe.epochs
            changes = {"epochs": epochs}
            if recipe.schedule_epochs == recipe.epochs:
                changes["schedule_epochs"] = epochs
            if recipe.milestones is not None and "milestones" not in explicit:
                changes["milestones"] = tuple(sorted({max(1, round(m * factor)) for m in recipe.milestones}))
            notes.append(f"epochs: {epochs}, as many images seen as {recipe.model}'s {recipe.epochs} epochs of "
                         f"{size:,} images (at most {MAX_EPOCH_SCALE}x); --epochs N to change")
            recipe = recipe.replace(**changes)
    if recipe.limit_train is not None:
        x, t = x[:recipe.limit_train], t[:recipe.limit_train]
    x_test, t_test = ds.test_images, ds.test_labels
    if recipe.limit_test is not None:
        x_test, t_test = x_test[:recipe.limit_test], t_test[:recipe.limit_test]
    n, val_size, scaled_from = int(x.shape[0]), int(recipe.val_size), None
    if val_size and n != size and "val_size" not in explicit:
        scaled_from, val_size = val_size, max(1, round(val_size * n / size))
        recipe = recipe.replace(val_size=val_size)
    if val_size >= n:
        raise ConfigError(f"--val-size {val_size} leaves no training images (only {n} available); pass "
                          f"--val-size N with N < {n}, or 0 to validate on the test set")
    norm = ds.description.normalization
    x, x_test = to_input(x, norm, recipe.dtype), to_input(x_test, norm, recipe.dtype)
    if val_size:
        x, t, x_val, t_val = train_val_split(x, t, val_size, seed=recipe.split_seed)
        validation = "held-out"
    else:
        x_val, t_val, validation = x_test, t_test, "test"
    return RunData(recipe, x, t, x_val, t_val, x_test, t_test, list(ds.class_names), ds.folder, validation,
                   notes, ds.description, int(getattr(ds, "skipped", 0)), scaled_from)


__all__ = ["RunData", "prepare_data", "load_test_data", "check_data_dir"]
