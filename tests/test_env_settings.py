"""One parser per environment variable: each CNN_XP_* setting is read in exactly one function,
and a bad value is refused the same way (one line ``cnn-xp: error: ...``, exit status 2, no
traceback) by every command that uses it."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnn_xp import dispatch
from cnn_xp.app import cli
from tiny_idx import draw_digit_one
from train_helpers import data_dir, isolated, offline, train  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]

# Every variable the package reads, and the one function that reads it (module:function).
READERS = {
    "CNN_XP_THREADS": "cnn_xp/parallel.py:thread_setting",
    "CNN_XP_KERNELS": "cnn_xp/dispatch.py:mode",
    "CNN_XP_DATA": "cnn_xp/data/sources.py:data_env",
    "CNN_XP_MIRRORS_<NAME>": "cnn_xp/data/sources.py:mirrors_for",
    "CNN_XP_CPU_ISA": "cnn_xp/kernels/cpu/_variant.py:requested",
}
# Readers naming their variable by a local: the mirrors' (``var = mirror_env_var(name)``).
LOCALS = {"var": "CNN_XP_MIRRORS_<NAME>"}


def environment_reads():
    """(variable, 'file:function') for every os.environ / os.getenv read in the package; a
    variable named by a module-level string constant is resolved to its value."""
    reads = []
    for path in sorted((ROOT / "cnn_xp").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                     and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                     for target in node.targets if isinstance(target, ast.Name)}
        for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(func):
                key = None
                if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv"):
                    key = node.args[0]
                elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                    key = node.slice
                elif isinstance(node, ast.Compare) and any(ast.unparse(c) == "os.environ" for c in node.comparators):
                    key = node.left
                if key is not None:
                    text = ast.unparse(key)
                    text = key.value if isinstance(key, ast.Constant) else constants.get(text, LOCALS.get(text, text))
                    reads.append((text, f"{path.relative_to(ROOT)}:{func.name}"))
    return reads


def test_every_cnn_xp_variable_has_exactly_one_reader():
    reads = [(name, where) for name, where in environment_reads() if name.startswith("CNN_XP_")]
    assert sorted(reads) == sorted(READERS.items()), reads  # each read once, by its one parser


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert train(data_dir, out, "--epochs", "1") == 0
    return out / "checkpoint.npz"


@pytest.fixture
def fresh_settings():
    """The kernel mode is read from the environment afresh, and forgotten afterwards."""
    dispatch.set_mode(None)
    yield
    dispatch.set_mode(None)


def command(name, trained, data_dir, tmp_path):
    return {
        "train": ["train", "--model", "simple_convnet", "--dataset", "mnist", "--data-dir", data_dir,
                  "--epochs", "1", "--out", str(tmp_path / "run"), "--no-download", "--no-progress"],
        "evaluate": ["evaluate", "--checkpoint", str(trained), "--data-dir", data_dir, "--no-download"],
        "predict": ["predict", "--checkpoint", str(trained), draw_digit_one(tmp_path / "one.png")],
        "download": ["download", "mnist", "--data-dir", str(tmp_path / "dl")],
    }[name]


MIRRORS_ERROR = "cnn-xp: error: CNN_XP_MIRRORS_MNIST must hold http:// or https:// URLs (separated by spaces or commas), got "
BAD_SETTINGS = {  # (variable, value): (the commands using it, the one line they all print)
    ("CNN_XP_THREADS", "abc"): (("train", "evaluate", "predict"),
                                "cnn-xp: error: CNN_XP_THREADS must be a positive integer, got 'abc'"),
    ("CNN_XP_THREADS", "0"): (("evaluate", "predict"), "cnn-xp: error: CNN_XP_THREADS must be a positive integer, got '0'"),
    ("CNN_XP_KERNELS", "fast"): (("train", "evaluate", "predict"),
                                 "cnn-xp: error: unknown kernel mode 'fast'; choose one of auto, reference"),
    ("CNN_XP_MIRRORS_MNIST", "ftp://mirror.example/mnist/"): (
        ("download", "train", "evaluate"), MIRRORS_ERROR + "'ftp://mirror.example/mnist/': ftp://mirror.example/mnist/ is not one"),
    ("CNN_XP_MIRRORS_MNIST", "file:///srv/mnist/"): (
        ("download", "evaluate"), MIRRORS_ERROR + "'file:///srv/mnist/': file:///srv/mnist/ is not one"),
    ("CNN_XP_MIRRORS_MNIST", "https://ok.example/, mirror.example"): (
        ("download", "evaluate"), MIRRORS_ERROR + "'https://ok.example/, mirror.example': mirror.example is not one"),
}


@pytest.mark.parametrize("setting", list(BAD_SETTINGS), ids=lambda s: f"{s[0]}={s[1]}")
def test_a_bad_value_is_one_line_in_every_command_using_it(setting, trained, data_dir, tmp_path, monkeypatch,
                                                           capsys, fresh_settings):
    variable, value = setting
    commands, expected = BAD_SETTINGS[setting]
    monkeypatch.setenv(variable, value)
    for name in commands:
        code = cli.main(command(name, trained, data_dir, tmp_path))
        captured = capsys.readouterr()
        assert code == 2, (name, captured)
        assert captured.err.splitlines() == [expected], (name, captured.err)
        assert name == "train" or captured.out == "", (name, captured.out)  # train says what it starts
    assert not (tmp_path / "run").exists() and not (tmp_path / "dl").exists()


def test_a_non_http_mirror_in_a_real_process(tmp_path):
    """Once an AttributeError traceback from pooch."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), CNN_XP_MIRRORS_MNIST="file:///srv/mnist/")
    proc = subprocess.run([sys.executable, "-m", "cnn_xp", "download", "mnist", "--data-dir", str(tmp_path / "dl")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        MIRRORS_ERROR + "'file:///srv/mnist/': file:///srv/mnist/ is not one"], proc.stderr


def test_good_values_are_used(trained, data_dir, tmp_path, monkeypatch, capsys, fresh_settings):
    monkeypatch.setenv("CNN_XP_THREADS", "2")
    monkeypatch.setenv("CNN_XP_KERNELS", "reference")
    monkeypatch.setenv("CNN_XP_MIRRORS_MNIST", "http://127.0.0.1:9/ https://mirror.example/mnist")
    for name in ("evaluate", "predict"):
        assert cli.main(command(name, trained, data_dir, tmp_path)) == 0, capsys.readouterr().err
    assert dispatch.mode() == "reference"
