"""What the trainer's tests share: a tiny IDX data set, an isolated working folder, and
``train(...)``, the ``cnn-xp train`` command on them. Import the fixtures into a test module
(``from train_helpers import data_dir, isolated, train``) to use them there."""
import pytest

from cnn_xp.app import cli
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


def train(data_dir, out, *extra, model="simple_convnet"):
    """``cnn-xp train`` of ``model`` on ``data_dir`` into ``out``; the exit status."""
    argv = ["train", "--model", model, "--dataset", "mnist", "--data-dir", data_dir, "--out", str(out),
            "--no-download", "--no-progress", *extra]
    return cli.main(argv)
