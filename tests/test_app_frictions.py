"""The application's frictions, each through ``cnn-xp`` (in process or a child) and checked
to one line and an exit status: a missing --data-dir, a failed download, evaluating on
another data set, a zoo validation size scaled to --limit-train, validation on the test set,
resume (alone, past a finished schedule, with changed flags), the missing-kernels warning,
the light --help, and --json."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnn_xp import dispatch
from cnn_xp.app import cli, train as train_module
from cnn_xp.callbacks import Callback
from cnn_xp.checkpoint import load_checkpoint
from cnn_xp.data import sources
from data_helpers import checksums_of, http_server, idx_bytes, tiny_arrays
from tiny_idx import write_dataset
from train_helpers import data_dir, isolated, no_plots, offline, skip_plots, train  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
GZ = {part: sources.BASE_NAMES[part] + ".gz" for part in sources.PARTS}

pytestmark = pytest.mark.usefixtures("offline", "no_plots")


def child_env(**extra):
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def one_line(capsys, code, expected=2, prefix="cnn-xp: error: ") -> str:
    captured = capsys.readouterr()
    assert code == expected, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def metrics(folder) -> list[dict]:
    with open(Path(folder) / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A simple_convnet run of 1 epoch on the tiny MNIST-named bars."""
    out = tmp_path_factory.mktemp("trained") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        skip_plots(monkeypatch)
        assert train(data_dir, out, "--epochs", "1", "--limit-test", "30") == 0
    return out


# -- data ----------------------------------------------------------------------------------
@pytest.mark.parametrize("download", [True, False])
def test_a_data_dir_that_does_not_exist_is_named_and_nothing_is_created(tmp_path, capsys, download):
    before = everything_under(tmp_path)
    missing = tmp_path / "no" / "such"
    argv = ["train", "--model", "simple_convnet", "--data-dir", str(missing), "--epochs", "1", "--no-progress"]
    line = one_line(capsys, cli.main(argv + ([] if download else ["--no-download"])))
    assert line.startswith(f"cnn-xp: error: --data-dir {missing} does not exist")
    assert everything_under(tmp_path) == before  # no run folder, no runs/, no data folder, no cache
    line = one_line(capsys, cli.main(["evaluate", "--checkpoint", "whatever.npz", "--dataset", "mnist",
                                      "--data-dir", str(missing)]))
    assert "whatever.npz" in line or str(missing) in line
    assert everything_under(tmp_path) == before


def test_evaluate_names_a_missing_data_dir(trained, tmp_path, capsys):
    missing = tmp_path / "gone"
    line = one_line(capsys, cli.main(["evaluate", "--checkpoint", str(trained / "checkpoint.npz"),
                                      "--data-dir", str(missing)]))
    assert line.startswith(f"cnn-xp: error: --data-dir {missing} does not exist")
    assert not missing.exists()


@pytest.fixture
def half_mirror(tmp_path, monkeypatch):
    """A local mirror with the mnist checksums replaced by its files', serving only the
    training files (the test files are a 404)."""
    arrays = tiny_arrays(n_train=9, n_test=4, seed=3)
    www = tmp_path / "www"
    www.mkdir()
    sums = {}
    for part, name in GZ.items():
        data = idx_bytes(arrays[part], gz=True)
        sums[name] = checksums_of(data)
        if part.startswith("train"):
            (www / name).write_bytes(data)
    spec = sources.DATASETS["mnist"]
    monkeypatch.setitem(sources.DATASETS, "mnist", type(spec)(**{**spec.__dict__, "checksums": sums}))
    with http_server(www) as (url, requests):
        monkeypatch.setenv("CNN_XP_MIRRORS_MNIST", url)
        yield url, requests


def test_a_failed_download_leaves_no_folder_behind(tmp_path, capsys, half_mirror):
    url, requests = half_mirror
    dest = tmp_path / "new" / "deeper"
    code = cli.main(["download", "mnist", "--data-dir", str(dest)])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if "cnn-xp: error: " in line]  # after pooch's bars
    assert len(errors) == 1 and captured.err.rstrip().endswith(errors[0].split("cnn-xp: error: ")[1])
    assert "HTTP 404" in errors[0] and GZ["test_images"] in errors[0]
    assert requests[:2] == ["/" + GZ["train_images"], "/" + GZ["train_labels"]]  # two files were fetched...
    assert not (tmp_path / "new").exists()  # ... and removed, with the folders made for them


def test_a_failed_download_by_train_leaves_no_cache_folder(tmp_path, capsys, half_mirror):
    before = everything_under(tmp_path)
    one_line(capsys, cli.main(["train", "--model", "simple_convnet", "--epochs", "1", "--no-progress",
                               "--out", str(tmp_path / "run")]))
    after = [p for p in everything_under(tmp_path) if not p.startswith("www")]
    assert after == [p for p in before if not p.startswith("www")]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_a_download_from_a_closed_port_leaves_no_folder(tmp_path, capsys):
    line = one_line(capsys, cli.main(["download", "mnist", "--data-dir", str(tmp_path / "a" / "b")]))
    assert "127.0.0.1:9" in line
    assert not (tmp_path / "a").exists()
    before = everything_under(tmp_path)
    one_line(capsys, cli.main(["train", "--model", "simple_convnet", "--epochs", "1", "--no-progress"]))
    assert everything_under(tmp_path) == before  # no runs/, no cache


def test_evaluating_on_another_data_set_warns_in_one_line(trained, data_dir, tmp_path, capsys):
    fashion = write_dataset(tmp_path / "fashion", n_train=20, n_test=30, seed=2)  # the same file names
    code = cli.main(["evaluate", "--checkpoint", str(trained / "checkpoint.npz"), "--dataset", "fashion-mnist",
                     "--data-dir", fashion, "--no-download"])
    captured = capsys.readouterr()
    assert code == 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnn-xp: warning: "), captured.err
    assert "trained on mnist" in lines[0] and "on fashion-mnist" in lines[0]
    assert captured.out.splitlines()[0] == "simple_convnet (epoch 1) on fashion-mnist test set, 30 images"
    # the data set it was trained on: no warning
    assert cli.main(["evaluate", "--checkpoint", str(trained / "checkpoint.npz"), "--data-dir", data_dir,
                     "--no-download"]) == 0
    assert capsys.readouterr().err == ""


def test_a_zoo_validation_size_is_scaled_to_limit_train(data_dir, tmp_path, capsys):
    out = tmp_path / "one"
    assert train(data_dir, out, "--epochs", "1", "--limit-train", "200", "--limit-test", "20",
                 model="one_conv") == 0
    captured = capsys.readouterr()
    data_line = [line for line in captured.out.splitlines() if line.startswith("data: ")]
    assert len(data_line) == 1 and "Traceback" not in captured.err
    assert "167 train, 33 validation (the model's 10,000 of 60,000 scaled in proportion" in data_line[0]
    recipe = load_checkpoint(out / "checkpoint.npz").meta["recipe"]
    assert recipe["val_size"] == 33 and recipe["limit_train"] == 200
    assert all(r["val_acc"] != "" for r in metrics(out))
    # an explicit --val-size is never scaled, and one that leaves nothing to train on is refused
    assert train(data_dir, tmp_path / "two", "--epochs", "1", "--limit-train", "100", "--val-size", "60",
                 model="one_conv") == 0
    assert "40 train, 60 validation, " in capsys.readouterr().out
    line = one_line(capsys, train(data_dir, tmp_path / "three", "--epochs", "1", "--limit-train", "50",
                                  "--val-size", "50", model="one_conv"))
    assert "--val-size 50 leaves no training images" in line
    assert not (tmp_path / "three").exists()


def test_val_size_0_validates_on_the_test_set(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "2", "--val-size", "0", "--limit-test", "40") == 0
    stdout = capsys.readouterr().out
    assert "200 train, validation on the test set" in stdout and "40 test images" in stdout
    rows = metrics(out)
    assert len(rows) == 2 and all(r["val_loss"] != "" and r["val_acc"] != "" for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["validation"] == "test"
    assert float(rows[-1]["val_acc"]) == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert float(rows[-1]["val_loss"]) == pytest.approx(summary["test_loss"], abs=1e-5)


def test_train_says_how_many_epochs_it_trains(data_dir, tmp_path, capsys):
    assert train(data_dir, tmp_path / "run", "--epochs", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "training 2 epochs (--epochs N to change)" in lines
    assert lines.index("training 2 epochs (--epochs N to change)") < min(
        i for i, line in enumerate(lines) if line.startswith("epoch "))


# -- resume ----------------------------------------------------------------------------------
class StopAt(Callback):
    """Ctrl-C at the start of epoch ``epoch``."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def interrupted_run(data_dir, out, monkeypatch, capsys, *extra, at=2):
    real_fit = train_module.fit
    monkeypatch.setattr(train_module, "fit", lambda *a, callbacks=(), **kw: real_fit(
        *a, callbacks=[*callbacks, StopAt(at)], **kw))
    code = train(data_dir, out, *extra)
    monkeypatch.setattr(train_module, "fit", real_fit)
    line = one_line(capsys, code, expected=130, prefix="cnn-xp: stopped by SIGINT")
    assert f"holds epoch {at - 1}" in line
    return line


def test_resume_alone_continues_a_run(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted_run(data_dir, out, monkeypatch, capsys, "--epochs", "3", "--lr", "0.002", "--val-size", "20")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the data dir comes from the run, not from here
    assert cli.main(["train", "--resume", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert f"resuming {out} after epoch 1 of 3" in stdout and "training 3 epochs" not in stdout
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert ckpt.meta["epoch"] == 3 and ckpt.meta["recipe"]["lr"] == 0.002 and ckpt.meta["recipe"]["val_size"] == 20
    assert [int(r["epoch"]) for r in metrics(out)] == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3


def test_resume_without_a_folder_takes_the_newest_run(data_dir, tmp_path, capsys):
    argv = ["train", "--model", "simple_convnet", "--data-dir", data_dir, "--epochs", "1", "--no-progress",
            "--no-download", "--limit-test", "20"]
    assert cli.main(argv) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    assert cli.main(["train", "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert f"resuming {run.relative_to(tmp_path)} after epoch 1 of 2" in capsys.readouterr().out
    assert load_checkpoint(run / "checkpoint.npz").meta["epoch"] == 2


def test_resume_past_a_finished_cosine_schedule_replans_it(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "2", "--schedule", "cosine", "--limit-test", "20") == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(out), "--epochs", "4", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    replan = [line for line in stdout.splitlines() if line.startswith("schedule: ")]
    assert replan == ["schedule: the cosine schedule was planned over 2 epochs; re-planned over 4, continuing "
                      "from the step it reached, so epochs 3-4 train at a live learning rate"]
    rows = metrics(out)
    lrs = [float(r["lr"]) for r in rows]
    assert len(lrs) == 4 and lrs[2] > 0 and lrs[3] > 0
    assert lrs[0] > lrs[1] and lrs[2] > lrs[3]  # the cosine goes on falling from where it was
    assert load_checkpoint(out / "checkpoint.npz").meta["recipe"]["schedule_epochs"] == 4
    assert cli.main(["train", "--resume", str(out), "--epochs", "5", "--no-progress"]) == 0
    assert ("schedule: the cosine schedule was planned over 4 epochs; re-planned over 5, continuing from the step "
            "it reached, so epoch 5 trains at a live learning rate") in capsys.readouterr().out.splitlines()
    assert float(metrics(out)[4]["lr"]) > 0


def test_resume_refuses_a_changed_lr_and_applies_a_new_data_dir(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "1", "--limit-test", "20") == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    line = one_line(capsys, cli.main(["train", "--resume", str(out), "--epochs", "2", "--lr", "0.5"]))
    assert line == ("cnn-xp: error: --resume continues the run's recipe; --lr 0.5 differs from the run's 0.001 "
                    "(start a new run to change it)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, no .lock left
    moved = write_dataset(tmp_path / "moved", n_train=200, n_test=100)  # the data set, in a new place
    assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--data-dir", moved, "--no-progress"]) == 0
    assert f"data: mnist from {moved}: " in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint.npz").meta["recipe"]["data_dir"] == moved
    assert json.loads((out / "summary.json").read_text())["recipe"]["data_dir"] == moved


# -- the kernels warning, --help, --json -----------------------------------------------------------
def test_missing_compiled_kernels_make_train_warn_in_one_line(data_dir, tmp_path, capsys, monkeypatch,
                                                             kernel_mode):
    kernel_mode("auto")
    monkeypatch.setattr(dispatch, "_warned", set())
    monkeypatch.setattr(dispatch, "accelerator", lambda device: (None, "cnn_xp.kernels.cpu is not built"))
    assert train(data_dir, tmp_path / "run", "--epochs", "1", "--limit-train", "50", "--limit-test", "20") == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("cnn-xp: warning: the compiled CPU kernels are not usable "
                               "(cnn_xp.kernels.cpu is not built); the reference ops run instead")


def test_no_kernels_warning_with_the_kernels_or_in_reference_mode(data_dir, tmp_path, capsys, monkeypatch,
                                                                  kernel_mode):
    monkeypatch.setattr(dispatch, "_warned", set())
    kernel_mode("reference")  # asked for: no warning even without them
    real_accelerator = dispatch.accelerator
    monkeypatch.setattr(dispatch, "accelerator", lambda device: (None, "not built"))
    assert train(data_dir, tmp_path / "a", "--epochs", "1", "--limit-train", "50", "--limit-test", "20") == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(dispatch, "accelerator", real_accelerator)
    kernel_mode("auto")
    if dispatch.accelerator("cpu")[0] is None:
        pytest.skip("the compiled CPU kernels are not built here")
    monkeypatch.setattr(dispatch, "_warned", set())
    assert train(data_dir, tmp_path / "b", "--epochs", "1", "--limit-train", "50", "--limit-test", "20") == 0
    assert capsys.readouterr().err == ""


HEAVY = ("matplotlib", "PIL", "tqdm", "cupy", "pooch")
IMPORTS = """
import sys
from cnn_xp.app import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("HEAVY", ",".join(m for m in {heavy!r} if m in sys.modules))
print("STATUS", code)
"""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["--version"]])
def test_help_imports_no_heavy_module(argv):
    proc = subprocess.run([sys.executable, "-c", IMPORTS.format(heavy=HEAVY), *argv], capture_output=True,
                          text=True, env=child_env(), timeout=60, cwd=ROOT)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines[-1] == "STATUS 0", proc.stderr
    assert lines[-2] == "HEAVY ", lines[-2]
    assert "usage: cnn-xp" in proc.stdout or "cnn-xp " in proc.stdout


def test_the_import_check_sees_heavy_modules():
    """The control of the test above: its check sees what is imported."""
    code = "import sys, tqdm, PIL.Image\nprint(','.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60)
    assert proc.stdout.split() == ["PIL,tqdm"] or proc.stdout.split() == ["tqdm,PIL"], proc.stderr


def test_train_json_prints_the_summary_on_stdout_and_the_log_on_stderr(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out, "--epochs", "1", "--limit-test", "20", "--json") == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["test_images"] == 20
    assert "training 1 epochs" in captured.err and "epoch 1/1" in captured.err and "data: mnist" in captured.err


def test_train_json_of_a_mistake_prints_nothing_on_stdout(data_dir, tmp_path, capsys):
    code = train(data_dir, tmp_path / "run", "--epochs", "1", "--lr", "0", "--json")
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.splitlines() == ["cnn-xp: error: --lr must be a positive number, got 0.0"]


def test_evaluate_json_is_parseable(trained, data_dir, capsys):
    assert cli.main(["evaluate", "--checkpoint", str(trained / "checkpoint.npz"), "--data-dir", data_dir,
                     "--no-download", "--json", "--limit-test", "25"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["model"] == "simple_convnet" and result["epoch"] == 1 and result["dataset"] == "mnist"
    assert result["n"] == 25 and 0 <= result["accuracy"] <= 1 and result["loss"] > 0
    assert list(result["per_class"]) == [str(k) for k in range(10)]
    assert captured.err == ""
