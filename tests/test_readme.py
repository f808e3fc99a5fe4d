"""README.md runs as written, and the documentation's links resolve.

Every ```python block of README.md runs in its own subprocess, from an empty folder, with
the package of this checkout (PYTHONPATH) and the data sets already in the per-user cache:
the real MNIST files (../shared/datasets/mnist beside the repository) are linked into the
cache folder the library searches (``XDG_CACHE_HOME`` is a temporary folder), and the
download mirrors point at a closed local port, so nothing is fetched. Without the real MNIST
files the blocks skip, saying so; a README without a python block fails.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cnn_xp.data.sources import BASE_NAMES, cache_dir

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
FASHION = Path("/usr/share/datasets/fashion-mnist")
CLOSED_PORT = "http://127.0.0.1:9/"  # the discard port: nothing listens, a download fails at once
BLOCK_SECONDS = 300
MAX_README_LINES = 150

FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def readme_blocks() -> list[str]:
    return python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks_and_the_extraction_finds_them():
    assert python_blocks("x\n```python\nprint(1)\n```\n```bash\nls\n```\n```python\nprint(2)\n```\n") \
        == ["print(1)\n", "print(2)\n"]
    assert readme_blocks(), "README.md has no ```python block: the README test would check nothing"


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/ (docs/README.md)"


def test_ci_runs_the_readme_test_command():
    readme = README.read_text(encoding="utf-8")
    assert 'pip install -e ".[test]" && python -m pytest -q' in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^python -m pytest -q$", ci, re.M), ".ci/run no longer runs the README's test command"


@pytest.fixture
def cached_data(tmp_path, monkeypatch):
    """XDG_CACHE_HOME in tmp_path, MNIST linked into its cnn_xp cache folder; the environment
    for the blocks."""
    if not all((MNIST / f"{base}.gz").is_file() for base in BASE_NAMES.values()):
        pytest.skip(f"the real MNIST files are not in {MNIST} (gzipped IDX, as ../shared/datasets/mnist "
                    "beside the repository): README's python blocks train on them")
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    folder = cache_dir("mnist")
    assert folder.is_relative_to(cache), folder  # the library searches where the files are put
    folder.mkdir(parents=True)
    for base in BASE_NAMES.values():
        (folder / f"{base}.gz").symlink_to(MNIST / f"{base}.gz")
    env = {k: v for k, v in os.environ.items() if k != "CNN_XP_DATA"}  # a named folder would be searched alone
    env.update(XDG_CACHE_HOME=str(cache), CNN_XP_MIRRORS_MNIST=CLOSED_PORT,
               CNN_XP_MIRRORS_FASHION_MNIST=CLOSED_PORT, MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_python_block_runs(index, cached_data, tmp_path):
    code = readme_blocks()[index]
    if "fashion-mnist" in code and not FASHION.is_dir():  # the library finds Debian's files there itself
        pytest.skip(f"README python block {index + 1} uses Fashion-MNIST, not in {FASHION} "
                    "(apt-get install dataset-fashion-mnist)")
    work = tmp_path / "work"
    work.mkdir()
    script = work / f"readme_block_{index}.py"
    script.write_text(code, encoding="utf-8")
    try:
        done = subprocess.run([sys.executable, script.name], cwd=work, env=cached_data, capture_output=True,
                              text=True, timeout=BLOCK_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"README python block {index + 1} ran past {BLOCK_SECONDS} s")
    assert done.returncode == 0, (f"README python block {index + 1} failed (status {done.returncode}):\n{code}\n"
                                  f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
    assert not list((tmp_path / "cache").rglob("*.tmp")), "a block tried to download"


# -- links -------------------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCED = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.S | re.M)


def documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file."""
    return heading_anchors(path.read_text(encoding="utf-8"))


def heading_anchors(text: str) -> set[str]:
    text = FENCED.sub("", text)  # a "# comment" in a code block is no heading
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def relative_links(path: Path) -> list[str]:
    text = CODE.sub("", path.read_text(encoding="utf-8"))  # links shown as code are not links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I)]


def test_link_extraction():
    sample = "see [a](docs/x.md), ![img](images/p.png), [web](https://example.org) and `[no](nowhere.md)`\n"
    assert [t for t in LINK.findall(CODE.sub("", sample))] == ["docs/x.md", "images/p.png", "https://example.org"]
    assert heading_anchors("# Errors: `cnn_xp.errors`\n```\n# not a heading\n```\n## Real training (1.30x)\n") \
        == {"errors-cnn_xperrors", "real-training-130x"}


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    broken = []
    for target in relative_links(doc):
        file_part, _, fragment = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target} (no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif not dest.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {dest.relative_to(ROOT)})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: {', '.join(broken)}"


def test_docs_index_lists_every_page_and_folder():
    linked = {target.partition("#")[0].rstrip("/") for target in relative_links(ROOT / "docs" / "README.md")}
    entries = {p.name for p in (ROOT / "docs").iterdir() if p.name != "README.md" and not p.name.startswith(".")}
    assert entries <= linked, f"docs/README.md does not list: {', '.join(sorted(entries - linked))}"
