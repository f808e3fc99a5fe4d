"""The layout rules of docs/design.md, read from the source (AST), not from a list:

- the library never imports the application (``cnn_xp.app``);
- ops, layers, model and optimizers never import the accelerators (``cnn_xp.kernels``):
  only ``cnn_xp.dispatch`` reaches them;
- the reference ops have no device, layout or accelerator branches;
- there are no import circles between cnn_xp's modules.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cnn_xp"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """The cnn_xp modules ``path`` imports (anywhere in it, functions included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("cnn_xp")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("cnn_xp"):
                target = node.module
            else:
                continue
            for alias in node.names:  # "from . import backend" imports the module cnn_xp.backend
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("cnn_xp"):
                found.add(node.args[0].value)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_the_graph_sees_real_imports():
    assert "cnn_xp.backend" in GRAPH["cnn_xp.layers.conv"] and "cnn_xp.dispatch" in GRAPH["cnn_xp.layers.conv"]
    assert "cnn_xp.app.train" in GRAPH["cnn_xp.app.cli"]
    assert "cnn_xp.ops" in GRAPH["cnn_xp.dispatch"]  # importlib.import_module("cnn_xp.ops")


def test_library_never_imports_the_application():
    bad = {m: sorted(i for i in deps if i.startswith("cnn_xp.app"))
           for m, deps in GRAPH.items() if not m.startswith("cnn_xp.app") and m != "cnn_xp.__main__"}
    assert not {m: d for m, d in bad.items() if d}


@pytest.mark.parametrize("prefix", ["cnn_xp.ops", "cnn_xp.layers", "cnn_xp.model", "cnn_xp.optim",
                                    "cnn_xp.parallel", "cnn_xp.models"])
def test_only_dispatch_reaches_the_accelerators(prefix):
    for module, deps in GRAPH.items():
        if module == prefix or module.startswith(prefix + "."):
            assert not [d for d in deps if d.startswith("cnn_xp.kernels")], module


def test_no_import_circles():
    """Tarjan's strongly connected components of the module graph: all of size one."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


# Names whose use in a reference op would be a device, layout or accelerator branch.
BRANCH_NAMES = {"device_of", "get_xp", "cupy", "gpu_available", "gpu_status", "applies", "dispatch", "kernels"}
LAYOUT_ATTRIBUTES = {"strides", "flags"}


@pytest.mark.parametrize("path", sorted((PACKAGE / "ops").glob("*.py")), ids=lambda p: p.name)
def test_reference_ops_have_no_device_or_layout_branches(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            assert node.id not in BRANCH_NAMES, f"{path.name}:{node.lineno} uses {node.id}"
        elif isinstance(node, ast.Attribute):
            assert node.attr not in BRANCH_NAMES | LAYOUT_ATTRIBUTES, f"{path.name}:{node.lineno} uses .{node.attr}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert node.value not in ("cpu", "gpu", "cuda"), f"{path.name}:{node.lineno} names a device"
        elif isinstance(node, ast.ImportFrom):
            assert node.module not in ("..kernels", "kernels") and "kernels" not in (node.module or ""), path.name
