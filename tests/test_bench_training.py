"""``cnn-xp bench --real`` on a tiny IDX data set: the report's shape, the PyTorch twin
training the same recipe (same lr per step, same groups, same batches), bad input. No
timing asserts. The real-MNIST run is in the benchmark, not here."""
import json

import numpy as np
import pytest

from cnn_xp import models
from cnn_xp.app import bench, bench_common, bench_training
from tiny_idx import write_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny") / "data", n_train=200, n_test=100)


def run(tmp_path, data_dir, *extra):
    out_json, out_md = tmp_path / "real.json", tmp_path / "real.md"
    argv = ["--real", "--data-dir", data_dir, "--epochs", "2", "--target", "0.3", "--json", str(out_json),
            "--markdown", str(out_md), *extra]
    assert bench.main(argv) == 0
    return json.loads(out_json.read_text()), out_md.read_text()


def test_real_training_report_without_peer(tmp_path, data_dir, capsys):
    report, table = run(tmp_path, data_dir, "--models", "fast_mnist", "lenet5", "--seeds", "0", "1", "--peer", "none")
    assert report["kind"] == "real-training" and report["peer"] is None
    assert report["train_images"] == 200 and report["test_images"] == 100
    assert [(r["model"], r["seed"]) for r in report["results"]] == [("fast_mnist", 0), ("fast_mnist", 1),
                                                                     ("lenet5", 0), ("lenet5", 1)]
    for r in report["results"]:
        ours = r["ours"]
        assert r["epochs"] == 2 and len(ours["epoch_seconds"]) == 2 and len(ours["test_accuracy"]) == 2
        assert all(s > 0 for s in ours["epoch_seconds"] + ours["eval_seconds"])
        assert 0 <= ours["final_accuracy"] <= 1 and "torch" not in r
        if ours["time_to_target"] is not None:
            assert ours["time_to_target"] <= ours["total_seconds"]
            assert ours["test_accuracy"][ours["epochs_to_target"] - 1] >= 0.3
    assert report["results"][0]["schedule"] == "onecycle" and report["results"][2]["augment"] is not None
    assert [s["model"] for s in report["summary"]] == ["fast_mnist", "lenet5"]
    assert table.splitlines()[0].startswith("| model | seed | epochs | s/epoch, each | test acc |")
    assert "fast_mnist seed 1: ours: epochs" in capsys.readouterr().err


def test_torch_twin_trains_the_same_recipe(tmp_path, data_dir):
    pytest.importorskip("torch")
    report, table = run(tmp_path, data_dir, "--models", "one_conv", "fast_mnist", "--peer", "torch")
    assert report["peer"] == "torch" and "torch s/epoch" in table.splitlines()[0]
    for r in report["results"]:
        assert len(r["torch"]["epoch_seconds"]) == 2 and r["epoch_ratio"] > 0 and r["total_ratio"] > 0
        # same init, recipe and batches: both learn this easy set about equally
        assert abs(r["torch"]["final_accuracy"] - r["ours"]["final_accuracy"]) <= 0.1


def test_torch_twin_steps_like_ours():
    """A few steps of the twin equal ours: same groups (one_conv's conv /784), same one-cycle
    learning rates, same batches; float64 so that only rounding differs."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 28, 28))
    t = rng.integers(0, 10, 60)
    for name, overrides in (("one_conv", {}), ("fast_mnist", {})):
        hp = bench_training.recipe(name, 1, seed=2, dtype="float64")
        hp["batch_size"] = 20
        hp.update(overrides)
        ours = bench_training.OurRun(name, hp, x, t, x[:10], t[:10], "cpu")
        theirs = bench_training.TorchRun(torch, name, hp, x, t, x[:10], t[:10], "cpu")
        ours.train_epoch(1)
        theirs.train_epoch(1)
        mapping = bench_training.twin_parameters(ours.model, theirs.net)
        for pname, layer, key in ours.model.params_and_grads():
            mine = np.asarray(layer.params[key])
            twin = mapping[pname].detach().numpy()
            np.testing.assert_allclose(mine, twin.T if (key == "W" and mine.ndim == 2) else twin,
                                       rtol=1e-7, atol=1e-9, err_msg=f"{name} {pname}")


def test_param_groups_of_the_twin():
    torch = pytest.importorskip("torch")
    model = models.build("one_conv")
    net = bench_common.torch_twin(torch, model)
    groups = bench_training.torch_param_groups(bench_training.twin_parameters(model, net), model,
                                               {"lr": 0.5, "lr_groups": [{"params": ["0.W", "0.b"],
                                                                          "lr_scale": 1 / 784}]})
    assert [g["lr"] for g in groups] == [0.5 / 784, 0.5] and [len(g["params"]) for g in groups] == [2, 4]


@pytest.mark.parametrize("argv, message", [
    (["--real", "--epochs", "0"], "--epochs must be a positive integer"),
    (["--real", "--target", "1.5"], "--target must be a test accuracy"),
    (["--real", "--seeds", "-1"], "--seeds must be 0 or more"),
    (["--real", "--models", "nope"], "unknown model 'nope'"),
])
def test_bad_real_flags_are_one_line(argv, message, capsys):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_data_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNN_XP_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--real", "--data-dir", str(tmp_path / "nothing"), "--peer", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--real needs the mnist files" in err and len(err.splitlines()) == 1
