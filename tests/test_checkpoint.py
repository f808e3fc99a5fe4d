"""Checkpoint files: round trip without pickle, atomic writes, clear errors."""
import json
import os

import numpy as np
import pytest

from cnn_xp import models
from cnn_xp.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from cnn_xp.optim import Adam


def _trained_pair():
    model = models.build("simple_convnet", seed=0)
    opt = Adam(model, lr=1e-3)
    x = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    for _ in range(2):
        model.loss(x, np.arange(8) % 10)
        model.backward()
        opt.step()
    return model, opt


def test_round_trip_is_exact_and_pickle_free(tmp_path):
    model, opt = _trained_pair()
    meta = {"model": "simple_convnet", "epoch": 2, "hyperparameters": {"lr": 1e-3, "limit_train": None},
            "rng": {"big": 2 ** 100, "pair": (1, 2)}}
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, Checkpoint(meta=meta, model_state=model.state_dict(), optimizer_state=opt.state_dict(),
                                     extra={"filters_before": np.ones((2, 1, 3, 3), np.float32)}))
    with np.load(path, allow_pickle=False) as archive:  # readable by plain NumPy, no pickle
        assert "model/0.W" in archive.files
        assert json.loads(str(archive["meta"]))["epoch"] == 2
    ckpt = load_checkpoint(path)
    assert ckpt.meta["rng"] == {"big": 2 ** 100, "pair": (1, 2)}
    assert ckpt.meta["hyperparameters"] == {"lr": 1e-3, "limit_train": None}
    state = model.state_dict()
    assert set(ckpt.model_state) == set(state)
    assert all(np.array_equal(ckpt.model_state[k], state[k]) and ckpt.model_state[k].dtype == state[k].dtype
               for k in state)
    saved_opt = opt.state_dict()
    assert ckpt.optimizer_state.keys() == saved_opt.keys()
    assert ckpt.optimizer_state["t"] == 2 and isinstance(ckpt.optimizer_state["t"], int)
    assert all(np.array_equal(ckpt.optimizer_state[k], v) for k, v in saved_opt.items() if isinstance(v, np.ndarray))
    assert ckpt.extra["filters_before"].shape == (2, 1, 3, 3)
    # Restoring into fresh objects reproduces the next step exactly.
    model2 = models.build("simple_convnet", seed=9)
    model2.load_state_dict(ckpt.model_state)
    opt2 = Adam(model2, lr=1e-3)
    opt2.load_state_dict(ckpt.optimizer_state)
    x = np.random.default_rng(1).random((8, 1, 28, 28), dtype=np.float32)
    for m, o in ((model, opt), (model2, opt2)):
        m.loss(x, np.arange(8) % 10)
        m.backward()
        o.step()
    assert all(np.array_equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


def test_atomic_write_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, Checkpoint(meta={"epoch": 1}, model_state={"0.W": np.zeros(3, np.float32)}))
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_checkpoint(path, Checkpoint(meta={"epoch": 2}, model_state={}, optimizer_state={"bad": object()}))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(bad)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(2))
    with pytest.raises(CheckpointError, match="not a cnn_xp checkpoint"):
        load_checkpoint(other)
