"""The trainer product on the GPU: ``cnn-xp train --device gpu`` end to end on a tiny IDX data
set in both kernel modes (``--kernels auto|reference``, the same weights to float
rounding), resume on the GPU, and a GPU checkpoint evaluated on the CPU."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from gpu_helpers import kernel_mode

from cnn_xp.app import cli
from cnn_xp.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_idx import write_dataset  # noqa: E402

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None  # a bare GPU machine has none


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny") / "data", n_train=200, n_test=60)


def _train(gpu, data_dir, out, *extra, model="simple_convnet"):
    with kernel_mode(None):  # --kernels sets the process's mode: restore it afterwards
        return cli.main(["train", "--model", model, "--dataset", "mnist", "--data-dir", data_dir,
                         "--device", gpu, "--out", str(out), "--no-download", "--no-progress",
                         "--batch-size", "50", *extra])


def test_train_on_gpu_then_evaluate_on_both_devices(gpu, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(gpu, data_dir, out, "--epochs", "3") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == gpu and summary["test_accuracy"] > 0.5
    figures = ("curves.png", "filters.png", "confusion.png") if HAS_MATPLOTLIB else ()
    for name in ("metrics.csv", "checkpoint.npz", *figures):
        assert (out / name).is_file()
    assert HAS_MATPLOTLIB or summary["plots"].startswith("none")  # a bare GPU machine: no figures
    capsys.readouterr()
    for device in (gpu, "cpu"):
        assert cli.main(["evaluate", "--checkpoint", str(out / "checkpoint.npz"), "--data-dir", data_dir,
                         "--device", device, "--no-download"]) == 0
        assert f"test accuracy: {summary['test_accuracy']:.4f}" in capsys.readouterr().out


def test_resume_on_gpu(gpu, data_dir, tmp_path):
    """A resumed GPU run continues the same batch order and optimizer state: without dropout
    it ends where the uninterrupted run ends (up to float reduction order)."""
    extra = ("--limit-train", "100", "--limit-test", "20", "--schedule-epochs", "3")  # the whole run's schedule
    assert _train(gpu, data_dir, tmp_path / "full", "--epochs", "3", *extra) == 0
    assert _train(gpu, data_dir, tmp_path / "split", "--epochs", "1", *extra) == 0
    assert _train(gpu, data_dir, tmp_path / "split", "--epochs", "3", "--resume", *extra) == 0
    full = load_checkpoint(tmp_path / "full" / "checkpoint.npz")
    split = load_checkpoint(tmp_path / "split" / "checkpoint.npz")
    assert split.meta["epoch"] == 3 and full.meta["rng"]["batches"] == split.meta["rng"]["batches"]
    for key, value in full.model_state.items():
        np.testing.assert_allclose(split.model_state[key], value, rtol=1e-3, atol=1e-5, err_msg=key)


def test_both_kernel_modes_train_to_the_same_weights(gpu, data_dir, tmp_path):
    """One epoch of lenet5 (no dropout) with --kernels auto and --kernels reference, same
    seed and batches: the weights agree within 1% (relative L2 per array). Adam's first
    steps move each weight by about lr * sign(g), so a gradient entry near 0 may flip sign
    between two summation orders; a wrong kernel is off by far more."""
    extra = ("--epochs", "1", "--limit-train", "200", "--limit-test", "20")
    for mode in ("auto", "reference"):
        assert _train(gpu, data_dir, tmp_path / mode, "--kernels", mode, *extra, model="lenet5") == 0
    auto = load_checkpoint(tmp_path / "auto" / "checkpoint.npz").model_state
    ref = load_checkpoint(tmp_path / "reference" / "checkpoint.npz").model_state
    assert auto.keys() == ref.keys()
    for key in ref:
        err = np.linalg.norm((auto[key] - ref[key]).astype(np.float64))
        assert err <= 1e-2 * np.linalg.norm(ref[key].astype(np.float64)) + 1e-6, key
