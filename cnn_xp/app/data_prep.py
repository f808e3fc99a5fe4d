"""A recipe's data: the training, validation and test arrays a run trains and tests on.

The recipe's limits apply first (the first ``limit_train`` / ``limit_test`` images), then
``val_size`` training images are held out (a seeded split, ``split_seed``). A zoo default
validation size counts images of the full 60,000 (``models.ModelSpec.val_size``); with
fewer training images (``--limit-train``, or a smaller data set in ``--data-dir``) it is
scaled down with them (a recipe that holds 10,000 of 60,000 images out holds 1,000 of
6,000 out), and the data line says so; an explicit ``--val-size`` that leaves no training
image is an error saying what to pass. A recipe that holds nothing out is validated on the
test set, and the run says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

ZOO_TRAIN_IMAGES = 60_000  # the training set a zoo entry's val_size is a count of

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
    scaled_from: int | None = None  # the zoo's val_size, when it was scaled down to the images used

    def describe(self) -> str:
        val = (f"{len(self.t_val)} validation" if self.validation == "held-out"
               else "validation on the test set (the recipe holds no images out; --val-size N holds N out)")
        if self.scaled_from is not None:
            val += (f" (the model's {self.scaled_from:,} of {ZOO_TRAIN_IMAGES:,} scaled down in proportion; "
                    f"--val-size N holds N out)")
        return (f"data: {self.recipe.dataset} from {self.folder}: {len(self.t_train)} train, {val}, "
                f"{len(self.t_test)} test images")


def check_data_dir(data_dir) -> None:
    """ConfigError unless ``data_dir`` (when given) is an existing folder: only ``cnn-xp
    download`` creates one."""
    if data_dir is None:
        return
    if not Path(data_dir).is_dir():
        what = "is not a folder" if Path(data_dir).exists() else "does not exist"
        raise ConfigError(f"--data-dir {data_dir} {what} (`cnn-xp download NAME --data-dir {data_dir}` creates "
                          f"it and downloads into it)")


def load_test_data(dataset: str, data_dir, dtype: str, *, download: bool = True, limit: int | None = None,
                   progress: bool = True):
    """(x_test float, t_test, class names, folder) of a data set, for ``evaluate``."""
    from ..data import load_dataset, to_float

    check_data_dir(data_dir)
    ds = load_dataset(dataset, data_dir, download=download, progress=progress)
    x, t = ds.test_images, ds.test_labels
    if limit is not None:
        x, t = x[:limit], t[:limit]
    return to_float(x, dtype), t, list(ds.class_names), ds.folder


def prepare_data(recipe, *, explicit=frozenset(), download: bool = True, progress: bool = True) -> RunData:
    """The :class:`RunData` of ``recipe``; ``explicit``: the recipe fields the user gave
    (an explicit ``val_size`` is never scaled)."""
    from ..data import load_dataset, to_float, train_val_split

    check_data_dir(recipe.data_dir)
    ds = load_dataset(recipe.dataset, recipe.data_dir, download=download, progress=progress)
    x, t = ds.train_images, ds.train_labels
    full = int(x.shape[0])
    if recipe.limit_train is not None:
        x, t = x[:recipe.limit_train], t[:recipe.limit_train]
    x_test, t_test = ds.test_images, ds.test_labels
    if recipe.limit_test is not None:
        x_test, t_test = x_test[:recipe.limit_test], t_test[:recipe.limit_test]
    n, val_size, scaled_from = int(x.shape[0]), int(recipe.val_size), None
    reference = max(full, ZOO_TRAIN_IMAGES)
    if val_size and n < reference and "val_size" not in explicit:
        scaled_from, val_size = val_size, max(1, round(val_size * n / reference))
        recipe = recipe.replace(val_size=val_size)
    if val_size >= n:
        raise ConfigError(f"--val-size {val_size} leaves no training images (only {n} available); pass "
                          f"--val-size N with N < {n}, or 0 to validate on the test set")
    x, x_test = to_float(x, recipe.dtype), to_float(x_test, recipe.dtype)
    if val_size:
        x, t, x_val, t_val = train_val_split(x, t, val_size, seed=recipe.split_seed)
        validation = "held-out"
    else:
        x_val, t_val, validation = x_test, t_test, "test"
    return RunData(recipe, x, t, x_val, t_val, x_test, t_test, list(ds.class_names), ds.folder, validation,
                   scaled_from)


__all__ = ["RunData", "prepare_data", "load_test_data", "check_data_dir"]
