"""Where the tests find real MNIST: ``$CNN_XP_DATA`` (or its ``mnist/``) when a user set it,
else ``shared/datasets/mnist`` beside the repository (``../shared`` from its root, as the CI
clone and the build machines have it). Tests that need it skip, with that reason, elsewhere."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnn_xp.data import sources

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets" / "mnist"


def candidates() -> list[Path]:
    env = os.environ.get(sources.DATA_ENV)
    return [Path(env), Path(env) / "mnist"] if env else [SHARED]


def mnist_dir() -> Path | None:
    """The first candidate folder holding all four MNIST files, or None."""
    for folder in candidates():
        if len(sources.find_in_dir(folder)) == len(sources.PARTS):
            return folder
    return None


def require_mnist() -> Path:
    """The real MNIST folder, or skip the calling test saying where it was looked for."""
    folder = mnist_dir()
    if folder is None:
        looked = ", ".join(str(c) for c in candidates())
        pytest.skip(f"real MNIST not found (looked in {looked}; set {sources.DATA_ENV} to a folder "
                    f"holding the four files)")
    return folder
