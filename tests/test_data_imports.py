"""cnn_xp.data has no import circles (lazy imports inside functions count too) and never
imports the application."""
import ast
from pathlib import Path

import cnn_xp.data

PACKAGE = Path(cnn_xp.data.__file__).parent
MODULES = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(sibling modules of cnn_xp.data imported anywhere in ``path``, absolute names imported)."""
    siblings, absolute = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    siblings.add(node.module.split(".")[0])
                else:
                    siblings.update(a.name for a in node.names if a.name in MODULES)
            elif node.level == 0 and node.module:
                absolute.add(node.module)
                if node.module.startswith("cnn_xp.data."):
                    siblings.add(node.module.split(".")[2])
            elif node.level == 2 and node.module:
                absolute.add("cnn_xp." + node.module)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                absolute.add(alias.name)
                if alias.name.startswith("cnn_xp.data."):
                    siblings.add(alias.name.split(".")[2])
    return siblings & MODULES, absolute


def test_no_import_circles_in_the_data_package():
    graph = {name: imports_of(PACKAGE / f"{name}.py")[0] for name in MODULES}
    assert graph["loader"] >= {"download", "idx", "sources"}  # the parser sees real edges
    visiting, done = [], set()

    def visit(node):
        if node in done:
            return
        assert node not in visiting, f"import circle: {' -> '.join(visiting[visiting.index(node):] + [node])}"
        visiting.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        visiting.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_the_data_package_never_imports_the_application():
    for path in PACKAGE.glob("*.py"):
        _, absolute = imports_of(path)
        assert not any(name == "cnn_xp.app" or name.startswith("cnn_xp.app.") for name in absolute), path
