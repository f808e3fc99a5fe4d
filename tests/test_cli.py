"""The ``cnn-xp`` command line: evaluate, predict, and every user mistake in one line, exit 2."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from cnn_xp import backend

from cnn_xp.app import cli
from cnn_xp.checkpoint import Checkpoint, save_checkpoint
from tiny_idx import draw_digit_one, write_dataset
from train_helpers import isolated, offline  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny") / "data", n_train=200, n_test=100)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A simple_convnet run trained for 3 epochs on the tiny bars."""
    out = tmp_path_factory.mktemp("run") / "run"
    code = cli.main(["train", "--model", "simple_convnet", "--dataset", "mnist", "--data-dir", data_dir,
                     "--epochs", "3", "--out", str(out), "--no-download", "--no-progress"])
    assert code == 0
    return out


pytestmark = pytest.mark.usefixtures("offline")


def one_line_error(capsys, code, expected_code=2):
    """Assert the command failed with one stderr line and no traceback; return that line."""
    captured = capsys.readouterr()
    assert code == expected_code, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("cnn-xp: error: ") and "Traceback" not in captured.err
    return lines[0]


def test_evaluate_prints_overall_and_per_class_accuracy(trained, data_dir, capsys):
    code = cli.main(["evaluate", "--checkpoint", str(trained / "checkpoint.npz"), "--dataset", "mnist",
                     "--data-dir", data_dir, "--no-download"])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads((trained / "summary.json").read_text())
    assert f"test accuracy: {summary['test_accuracy']:.4f}" in out
    assert sum(line.strip().startswith("class ") for line in out.splitlines()) == 10
    assert "(10 images)" in out


def test_predict_dark_on_light_and_light_on_dark(trained, tmp_path, capsys):
    dark = draw_digit_one(tmp_path / "dark.png", (240, 320), True)
    light = draw_digit_one(tmp_path / "light.jpg", (500, 300), False, (30, 10), "JPEG")
    code = cli.main(["predict", "--checkpoint", str(trained / "checkpoint.npz"), dark, light])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    classes = []
    for line, path in zip(lines, (dark, light)):
        head, prob = line.rsplit("p=", 1)
        assert head.startswith(path + ": ")
        assert 0.0 <= float(prob) <= 1.0
        classes.append(int(head[len(path) + 2:].split()[0]))
    assert all(0 <= k <= 9 for k in classes)
    assert classes[0] == classes[1]  # the same digit, whatever the polarity


def test_predict_bad_image(trained, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("no pixels here")
    line = one_line_error(capsys, cli.main(["predict", "--checkpoint", str(trained / "checkpoint.npz"), str(bad)]))
    assert "bad.png" in line and "not a readable image" in line


@pytest.mark.parametrize("flags, needle", [
    (["--model", "resnet"], "--model must be one of one_conv"),
    (["--optimizer", "lbfgs"], "--optimizer must be one of sgd"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "-3"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--val-size", "500"], "--val-size"),
    (["--seed", "-1"], "--seed"),
    (["--dataset", "cifar"], "--dataset"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_train_flags(data_dir, capsys, flags, needle):
    argv = ["train", "--model", "simple_convnet", "--dataset", "mnist", "--data-dir", data_dir, "--epochs", "1",
            "--no-download", "--no-progress"]
    for i in range(0, len(flags), 2):  # a later flag overrides the default one
        argv += flags[i:i + 2]
    assert needle in one_line_error(capsys, cli.main(argv))


def test_unwritable_out(data_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    line = one_line_error(capsys, cli.main(["train", "--model", "simple_convnet", "--dataset", "mnist",
                                            "--data-dir", data_dir, "--out", str(blocker / "run"),
                                            "--no-progress"]))
    assert "--out" in line and "cannot write" in line


@pytest.mark.parametrize("download", [False, True])
def test_missing_data_offline(tmp_path, capsys, download):
    empty = tmp_path / "empty"
    empty.mkdir()
    run_dir = tmp_path / "runs" / "never"
    argv = ["train", "--model", "simple_convnet", "--dataset", "mnist", "--data-dir", str(empty),
            "--out", str(run_dir), "--no-progress"]
    line = one_line_error(capsys, cli.main(argv + ([] if download else ["--no-download"])))
    assert not run_dir.exists()  # no data, no run: no empty run folder left behind
    if download:
        assert "could not download" in line and "127.0.0.1" in line
    else:
        assert "mnist not found" in line and "cnn-xp download mnist" in line


def test_corrupt_data(data_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(data_dir):
        (broken / name).write_bytes((Path(data_dir) / name).read_bytes())
    images = broken / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])  # truncated
    line = one_line_error(capsys, cli.main(["train", "--model", "simple_convnet", "--dataset", "mnist",
                                            "--data-dir", str(broken), "--no-download", "--no-progress"]))
    assert "train-images-idx3-ubyte" in line


def test_gpu_without_a_usable_gpu(data_dir, capsys, monkeypatch):
    monkeypatch.setattr(backend, "_gpu_probe", (None, "no CUDA device found (simulated)"))
    line = one_line_error(capsys, cli.main(["train", "--model", "simple_convnet", "--dataset", "mnist",
                                            "--data-dir", data_dir, "--device", "gpu", "--no-progress"]))
    assert "no CUDA device found (simulated)" in line and "--device cpu" in line
    line = one_line_error(capsys, cli.main(["train", "--model", "simple_convnet", "--dataset", "mnist",
                                            "--data-dir", data_dir, "--device", "tpu"]))
    assert "--device must be one of cpu, gpu, got 'tpu'" in line


def test_missing_or_bad_checkpoint(tmp_path, capsys):
    line = one_line_error(capsys, cli.main(["evaluate", "--checkpoint", str(tmp_path / "none.npz")]))
    assert "checkpoint not found" in line
    junk = tmp_path / "junk.npz"
    np.savez(junk, x=np.zeros(2))
    image = draw_digit_one(tmp_path / "d.png")
    assert "not a cnn_xp checkpoint" in one_line_error(
        capsys, cli.main(["predict", "--checkpoint", str(junk), image]))
    bare = tmp_path / "bare.npz"  # a cnn_xp checkpoint without the trainer's metadata
    save_checkpoint(bare, Checkpoint(meta={"model": "simple_convnet"}, model_state={}))
    assert "neither a run checkpoint nor a saved model" in one_line_error(
        capsys, cli.main(["evaluate", "--checkpoint", str(bare)]))


def test_missing_command_and_the_doctor_and_bench_commands(capsys, tmp_path):
    assert "required" in one_line_error(capsys, cli.main([]))
    assert cli.main(["doctor"]) == 0
    assert "cpu: ok" in capsys.readouterr().out
    report = tmp_path / "bench.json"
    assert cli.main(["bench", "--models", "simple_convnet", "--dtypes", "float32", "--batch-sizes", "8",
                     "--steps", "1", "--repeats", "3", "--peer", "none", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["results"][0]["model"] == "simple_convnet"
    capsys.readouterr()
    assert cli.main(["bench", "--batch-sizes", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be positive" in err[0]


def test_models_listing(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("one_conv", "simple_convnet", "deep_convnet", "lenet5"):
        assert f"{name}: " in out


def _run(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_python_m_and_script_share_the_flags(tmp_path):
    for args in (["-m", "cnn_xp", "train", "--model", "nope", "--dataset", "mnist"],
                 [str(ROOT / "scripts" / "train_mnist.py"), "--model", "nope", "--dataset", "mnist"],
                 [str(ROOT / "scripts" / "train_mnist.py"), "--model", "simple_convnet", "--dataset", "mnist",
                  "--epochs", "0"]):
        proc = _run(args, tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--epochs" in lines[0]
    help_text = _run([str(ROOT / "scripts" / "train_mnist.py"), "--help"], tmp_path)
    assert help_text.returncode == 0 and "--resume" in help_text.stdout and "--limit-train" in help_text.stdout


def test_warnings_are_one_line(capsys):
    def call():
        warnings.warn("cnn_xp's C kernels could not be built (no C compiler:\n cc not found)", RuntimeWarning)
        return 0

    assert cli._run(call) == 0
    err = capsys.readouterr().err
    assert err == "cnn-xp: warning: cnn_xp's C kernels could not be built (no C compiler: cc not found)\n"
