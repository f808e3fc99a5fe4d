"""What the trainer's tests share: a tiny IDX data set, an isolated working folder (and,
with ``offline``, no data from anywhere else), ``train(...)``, the ``cnn-xp train``
command on them, ``no_plots`` (runs draw nothing) and ``BlowUp`` (a callback making the
weights finite but useless). Import the fixtures into a test module (``from train_helpers
import data_dir, isolated, train``) to use them there."""
import dataclasses

import numpy as np
import pytest

from cnn_xp.app import cli
from cnn_xp.callbacks import Callback
from cnn_xp.data import sources
from tiny_idx import write_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny") / "data", n_train=200, n_test=100)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test runs in its own folder, with its own cache and no CNN_XP_DATA."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNN_XP_DATA", raising=False)


@pytest.fixture
def offline(isolated, monkeypatch):
    """``isolated``, and nothing found elsewhere: the MNIST mirror is a closed local port and
    no system data folder is searched."""
    monkeypatch.setenv("CNN_XP_MIRRORS_MNIST", "http://127.0.0.1:9/")  # nothing answers
    for name, spec in list(sources.DATASETS.items()):
        monkeypatch.setitem(sources.DATASETS, name, dataclasses.replace(spec, system_dirs=()))


def train(data_dir, out, *extra, model="simple_convnet"):
    """``cnn-xp train`` of ``model`` on ``data_dir`` into ``out``; the exit status."""
    argv = ["train", "--model", model, "--dataset", "mnist", "--data-dir", data_dir, "--out", str(out),
            "--no-download", "--no-progress", *extra]
    return cli.main(argv)


def trained_checkpoint(data_dir, out, model, epochs):
    """A run of ``model`` for ``epochs`` epochs into ``out`` without its plots; its
    checkpoint's path (for module-scoped fixtures: no per-test monkeypatch)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        skip_plots(monkeypatch)
        assert train(data_dir, out, "--epochs", str(epochs), model=model) == 0
    return out / "checkpoint.npz"


def skip_plots(monkeypatch):
    """Runs skip drawing curves.png, filters.png and confusion.png (most of a tiny run's
    time), for tests about anything else."""
    from cnn_xp.app import plots

    for name in ("plot_curves", "plot_filters", "plot_confusion"):
        monkeypatch.setattr(plots, name, lambda *args, **kwargs: None)


@pytest.fixture
def no_plots(monkeypatch):
    skip_plots(monkeypatch)


class BlowUp(Callback):
    """After the last batch of epoch ``epoch`` (its running loss already read, finite), every
    weight is multiplied by 1e35: still finite in float32, but the scores overflow, so the
    weights give a NaN/inf loss."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_batch_end(self, batch, logs):
        if logs["epoch"] == self.epoch and batch == len(self.training.batches):
            for _, layer, key in self.training.model.params_and_grads():
                layer.params[key][...] = layer.params[key] * np.float32(1e35)
