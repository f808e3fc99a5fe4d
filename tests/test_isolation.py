"""Device isolation: only cnn_xp/backend.py imports cupy; op/layer/model/optimizer code never
names numpy either (it asks ``xp_of``); importing or running cnn_xp on the CPU loads no cupy."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cnn_xp"
BACKEND = PACKAGE / "backend.py"
CUPY_ROOTS = {"cupy", "cupyx", "cupy_backends"}
NUMPY_ROOTS = {"numpy"}
NUMPY_NAMES = {"np", "numpy"}


def device_code_files():
    """Op, layer, model and optimizer modules: written against xp only."""
    files = sorted((PACKAGE / "ops").glob("*.py")) + sorted((PACKAGE / "layers").glob("*.py"))
    files += [p for p in (PACKAGE / "model.py", PACKAGE / "optim.py") if p.exists()]
    return files


def imported_roots(tree):
    """(root package, line) for every import statement and importlib/__import__ call."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in ("import_module", "__import__") and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.args[0].value.split(".")[0], node.lineno))
    return found


def numpy_name_uses(tree):
    """Lines where a bare ``np`` / ``numpy`` name is used (np.zeros, numpy.float32, ...)."""
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Name) and node.id in NUMPY_NAMES]


def _rel(path):
    return path.relative_to(ROOT).as_posix()


def test_checkers_catch_each_form():
    src = ("import cupy\nimport cupyx.scipy\nfrom cupy import cuda\nimport importlib\n"
           "m = importlib.import_module('cupy')\nn = __import__('numpy')\nx = np.zeros(3)\n")
    roots = imported_roots(ast.parse(src))
    assert sorted(roots) == [("cupy", 1), ("cupy", 3), ("cupy", 5), ("cupyx", 2),
                             ("importlib", 4), ("numpy", 6)]
    assert numpy_name_uses(ast.parse(src)) == [7]


def test_package_has_the_device_code_to_check():
    files = {_rel(p) for p in device_code_files()}
    assert {"cnn_xp/ops/conv.py", "cnn_xp/layers/conv.py"} <= files, files


def test_only_backend_imports_cupy():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == BACKEND:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        offenders += [f"{_rel(path)}:{line} imports {root}"
                      for root, line in imported_roots(tree) if root in CUPY_ROOTS]
    assert not offenders, "only cnn_xp/backend.py may import cupy:\n" + "\n".join(offenders)
    # ...and the backend really is where it happens (lazily, through importlib).
    assert "cupy" in {root for root, _ in imported_roots(ast.parse(BACKEND.read_text()))}


@pytest.mark.parametrize("path", device_code_files(), ids=_rel)
def test_device_code_never_names_numpy(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    imports = [f"line {line}: imports {root}" for root, line in imported_roots(tree)
               if root in NUMPY_ROOTS | CUPY_ROOTS]
    names = [f"line {line}: uses np/numpy" for line in numpy_name_uses(tree)]
    assert not imports + names, f"{_rel(path)} must use xp = xp_of(x):\n" + "\n".join(imports + names)


def _run(code):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_importing_every_module_loads_no_cupy():
    out = _run(
        "import importlib, pkgutil, sys\n"
        "import cnn_xp\n"
        "names = [m.name for m in pkgutil.walk_packages(cnn_xp.__path__, 'cnn_xp.')\n"
        "         if not m.name.endswith('__main__')]  # __main__ runs the CLI when imported\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'cupyx', 'cupy_backends'))\n"
        "print(len(names), 'modules;', 'cupy loaded:', loaded)\n"
    )
    count = int(out.split()[0])
    assert count >= 10, out
    assert "cupy loaded: []" in out, out


def test_cpu_training_step_loads_no_cupy():
    pytest.importorskip("cnn_xp.models")
    pytest.importorskip("cnn_xp.optim")
    out = _run(
        "import sys, numpy as np\n"
        "import cnn_xp.models, cnn_xp.optim\n"
        "model = cnn_xp.models.build('simple_convnet', seed=0, device='cpu')\n"
        "opt = cnn_xp.optim.Adam(model, lr=1e-3)\n"
        "x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)\n"
        "t = np.arange(4) % 10\n"
        "loss = model.loss(x, t); model.backward(); opt.step()\n"
        "print(float(loss), 'cupy' in sys.modules)\n"
    )
    loss, loaded = out.split()
    assert float(loss) > 0.0
    assert loaded == "False", "a CPU training step imported cupy"
