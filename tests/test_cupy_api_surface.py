"""Every array-module name the code uses must exist in the real CuPy, with the keywords used.

Scanned: the package (the reference ops, layers, the CUDA accelerator cnn_xp/kernels/cuda,
backend, model, optim, the application) and the code that runs only on a GPU machine (the
GPU test suite tests/gpu, scripts/gpu_check.py).

The names are collected from the source itself (ast), never from a hand list: every attribute
chain hung on an array module -- a variable named ``xp`` or ``cp``, or a call to ``xp_of(...)``,
``get_xp(...)``, ``cupy()`` -- e.g. ``xp.lib.stride_tricks.sliding_window_view``, ``xp.add.at``,
``xp_of(x).tanh``, ``cp.random.RandomState``. cupy imports without a GPU, so this runs in CI
and catches a NumPy-only habit (a missing function, ``initial=``/``where=`` on a reduction)
before it meets a GPU.
"""
import ast
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cnn_xp"
SCANNED = [PACKAGE, ROOT / "tests" / "gpu", ROOT / "scripts" / "gpu_check.py"]
MODULE_NAMES = {"xp", "cp"}                      # variables that hold the array module
MODULE_FACTORIES = {"xp_of", "get_xp", "cupy"}  # calls that return it


@dataclass
class Use:
    chain: str                       # dotted attribute path below the module, e.g. "add.at"
    where: list = field(default_factory=list)      # "file:line"
    calls: list = field(default_factory=list)      # (n_positional, keyword names, where)


def _base_is_module(node) -> bool:
    if isinstance(node, ast.Name):
        return node.id in MODULE_NAMES
    if isinstance(node, ast.Call) and not node.args and not node.keywords:
        func = node.func  # cupy() / backend.cupy()
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        return name == "cupy"
    if isinstance(node, ast.Call):
        func = node.func  # xp_of(x) / backend.xp_of(x) / get_xp(device)
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        return name in MODULE_FACTORIES - {"cupy"}
    return False


def _chain(node):
    """("lib", "stride_tricks", "sliding_window_view") for an Attribute rooted at a module, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if parts and _base_is_module(node):
        return tuple(reversed(parts))
    return None


def collect(source: str, filename: str) -> dict:
    """chain -> Use for one module's source."""
    tree = ast.parse(source, filename)
    uses: dict = {}
    inner = set()  # Attribute nodes that are part of a longer chain
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            inner.add(id(node.value))
    for node in ast.walk(tree):
        chain = None
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = _chain(node)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "getattr" and len(node.args) >= 2
              and _base_is_module(node.args[0]) and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str)):
            chain = (node.args[1].value,)
        if chain is None:
            continue
        use = uses.setdefault(".".join(chain), Use(".".join(chain)))
        use.where.append(f"{filename}:{node.lineno}")
    # Record the calls made through each chain, to check positional count and keywords.
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            chain = _chain(node.func)
            if chain is None:
                continue
            starred = any(isinstance(a, ast.Starred) for a in node.args)
            splat = any(k.arg is None for k in node.keywords)
            if starred or splat:
                continue
            uses[".".join(chain)].calls.append(
                (len(node.args), [k.arg for k in node.keywords], f"{filename}:{node.lineno}"))
    return uses


def scanned_files() -> list[Path]:
    files = []
    for place in SCANNED:
        files += sorted(place.rglob("*.py")) if place.is_dir() else [place]
    return files


def collect_package() -> dict:
    """chain -> Use over every scanned file."""
    merged: dict = {}
    for path in scanned_files():
        rel = path.relative_to(ROOT).as_posix()
        for chain, use in collect(path.read_text(encoding="utf-8"), rel).items():
            into = merged.setdefault(chain, Use(chain))
            into.where += use.where
            into.calls += use.calls
    return merged


def resolve(module, chain: str):
    obj = module
    for part in chain.split("."):
        obj = getattr(obj, part)
    return obj


def call_problems(target, calls) -> list:
    """Calls whose positional count or keywords the target's signature rejects."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # ufuncs, Cython callables: not introspectable
        return []
    problems = []
    for n_args, keywords, where in calls:
        try:
            sig.bind_partial(*([None] * n_args), **{k: None for k in keywords})
        except TypeError as exc:
            problems.append(f"{where}: {exc}")
    return problems


# -- the collector itself (so the real test below cannot pass vacuously) ------------------------

def test_collector_finds_nested_chains_ufunc_methods_and_factories():
    src = (
        "def f(x, device):\n"
        "    xp = xp_of(x)\n"
        "    v = xp.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(2, 3))\n"
        "    xp.add.at(v, 0, 1)\n"
        "    y = xp.zeros(3).astype('f')\n"
        "    z = backend.xp_of(x).tanh(x)\n"
        "    k = backend.cupy().ElementwiseKernel\n"
        "    r = xp.random.RandomState(0).rand(2)\n"
        "    g = getattr(xp, 'float32')\n"
        "    return x.max(axis=0)\n"
    )
    uses = collect(src, "demo.py")
    assert set(uses) == {"lib.stride_tricks.sliding_window_view", "add.at", "zeros", "tanh",
                         "ElementwiseKernel", "random.RandomState", "float32"}
    assert uses["lib.stride_tricks.sliding_window_view"].calls == [(2, ["axis"], "demo.py:3")]


def test_call_check_rejects_numpy_only_keywords():
    cp = pytest.importorskip("cupy")
    uses = collect("xp.max(a, axis=0, initial=0.0)\nxp.sum(a, where=m)\nxp.zeros(3, dtype=d)\n", "d.py")
    assert call_problems(resolve(cp, "max"), uses["max"].calls)
    assert call_problems(resolve(cp, "sum"), uses["sum"].calls)
    assert not call_problems(resolve(cp, "zeros"), uses["zeros"].calls)


# -- the real package ---------------------------------------------------------------------------

def test_every_xp_name_in_the_package_exists_in_cupy():
    cp = pytest.importorskip("cupy", reason="cupy is not installed (CI installs cupy-cuda12x)")
    uses = collect_package()
    assert len(uses) >= 10, f"suspiciously few array-module names collected: {sorted(uses)}"
    known = {"cnn_xp/ops/": ("pad", "zeros", "arange", "exp", "maximum"),
             "cnn_xp/kernels/cuda/": ("ElementwiseKernel", "ascontiguousarray", "broadcast_to",
                                      "cuda.compiler.CompileException"),
             "tests/gpu/": ("asarray",)}
    assert ROOT / "scripts" / "gpu_check.py" in scanned_files()
    for area, names in known.items():
        for name in names:
            assert name in uses and any(w.startswith(area) for w in uses[name].where), \
                f"collector missed {name!r} in {area}; got {sorted(uses)}"
    missing = []
    for chain, use in sorted(uses.items()):
        try:
            resolve(cp, chain)
        except AttributeError:
            missing.append(f"cupy.{chain} (used at {', '.join(use.where)})")
    assert not missing, "not in CuPy " + cp.__version__ + ":\n" + "\n".join(missing)


def test_every_xp_call_in_the_package_fits_the_cupy_signature():
    cp = pytest.importorskip("cupy", reason="cupy is not installed (CI installs cupy-cuda12x)")
    uses = collect_package()
    assert any(use.calls for use in uses.values())
    problems = []
    for chain, use in sorted(uses.items()):
        target = _try_resolve(cp, chain)
        if target is not None:
            problems += [f"cupy.{chain}: {p}" for p in call_problems(target, use.calls)]
    assert not problems, "\n".join(problems)


def _try_resolve(module, chain):
    try:
        return resolve(module, chain)
    except AttributeError:
        return None  # reported by the existence test
