"""Real MNIST (see mnist_data.py for where it is looked for): the four files are the published
ones, they load as 60,000 + 10,000 digits, and a zoo net learns from a subset of them."""
import csv
import re

import numpy as np
import pytest
from mnist_data import REPO, require_mnist

from cnn_xp.app.train import TrainRequest, train
from cnn_xp.data import load_dataset, sources
from cnn_xp.data.download import file_digests

GZ_NAMES = [sources.BASE_NAMES[p] + ".gz" for p in sources.PARTS]
PUBLISHED = sources.DATASETS["mnist"].checksums  # md5 and sha256 of the mirrors' .gz files


@pytest.fixture(scope="module")
def mnist_folder():
    return require_mnist()


def test_the_four_files_are_the_published_ones(mnist_folder):
    for name in GZ_NAMES:
        path = mnist_folder / name
        assert path.is_file(), f"{path} missing (the published .gz files are expected)"
        assert file_digests(path, ("md5", "sha256")) == PUBLISHED[name], name
    # The folder's own MD5SUMS lists the same md5s.
    md5sums = mnist_folder / "MD5SUMS"
    if md5sums.is_file():
        listed = dict(reversed(line.split()) for line in md5sums.read_text().splitlines() if line.strip())
        assert {n: listed[n] for n in GZ_NAMES} == {n: PUBLISHED[n]["md5"] for n in GZ_NAMES}


def test_published_checksums_match_the_reference_notes():
    """The checksums in sources.py are the ones REFERENCE.md records (when it is at hand)."""
    reference = REPO.parent / "shared" / "REFERENCE.md"
    if not reference.is_file():
        pytest.skip(f"{reference} not found")
    text = " ".join(reference.read_text().split())  # its lines wrap between name and digest
    for name, sums in PUBLISHED.items():
        part = name.split("-idx")[0]  # train-images, t10k-labels, ...
        for alg, digest in sums.items():
            assert re.search(rf"{part} {digest}\b", text), f"{alg} of {name} not in {reference}"


def test_loads_as_mnist(mnist_folder):
    ds = load_dataset("mnist", data_dir=mnist_folder, download=False)
    assert ds.folder == mnist_folder
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int64
    assert np.bincount(ds.train_labels, minlength=10).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(ds.test_labels, minlength=10).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_a_zoo_net_learns_real_digits(mnist_folder, tmp_path):
    """lenet5 with its zoo defaults, 2 epochs on the first 10,000 training digits: well above
    chance (10%) on the first 2,000 test digits. Measured 91.8-94.7% over seeds 0-2."""
    overrides = {"model": "lenet5", "data_dir": str(mnist_folder), "epochs": 2, "limit_train": 10000,
                 "limit_test": 2000, "val_size": 0}
    summary = train(TrainRequest(overrides=overrides, out=str(tmp_path / "run"), download=False, progress=False),
                    out=open(tmp_path / "log.txt", "w"))
    assert summary["test_images"] == 2000
    assert summary["test_accuracy"] >= 0.88, summary["test_accuracy"]
    with open(tmp_path / "run" / "metrics.csv") as fh:
        losses = [float(row["train_loss"]) for row in csv.DictReader(fh)]
    assert len(losses) == 2 and losses[1] < losses[0]
