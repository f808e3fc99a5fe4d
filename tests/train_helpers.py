"""What the trainer's tests share: a tiny IDX data set, an isolated working folder (and,
with ``offline``, no data from anywhere else), and ``train(...)``, the ``cnn-xp train``
command on them. Import the fixtures into a test module (``from train_helpers import
data_dir, isolated, train``) to use them there."""
import dataclasses

import pytest

from cnn_xp.app import cli
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
