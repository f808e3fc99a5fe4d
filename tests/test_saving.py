"""``model.save`` / ``cnn_xp.load`` and ``Sequential.summary()``: every zoo model and a
hand-built one round-trip (architecture, weights, predictions); the summary lists every
layer, its output shape and the parameter total; ``cnn-xp evaluate`` and ``predict`` take a
``model.save`` file as they take a run checkpoint; the version agrees everywhere."""
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import cnn_xp
from cnn_xp import models, optim
from cnn_xp.app import cli
from cnn_xp.errors import CheckpointError
from cnn_xp.layers import (Affine, AvgPool2D, BatchNorm, Conv2D, Dropout, Flatten, MaxPool2D, ReLU, Sigmoid,
                           SoftmaxCrossEntropy, Tanh)
from tiny_idx import draw_digit_one
from train_helpers import data_dir, isolated, offline, trained_checkpoint  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\s*(\d+)\s{2}(.+?)\s{2,}(\S+)\s+([\d,]+)$")


def summary_rows(text: str) -> list[tuple[int, str, str, int]]:
    """(index, layer, output shape, parameters) of each layer row of a summary table."""
    rows = []
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            rows.append((int(m.group(1)), m.group(2).strip(), m.group(3), int(m.group(4).replace(",", ""))))
    return rows


def total_of(text: str) -> int:
    return int(re.search(r"^total parameters: ([\d,]+)$", text, re.M).group(1).replace(",", ""))


def hand_built(dtype="float32"):
    """Every saveable layer type but the zoo's usual ones, in one small model (input 1x8x8)."""
    return cnn_xp.Sequential([
        Conv2D(1, 4, 3, pad=1, rng=1, dtype=dtype), BatchNorm(4, momentum=0.8, dtype=dtype), Tanh(),
        AvgPool2D(2), Conv2D(4, 6, (2, 3), stride=(1, 2), pad=(1, 0), rng=2, dtype=dtype), ReLU(),
        MaxPool2D((2, 1), stride=1), Flatten(), Dropout(0.3, seed=5), Affine(6 * 4 * 1, 12, rng=3, dtype=dtype),
        Sigmoid(), Affine(12, 10, rng=4, dtype=dtype),
    ], loss=SoftmaxCrossEntropy(), dtype=dtype)


HAND_SHAPES = ["4x8x8", "4x8x8", "4x8x8", "4x4x4", "6x5x1", "6x5x1", "6x4x1", "24", "24", "12", "12", "10"]
HAND_PARAMS = [4 * 9 + 4, 8, 0, 0, 6 * 4 * 6 + 6, 0, 0, 0, 0, 24 * 12 + 12, 0, 12 * 10 + 10]


# -- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_zoo_model_round_trips(name, tmp_path):
    model = models.build(name, seed=4)
    x = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    path = tmp_path / f"{name}.npz"
    model.save(path, class_names=[f"c{k}" for k in range(10)])
    loaded = cnn_xp.load(path)
    assert loaded.name == name and loaded.input_shape == model.input_shape
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert [repr(layer) for layer in loaded.layers] == [repr(layer) for layer in model.layers]
    state, again = model.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys()
    for key in state:
        assert np.array_equal(state[key], again[key]), key
    assert np.array_equal(model.predict(x), loaded.predict(x))
    assert loaded.class_names == [f"c{k}" for k in range(10)] and loaded.recipe is None
    assert loaded.summary() == model.summary()
    fresh = models.build(name, seed=5)  # the control: other weights predict otherwise
    assert not np.array_equal(fresh.predict(x), loaded.predict(x))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_hand_built_model_round_trips(tmp_path, dtype):
    model = hand_built(dtype)
    rng = np.random.default_rng(1)
    x, t = rng.random((20, 1, 8, 8)).astype(dtype), np.arange(20) % 10
    cnn_xp.fit(model, optim.create("adam", model, lr=0.01), (x, t), epochs=2, batch_size=10, verbose=False)
    assert not np.allclose(model.layers[1].buffers["running_mean"], 0)  # trained statistics to carry over
    model.save(tmp_path / "hand.npz")
    loaded = cnn_xp.load(tmp_path / "hand.npz")
    assert loaded.name is None and loaded.dtype == dtype
    assert [repr(layer) for layer in loaded.layers] == [repr(layer) for layer in model.layers]
    assert loaded.layers[1].momentum == 0.8 and loaded.layers[8].p == 0.3
    assert (loaded.layers[4].stride, loaded.layers[4].pad) == (model.layers[4].stride, model.layers[4].pad)
    for key, value in model.state_dict().items():
        assert np.array_equal(value, loaded.state_dict()[key]), key
    assert np.array_equal(model.predict(x), loaded.predict(x))
    result, again = cnn_xp.evaluate(model, (x, t)), cnn_xp.evaluate(loaded, (x, t))
    assert result["loss"] == again["loss"] and result["accuracy"] == again["accuracy"]


def test_load_names_the_file_when_it_is_not_a_model(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.npz"):
        cnn_xp.load(tmp_path / "nothing.npz")
    from cnn_xp.checkpoint import Checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "bare.npz", Checkpoint(meta={"kind": "other"}, model_state={}))
    with pytest.raises(CheckpointError, match="no architecture"):
        cnn_xp.load(tmp_path / "bare.npz")


# -- summary -------------------------------------------------------------------------------
def test_summary_lists_every_layer_with_output_shapes_and_the_total(tmp_path):
    model = hand_built()
    text = model.summary((1, 8, 8))
    rows = summary_rows(text)
    assert [r[0] for r in rows] == list(range(len(model.layers)))
    assert [r[2] for r in rows] == HAND_SHAPES
    assert [r[3] for r in rows] == HAND_PARAMS
    assert total_of(text) == sum(HAND_PARAMS) == model.num_params()
    for (_, shown, _, _), layer in zip(rows, model.layers):
        assert shown.startswith(type(layer).__name__)
    assert "input" in text and "1x8x8" in text and "loss: SoftmaxCrossEntropy" in text
    unknown = summary_rows(model.summary())  # no input shape known: '?', the counts still there
    assert [r[2] for r in unknown] == ["?"] * len(model.layers) and [r[3] for r in unknown] == HAND_PARAMS
    model.input_shape = (1, 8, 8)  # saved with the model, so the loaded one knows its shapes
    model.save(tmp_path / "m.npz")
    assert [r[2] for r in summary_rows(cnn_xp.load(tmp_path / "m.npz").summary())] == HAND_SHAPES


def test_summary_of_lenet5():
    text = models.build("lenet5").summary()
    rows = summary_rows(text)
    assert [r[2] for r in rows] == ["6x28x28", "6x28x28", "6x14x14", "16x10x10", "16x10x10", "16x5x5", "120",
                                    "120", "84", "84", "10"]
    assert total_of(text) == 156 + 2416 + 48120 + 10164 + 850
    assert text.splitlines()[0] == "lenet5 (cpu, float32)"


@pytest.mark.parametrize("name", list(models.MODELS))
def test_summary_total_is_the_sum_of_the_weights(name):
    model = models.build(name)
    rows = summary_rows(model.summary())
    assert len(rows) == len(model.layers) and rows[-1][2] == "10"
    expected = sum(int(v.size) for layer in model.layers for v in layer.params.values())
    assert total_of(model.summary()) == sum(r[3] for r in rows) == expected


# -- the CLI takes a model.save file as a run checkpoint -------------------------------------------
@pytest.fixture(scope="module")
def run_and_saved(data_dir, tmp_path_factory):
    """A 2-epoch run's checkpoint, and the same model written by ``model.save``."""
    folder = tmp_path_factory.mktemp("saved")
    checkpoint = trained_checkpoint(data_dir, folder / "run", "simple_convnet", 2)
    cnn_xp.load(checkpoint).save(folder / "model.npz")
    return checkpoint, folder / "model.npz"


def _evaluate(capsys, path, data_dir, *extra):
    code = cli.main(["evaluate", "--checkpoint", str(path), "--dataset", "mnist", "--data-dir", data_dir,
                     "--no-download", *extra])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == "", captured
    return captured.out.splitlines()


@pytest.mark.usefixtures("offline")
def test_evaluate_takes_a_model_save_file_as_a_run_checkpoint(run_and_saved, data_dir, capsys):
    ckpt, saved = run_and_saved
    from_run, from_file = _evaluate(capsys, ckpt, data_dir), _evaluate(capsys, saved, data_dir)
    assert from_run[0] == "simple_convnet (epoch 2) on mnist test set, 100 images"
    assert from_file[0] == "simple_convnet on mnist test set, 100 images"
    assert from_run[1:] == from_file[1:]  # per class, loss, accuracy
    assert from_file[-1].startswith("test accuracy: ")
    # the saved recipe names the data set: --dataset is not needed
    assert cli.main(["evaluate", "--checkpoint", str(saved), "--data-dir", data_dir, "--no-download"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == from_run[1:]


@pytest.mark.usefixtures("offline")
def test_evaluate_json_of_a_model_save_file(run_and_saved, data_dir, capsys):
    import json

    ckpt, saved = run_and_saved
    results = []
    for path in (ckpt, saved):
        assert cli.main(["evaluate", "--checkpoint", str(path), "--data-dir", data_dir, "--no-download",
                         "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["epoch"] == 2 and results[1]["epoch"] is None
    for key in ("model", "dataset", "n", "loss", "accuracy", "per_class"):
        assert results[0][key] == results[1][key], key


def test_predict_takes_a_model_save_file_as_a_run_checkpoint(run_and_saved, tmp_path, capsys):
    ckpt, saved = run_and_saved
    images = [draw_digit_one(tmp_path / "one.png"), draw_digit_one(tmp_path / "two.png", dark_on_light=False)]
    answers = []
    for path in (ckpt, saved):
        assert cli.main(["predict", "--checkpoint", str(path), *images]) == 0
        answers.append(capsys.readouterr().out.splitlines())
    assert len(answers[0]) == 2 and answers[0] == answers[1]
    assert all(re.match(r".*\.png: \d  p=\d\.\d{4}$", line) for line in answers[0]), answers[0]


@pytest.mark.usefixtures("offline")
def test_a_plain_saved_zoo_model_evaluates_and_predicts(data_dir, tmp_path, capsys):
    """A model.save file with no recipe nor class names: evaluate needs --dataset, predict numbers the classes."""
    models.build("lenet5", seed=1).save(tmp_path / "plain.npz")
    lines = _evaluate(capsys, tmp_path / "plain.npz", data_dir, "--limit-test", "20")
    assert lines[0] == "lenet5 on mnist test set, 20 images"
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "plain.npz"), "--data-dir", data_dir]) == 2
    assert "pass --dataset NAME" in capsys.readouterr().err
    image = draw_digit_one(tmp_path / "d.png")
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "plain.npz"), image]) == 0
    assert re.match(r".*d\.png: \d  p=", capsys.readouterr().out)


# -- the version ---------------------------------------------------------------------------
def test_the_version_is_one_everywhere():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "cnn_xp", "--version"], capture_output=True, text=True, env=env,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"cnn-xp {cnn_xp.__version__}"
    with open(ROOT / "pyproject.toml", "rb") as fh:
        assert tomllib.load(fh)["project"]["version"] == cnn_xp.__version__
