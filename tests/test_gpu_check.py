"""scripts/gpu_check.py, the prepared GPU check, dry-run on the CPU (``--device cpu --quick``):
every step runs for real on tiny generated data sets (Fashion-MNIST and MNIST look-alikes),
the CPU standing in for the GPU (its accelerator for "auto"), so the script cannot rot
between the sessions that are lent a GPU. Also its timeouts (a step that hangs is killed,
with its children) and its one-line error for a bad output folder."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
STEPS = ["doctor", "warmup", "mnist", "train", "kernels", "train_cpu", "bench", "pytest"]


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load_script()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check_out")
    tic = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--device", "cpu", "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    return out, proc, time.monotonic() - tic


def test_dry_run_passes_every_step(dry_run):
    out, proc, wall = dry_run
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == STEPS == list(gpu_check.STEPS)
    bad = {name: s for name, s in steps.items() if s["status"] != "ok"}
    assert not bad, f"{bad}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0 and summary["ok"] is True
    assert all(s["wall_s"] >= 0 for s in steps.values())
    assert summary["finished"] is True and summary["exit"] == "end" and summary["not_run"] == []
    assert summary["device"] == "cpu" and summary["quick"] is True
    assert wall < 120, f"the dry run took {wall:.0f}s"


def test_dry_run_writes_few_small_flat_files(dry_run):
    out, _, _ = dry_run
    files = sorted(p.name for p in out.iterdir())
    assert all((out / name).is_file() for name in files), "no subfolders"
    assert set(files) == {"summary.json", "doctor.txt", "train.txt", "kernels.json", "pytest.txt",
                          "bench.json", "bench.md"}
    assert len(files) <= 7
    assert all((out / name).stat().st_size < 200_000 for name in files)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["files"]) == set(files)


def test_dry_run_reports_training_and_the_loss_comparisons(dry_run):
    out, _, _ = dry_run
    results = json.loads((out / "summary.json").read_text())["results"]
    device_run, cpu_run = results["train_device"], results["train_cpu"]
    assert 0.0 <= device_run["test_accuracy"] <= 1.0
    assert device_run["test_accuracy"] > 0.3  # the tiny data set is learnable
    assert len(device_run["epoch_seconds"]) == 1 and device_run["epoch_seconds"][0] > 0
    assert len(results["train_device_reference"]["train_loss"]) == 1
    for key, run in (("first_epoch_loss", device_run), ("first_epoch_loss_reference",
                                                        results["train_device_reference"])):
        cmp = results[key]
        assert cmp["device_first_epoch_loss"] == run["train_loss"][0]
        assert cmp["cpu_first_epoch_loss"] == cpu_run["train_loss"][0]
        # the CPU accelerator or reference against the CPU reference, same seed: float rounding
        assert cmp["abs_diff"] < 1e-4 and cmp["rel_diff"] < 1e-4
    text = (out / "train.txt").read_text()
    for title in ("kernel mode reference, 1 epoch", f"MNIST, {gpu_check.MNIST_MODEL}", "CPU reference run (Fashion-MNIST",
                  "CPU reference run (MNIST parity"):
        assert title in text, title


def test_dry_run_trains_mnist_with_per_epoch_test_accuracy_and_the_parity_run(dry_run):
    out, _, _ = dry_run
    results = json.loads((out / "summary.json").read_text())["results"]
    mnist = results["mnist"]
    assert mnist["model"] == gpu_check.MNIST_MODEL and mnist["kernel_mode"] == "auto"
    assert mnist["data"].endswith("mnist") and mnist["train_images"] == 600
    assert mnist["model"] == "fast_mnist"  # the zoo's time-to-99% recipe
    assert set(mnist["ops"]) >= {"conv2d", "maxpool2d", "softmax_cross_entropy", "adam"}
    assert mnist["warm_seconds"] > 0  # the timed run starts warm
    run = mnist["run"]
    assert [h["epoch"] for h in run["history"]] == [1]
    assert 0.0 <= run["test_accuracy"] <= 1.0 and run["history"][0]["train_seconds"] > 0
    reached = run["time_to_target"]
    assert reached is None or (reached["epoch"] == 1 and reached["seconds"] > 0)
    parity = results["mnist_parity"]
    assert parity["images"] == 200 and parity["steps"] == 1
    assert set(parity["cpu_ops"].values()) == {"reference"}  # the CPU side is the reference
    assert parity["agree"] is True and parity["loss_max_rel_diff"] < 1e-4


def test_parity_comparison():
    base = {"images": 10, "losses": [2.0, 1.0], "test_accuracy": 0.5, "weights": {"0.W": [1.0, 2.0]}}
    same = gpu_check.compare_parity({"parity": base}, {"parity": base})
    assert same["agree"] and same["loss_max_rel_diff"] == 0 and same["weights_rel_l2_diff"] == 0
    off = dict(base, losses=[2.0, 1.1])
    assert not gpu_check.compare_parity({"parity": off}, {"parity": base})["agree"]
    assert "error" in gpu_check.compare_parity({}, {"parity": base})


def test_dry_run_compares_every_op_and_runs_doctor_and_bench(dry_run):
    from cnn_xp import dispatch
    out, _, _ = dry_run
    kernels = json.loads((out / "kernels.json").read_text())
    assert kernels["device"] == "cpu"
    assert set(kernels["cases"]) == set(dispatch.OPS) == set(kernels["ops"])
    for name, entry in kernels["cases"].items():
        assert "error" not in entry, (name, entry)
        assert entry["reference_us"] > 0 and entry["auto_us"] > 0 and entry["match"] is True
        assert entry["implementation"] == kernels["ops"][name]
        assert entry["reference_max_rel_diff_vs_cpu_reference"] == 0.0  # the same code
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"]["ops"] == kernels["ops"]
    doctor = (out / "doctor.txt").read_text()
    assert "cpu ops: conv2d" in doctor
    bench = json.loads((out / "bench.json").read_text())
    assert bench  # cnn-xp bench's own JSON
    pytest_log = (out / "pytest.txt").read_text()
    assert "skipped" in pytest_log and "tests/gpu" in pytest_log.splitlines()[0]  # tests/gpu only


def test_a_hanging_step_is_killed_with_its_children(tmp_path):
    log = tmp_path / "log.txt"
    tic = time.monotonic()
    rc, timed_out, wall = gpu_check.run(
        ["bash", "-c", "sleep 60 & echo started; sleep 60"], log, timeout=1.0)
    assert timed_out and rc is None
    assert time.monotonic() - tic < 10
    assert "started" in log.read_text()
    assert gpu_check.status_of(rc, timed_out) == "timeout"
    assert gpu_check.status_of(0, False) == "ok" and gpu_check.status_of(3, False) == "failed"


def test_no_budget_left_stops_every_step_at_once(tmp_path):
    out = tmp_path / "out"
    tic = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--device", "cpu", "--quick",
                           "--budget", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - tic < 60
    assert proc.returncode == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["steps"]] == STEPS
    assert summary["ok"] is False and summary["finished"] is True
    assert summary["steps"][-1]["status"] == "skipped"  # pytest: no time left
    assert {s["status"] for s in summary["steps"]} <= {"timeout", "failed", "skipped"}


def test_loss_comparison_with_a_missing_run():
    assert "error" in gpu_check.compare_first_epoch({"train_loss": [1.0]}, {})
    cmp = gpu_check.compare_first_epoch({"train_loss": [1.1, 0.5]}, {"train_loss": [1.0]})
    assert cmp["abs_diff"] == pytest.approx(0.1) and cmp["rel_diff"] == pytest.approx(0.1)


def test_unwritable_output_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(blocker / "out"), "--quick",
                           "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cannot create" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dry_run_warms_every_kernel_first_and_reports_its_time(dry_run):
    from cnn_xp import models
    out, _, _ = dry_run
    summary = json.loads((out / "summary.json").read_text())
    warm = summary["results"]["warmup"]
    assert warm["seconds"] > 0 and warm["errors"] == {}
    assert warm["parts"] == 2 * 2 * (len(models.MODELS) + 1)  # kernel modes x dtypes x (models + ops)
    names = [s["name"] for s in summary["steps"]]
    assert names.index("warmup") < names.index("mnist") < names.index("bench") < names.index("pytest")


class FakeCuPyError(RuntimeError):
    """Stands in for a CuPy error class (cupy_backends' CUDARuntimeError and the like)."""


def test_a_step_that_raises_is_recorded_with_the_error_class(tmp_path):
    check = gpu_check.Check(tmp_path, "cpu", True, 60.0)

    def broken():
        raise FakeCuPyError("cudaErrorNoDevice: no CUDA-capable device is detected")

    assert check.guarded("kernels", broken) is None
    step = json.loads((tmp_path / "summary.json").read_text())["steps"][0]
    assert step["status"] == "failed" and step["error"]["class"] == "FakeCuPyError"
    assert step["detail"] == "FakeCuPyError: cudaErrorNoDevice: no CUDA-capable device is detected"


def test_a_childs_traceback_gives_the_error_class(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("$ cmd\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                   "cupy_backends.cuda.api.runtime.CUDARuntimeError: cudaErrorInsufficientDriver: old\n")
    assert gpu_check.error_in_log(log) == {"class": "CUDARuntimeError", "module": "cupy_backends.cuda.api.runtime",
                                           "message": "cudaErrorInsufficientDriver: old"}
    log.write_text("no traceback\n")
    assert gpu_check.error_in_log(log) is None


def test_an_error_in_the_check_itself_still_writes_the_summary(tmp_path, monkeypatch):
    def broken(*args):
        raise FakeCuPyError("boom")

    monkeypatch.setattr(gpu_check, "run_steps", broken)
    assert gpu_check.main([str(tmp_path / "out"), "--device", "cpu", "--quick"]) == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["finished"] is False and summary["exit"] == "error" and summary["ok"] is False
    assert summary["error"]["class"] == "FakeCuPyError" and summary["not_run"] == STEPS


def _processes_naming(text):
    """pids of the processes whose command line holds ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to find the children")
def test_sigterm_writes_the_summary_and_kills_the_cpu_runs(tmp_path):
    work = tmp_path / "tmp"
    work.mkdir()
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--device", "cpu", "--quick"], cwd=ROOT,
                            env=dict(os.environ, TMPDIR=str(work)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (_processes_naming(str(work)) and (out / "summary.json").exists()):
        assert time.monotonic() < deadline and proc.poll() is None, "the CPU runs did not start"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit"] == "SIGTERM" and summary["finished"] is False and summary["ok"] is False
    time.sleep(0.5)
    assert _processes_naming(str(work)) == [], "a child outlived the check"


# -- the bare GPU machine: only what a CUDA image has and the carried wheels ---------------------

# What a CUDA image with CuPy offers (numpy, pytest and pytest's own dependencies; cupy does not
# import without a GPU, so the dry run leaves it out) and the wheels the check carries in
# .carry/wheels (idx2numpy with its dependency six, pooch, platformdirs; see docs/gpu.md).
IMAGE_DISTS = ("numpy", "pytest", "pluggy", "iniconfig", "packaging", "pygments")
CARRIED_DISTS = ("idx2numpy", "six", "pooch", "platformdirs")
ABSENT = ("matplotlib", "PIL", "tqdm", "hypothesis", "threadpoolctl", "cupy")


def _link_distribution(name, site):
    """Symlink the top-level files and folders of installed distribution ``name`` into ``site``."""
    from importlib import metadata

    dist = metadata.distribution(name)
    tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
    for top in sorted(tops - {"__pycache__", "bin"}):
        source = Path(dist.locate_file(top))
        if source.exists() and not (site / top).exists():
            (site / top).symlink_to(source)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """(python, env): a virtual environment without pip or site-packages whose PYTHONPATH holds
    only IMAGE_DISTS, CARRIED_DISTS (links to this environment's copies) and the repository.
    Offline: nothing is downloaded. Skips where a venv cannot be made or a package is missing."""
    from importlib import metadata

    missing = []
    for name in IMAGE_DISTS + CARRIED_DISTS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        pytest.skip(f"not installed here, so not in the bare set: {', '.join(missing)}")
    root = tmp_path_factory.mktemp("bare")
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")],
                          capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        pytest.skip(f"cannot make a virtual environment: {made.stderr.strip().splitlines()[-1:]}")
    site = root / "site"
    site.mkdir()
    for name in IMAGE_DISTS + CARRIED_DISTS:
        _link_distribution(name, site)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=f"{site}{os.pathsep}{ROOT}", PYTHONNOUSERSITE="1")
    python = root / "venv" / "bin" / "python"
    return python, env


def test_the_bare_set_lacks_what_a_bare_gpu_machine_lacks(bare_python):
    python, env = bare_python
    probe = ("import importlib.util as u, sys; "
             f"print(','.join(m for m in {ABSENT!r} if u.find_spec(m)))")
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_dry_run_passes_with_only_the_bare_set(bare_python, tmp_path):
    """Every step imports nothing beyond the bare set: no missing import, no broken flag."""
    python, env = bare_python
    out = tmp_path / "out"
    proc = subprocess.run([str(python), str(SCRIPT), str(out), "--device", "cpu", "--quick"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    bad = {s["name"]: s for s in summary["steps"] if s["status"] != "ok"}
    assert proc.returncode == 0 and summary["ok"] and not bad, f"{bad}\n{proc.stderr[-3000:]}"
    assert [s["name"] for s in summary["steps"]] == STEPS


def test_gpu_suite_dry_run_passes_with_only_the_bare_set(bare_python):
    """tests/gpu with the CPU standing in: what the suite runs on a GPU imports only the bare set."""
    python, env = bare_python
    proc = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"], cwd=ROOT,
                          env=dict(env, CNN_XP_GPU_DRY_RUN="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
