"""End-to-end training runs on a tiny IDX data set: run-dir contents, resume, divergence."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from cnn_xp import parallel

from cnn_xp.app import cli
from cnn_xp.checkpoint import load_checkpoint
from cnn_xp.callbacks import METRICS as METRIC_COLUMNS
from train_helpers import data_dir, isolated, train  # noqa: F401 (fixtures)




def test_run_dir_holds_every_file_and_they_are_sane(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "3", "--val-size", "40") == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert stdout[-1].startswith("test accuracy: ")  # printed last
    assert sum(line.startswith("epoch ") for line in stdout) == 3  # one summary line per epoch
    assert {p.name for p in out.iterdir()} == {"metrics.csv", "summary.json", "checkpoint.npz", "best.npz",
                                               "curves.png", "filters.png", "confusion.png"}
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for r in rows:
        assert 0 <= float(r["train_acc"]) <= 1 and 0 <= float(r["val_acc"]) <= 1
        assert float(r["train_loss"]) > 0 and float(r["seconds"]) > 0 and float(r["images_per_second"]) > 0
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # it learns
    summary = json.loads((out / "summary.json").read_text())
    for key in ("model", "dataset", "device", "recipe", "epochs", "test_accuracy", "test_loss",
                "wall_seconds", "versions"):
        assert key in summary
    assert summary["model"] == "simple_convnet" and summary["dataset"] == "mnist" and summary["device"] == "cpu"
    assert summary["epochs"] == 3 and summary["recipe"]["epochs"] == 3
    assert summary["recipe"]["lr"] == 1e-3 and summary["recipe"]["optimizer"] == "adam"
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["test_images"] == 100
    assert summary["test_accuracy"] > 0.5  # the bars are easy: far above chance
    assert summary["versions"]["numpy"] == np.__version__
    assert f"{summary['test_accuracy']:.4f}" in stdout[-1]
    for name in ("curves.png", "filters.png", "confusion.png"):
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 100 and img.height > 100
    with np.load(out / "checkpoint.npz", allow_pickle=False) as archive:
        assert archive["model/0.W"].shape == (30, 1, 5, 5)
        assert json.loads(str(archive["meta"]))["epoch"] == 3
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert not np.array_equal(ckpt.extra["filters_before"], ckpt.model_state["0.W"])  # training moved them


@pytest.mark.parametrize("threads", ["1", "2"])  # 2: batches of 50 train in two slices
@pytest.mark.parametrize("model, optimizer", [("deep_convnet", "adagrad"), ("simple_convnet", "adam")])
def test_resume_is_bit_identical_to_an_uninterrupted_run(data_dir, tmp_path, monkeypatch, model, optimizer,
                                                          threads):
    """3 epochs in one go == 1 epoch, stop, resume for 2 more (dropout and batch order included)."""
    monkeypatch.setenv("CNN_XP_THREADS", threads)
    slice_counts = []  # the trainer's steps go through Sequential's batch slicing
    sliced_forward = parallel.SlicedLayers.forward
    monkeypatch.setattr(parallel.SlicedLayers, "forward",
                        lambda self, x, slices: slice_counts.append(slices) or sliced_forward(self, x, slices))
    # --schedule-epochs: a model's schedule is planned over the whole run, not the first part's --epochs
    common = ("--batch-size", "50", "--seed", "7", "--optimizer", optimizer, "--limit-train", "120",
              "--limit-test", "20", "--schedule-epochs", "3")
    assert train(data_dir, tmp_path / "full", "--epochs", "3", *common, model=model) == 0
    assert train(data_dir, tmp_path / "split", "--epochs", "1", *common, model=model) == 0
    assert load_checkpoint(tmp_path / "split" / "checkpoint.npz").meta["epoch"] == 1
    assert train(data_dir, tmp_path / "split", "--epochs", "3", "--resume", *common, model=model) == 0
    full = load_checkpoint(tmp_path / "full" / "checkpoint.npz")
    split = load_checkpoint(tmp_path / "split" / "checkpoint.npz")
    assert split.meta["epoch"] == 3
    assert full.model_state.keys() == split.model_state.keys()
    for key in full.model_state:
        assert np.array_equal(full.model_state[key], split.model_state[key]), key
    for key, value in full.optimizer_state.items():
        assert np.array_equal(value, split.optimizer_state[key]), key
    assert full.meta["rng"] == split.meta["rng"]
    full_rows = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    split_rows = (tmp_path / "split" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:5] for r in full_rows] == [r.split(",")[:5] for r in split_rows]  # timings differ
    full_summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    split_summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert full_summary["test_accuracy"] == split_summary["test_accuracy"]
    assert split_summary["epochs"] == 3
    assert set(slice_counts) == ({2} if threads == "2" else set())


def test_resume_refuses_changed_hyperparameters_and_missing_runs(data_dir, tmp_path, capsys):
    assert train(data_dir, tmp_path / "r", "--epochs", "1") == 0
    capsys.readouterr()
    assert train(data_dir, tmp_path / "r", "--epochs", "2", "--resume", "--lr", "0.5") == 2
    assert "--lr" in capsys.readouterr().err
    assert train(data_dir, tmp_path / "r", "--epochs", "2") == 2  # would overwrite a run
    assert "--resume" in capsys.readouterr().err
    assert train(data_dir, tmp_path / "nothing", "--epochs", "2", "--resume") == 2
    assert "no checkpoint.npz" in capsys.readouterr().err


def test_nan_loss_stops_with_a_clear_message(data_dir, tmp_path, capsys):
    code = train(data_dir, tmp_path / "nan", "--epochs", "2", "--optimizer", "sgd", "--lr", "1e30")
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "epoch 1" in err and "try a smaller one" in err and ("nan" in err or "inf" in err)
    assert "no checkpoint was saved" in err
    assert not (tmp_path / "nan" / "checkpoint.npz").exists()  # no diverged weights saved


def test_default_run_dir_and_limits(data_dir, tmp_path, capsys):
    argv = ["train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", data_dir, "--epochs", "1",
            "--limit-train", "60", "--limit-test", "30", "--no-download", "--no-progress", "--dtype", "float64"]
    assert cli.main(argv) == 0
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("lenet5-mnist-")
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["test_images"] == 30 and summary["recipe"]["dtype"] == "float64"
    assert "60 train" in capsys.readouterr().out
    ckpt = load_checkpoint(runs[0] / "checkpoint.npz")
    assert ckpt.model_state["0.W"].dtype == np.float64


def test_model_optimizer_settings_reach_its_own_optimizer_only(data_dir, tmp_path, monkeypatch):
    """ModelSpec.optimizer_kwargs apply when the run uses the model's optimizer, not another."""
    import dataclasses

    from cnn_xp import models

    from cnn_xp import optim

    spec = models.MODELS["simple_convnet"]
    monkeypatch.setitem(models.MODELS, "simple_convnet", dataclasses.replace(spec, optimizer_kwargs={"beta1": 0.5}))
    made = []
    for name in ("adam", "sgd"):
        cls = optim.OPTIMIZERS[name]

        def record(model, cls=cls, **kwargs):
            optimizer = cls(model, **kwargs)
            made.append((type(optimizer).__name__, kwargs))
            return optimizer
        monkeypatch.setitem(optim.OPTIMIZERS, name, record)
    assert train(data_dir, tmp_path / "adam", "--epochs", "1", "--limit-train", "100") == 0
    assert train(data_dir, tmp_path / "sgd", "--epochs", "1", "--limit-train", "100", "--optimizer", "sgd") == 0
    assert made == [("Adam", {"lr": 1e-3, "beta1": 0.5}), ("SGD", {"lr": 1e-3})]
