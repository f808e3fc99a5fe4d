#!/usr/bin/env python3
"""The prepared GPU check: everything a lent GPU must prove, in one call, into one folder.

    python scripts/gpu_check.py OUTDIR [--device gpu|cpu] [--data-dir DIR] [--quick] [--budget S]

Steps (each a subprocess with its own timeout, all inside one overall budget, so the check
never hangs; a missing or failing step is recorded and the next one runs):

  doctor   ``cnn-xp doctor``                                          -> doctor.txt
  train    simple_convnet on Fashion-MNIST (60,000 / 10,000), 5 epochs on --device, and the
           same seed for 1 epoch on the CPU *in parallel* (CPU threads capped); first-epoch
           train losses compared (absolute and relative difference)     -> train.txt
  kernels  the CuPy fast paths vs the portable path: max difference and median time of
           im2col, col2im, max-pool forward/backward and the Adam update -> kernels.json
  pytest   ``pytest -m gpu tests``: the GPU suite (parity, fast paths, training) and every other gpu-marked test
                                                                        -> pytest.txt
  bench    ``cnn-xp bench``: every zoo model, float32, batch 100 and 1000, ours vs PyTorch on
           the same device, interleaved                                 -> bench.json, bench.md

summary.json (rewritten after every step) lists each step's status (ok / failed / timeout /
skipped), wall time and headline numbers. Seven small flat files at most.

``--device cpu --quick`` is the dry run CI uses: a tiny generated data set (IDX files written
with idx2numpy), 1 epoch, a tiny benchmark; a few seconds. On the GPU machine run it through
scripts/gpu_check.sh, which installs the carried idx2numpy wheel and sets PYTHONPATH.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATUSES = ("ok", "failed", "timeout", "skipped")
LOG_LIMIT = 60_000  # characters kept per log file (head and tail)

# Per-step timeouts (seconds) for the full GPU run; the overall budget caps them all.
TIMEOUTS = {"doctor": 60, "train": 130, "train_cpu": 200, "kernels": 60, "pytest": 150,
            "bench": 170}
QUICK_TIMEOUTS = {"doctor": 60, "train": 60, "train_cpu": 60, "kernels": 60, "pytest": 90,
                  "bench": 60}


class Check:
    """Runs steps inside a deadline and keeps summary.json current."""

    def __init__(self, out: Path, device: str, quick: bool, budget: float):
        self.out, self.device, self.quick = out, device, quick
        self.started = time.time()
        self.deadline = time.monotonic() + budget
        self.summary = {
            "device": device, "quick": quick, "budget_s": budget,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": {"python": platform.python_version(), "platform": platform.platform(),
                     "cpus": os.cpu_count()},
            "steps": [], "results": {},
        }
        self.timeouts = QUICK_TIMEOUTS if quick else TIMEOUTS

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout_for(self, step: str) -> float:
        return max(0.0, min(self.timeouts[step], self.remaining() - 5.0))

    def record(self, name, status, wall, detail="", **extra):
        assert status in STATUSES
        entry = {"name": name, "status": status, "wall_s": round(wall, 2), "detail": detail}
        entry.update(extra)
        self.summary["steps"].append(entry)
        print(f"[gpu_check] {name:8s} {status:8s} {wall:7.1f}s  {detail}", flush=True)
        self.write_summary()

    def write_summary(self):
        self.summary["wall_s"] = round(time.time() - self.started, 2)
        self.summary["files"] = sorted(p.name for p in self.out.iterdir() if p.is_file()
                                       and p.name != "summary.json") + ["summary.json"]
        write_atomic(self.out / "summary.json", json.dumps(self.summary, indent=2) + "\n")


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    paths = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)), PYTHONUNBUFFERED="1",
               MPLBACKEND="Agg")
    env.update(extra or {})
    return env


def start(cmd, log: Path, env=None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, output streamed to ``log`` (kept if killed)."""
    fh = open(log, "w", encoding="utf-8")
    fh.write("$ " + " ".join(str(c) for c in cmd) + "\n")
    fh.flush()
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env or child_env(),
                            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    proc.log_handle = fh
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int | None, bool]:
    """Wait up to ``timeout`` s; on expiry kill the process group. (returncode, timed_out)."""
    try:
        rc = proc.wait(timeout=max(timeout, 0.1))
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc, timed_out = None, True
    proc.log_handle.close()
    return rc, timed_out


def run(cmd, log: Path, timeout: float, env=None) -> tuple[int | None, bool, float]:
    tic = time.monotonic()
    rc, timed_out = finish(start(cmd, log, env), timeout)
    return rc, timed_out, time.monotonic() - tic


def trim_log(path: Path, note: str = "") -> str:
    """Keep ``path`` small (head + tail); return its last non-empty line."""
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    if len(text) > LOG_LIMIT:
        half = LOG_LIMIT // 2
        text = text[:half] + f"\n... [{len(text) - LOG_LIMIT} characters cut] ...\n" + text[-half:]
    if note:
        text += note
    write_atomic(path, text)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def status_of(rc, timed_out) -> str:
    return "timeout" if timed_out else ("ok" if rc == 0 else "failed")


CNN_XP = [sys.executable, "-m", "cnn_xp"]


# -- data --------------------------------------------------------------------------------------

def make_tiny_dataset(folder: Path, n_train=600, n_test=200, seed=0) -> Path:
    """Write a small learnable Fashion-MNIST look-alike as IDX files (idx2numpy): each class a
    bright band at its own rows, plus noise. Returns the folder to pass as --data-dir."""
    import idx2numpy
    import numpy as np

    rng = np.random.default_rng(seed)
    target = folder / "fashion-mnist"
    target.mkdir(parents=True, exist_ok=True)

    def images(labels):
        x = rng.integers(0, 60, size=(labels.size, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            x[i, 2 + 2 * label: 5 + 2 * label, 4:24] = 230
        return x

    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        idx2numpy.convert_to_file(str(target / f"{prefix}-images-idx3-ubyte"), images(labels))
        idx2numpy.convert_to_file(str(target / f"{prefix}-labels-idx1-ubyte"), labels)
    return folder


# -- train -------------------------------------------------------------------------------------

def train_cmd(device, epochs, data_dir, run_dir, seed=0):
    return CNN_XP + ["train", "--model", "simple_convnet", "--dataset", "fashion-mnist",
                     "--device", device, "--epochs", str(epochs), "--data-dir", str(data_dir),
                     "--out", str(run_dir), "--seed", str(seed), "--val-size", "0",
                     "--no-download", "--no-progress"]


def read_run(run_dir: Path) -> dict:
    """test accuracy, per-epoch train loss and seconds of a run folder (what exists)."""
    found: dict = {}
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        with open(metrics, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        found["train_loss"] = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
        found["epoch_seconds"] = [float(r["seconds"]) for r in rows if r.get("seconds")]
        found["images_per_second"] = [float(r["images_per_second"]) for r in rows
                                      if r.get("images_per_second")]
    summary = run_dir / "summary.json"
    if summary.exists():
        data = json.loads(summary.read_text(encoding="utf-8"))
        for key in ("test_accuracy", "test_loss", "seconds_per_epoch", "train_seconds",
                    "wall_seconds", "device", "epochs"):
            if key in data:
                found[key] = data[key]
    return found


def compare_first_epoch(device_run: dict, cpu_run: dict) -> dict:
    a, b = device_run.get("train_loss") or [], cpu_run.get("train_loss") or []
    if not a or not b:
        return {"error": "a first-epoch train loss is missing"}
    diff = abs(a[0] - b[0])
    return {"device_first_epoch_loss": a[0], "cpu_first_epoch_loss": b[0],
            "abs_diff": diff, "rel_diff": diff / max(abs(b[0]), 1e-12)}


def start_train_cpu(data_dir: Path, work: Path, cpu_epochs: int):
    """Start the CPU reference run in the background, its BLAS threads capped so that the
    device steps keep cores to themselves. Returns (process, log, start time)."""
    threads = str(max(1, min(8, (os.cpu_count() or 2) - 4)))
    cpu_env = child_env({k: threads for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                              "MKL_NUM_THREADS")})
    cpu_log = work / "train_cpu.log"
    tic = time.monotonic()
    proc = start(train_cmd("cpu", cpu_epochs, data_dir, work / "run_cpu"), cpu_log, cpu_env)
    return proc, cpu_log, tic


def step_train(check: Check, data_dir: Path, work: Path, out: Path):
    """The device run: 5 epochs (1 in quick mode)."""
    epochs = 1 if check.quick else 5
    log = out / "train.txt"
    rc, timed_out, wall = run(train_cmd(check.device, epochs, data_dir, work / "run_device"),
                              log, check.timeout_for("train"))
    device_run = read_run(work / "run_device")
    check.summary["results"]["train_device"] = device_run
    detail = (f"test accuracy {device_run.get('test_accuracy')}, "
              f"s/epoch {device_run.get('epoch_seconds')}")
    check.record("train", status_of(rc, timed_out), wall, detail, rc=rc,
                 command=" ".join(train_cmd(check.device, epochs, data_dir, "RUN_DIR")[1:]))


def finish_train_cpu(check: Check, cpu_proc, cpu_log: Path, tic: float, work: Path, out: Path):
    waited = max(0.0, check.timeouts["train_cpu"] - (time.monotonic() - tic))
    rc, timed_out = finish(cpu_proc, min(waited, max(check.remaining() - 5.0, 0.1)))
    cpu_run = read_run(work / "run_cpu")
    results = check.summary["results"]
    results["train_cpu"] = cpu_run
    results["first_epoch_loss"] = compare_first_epoch(results.get("train_device", {}), cpu_run)
    # Append the CPU run's log to train.txt (one file for both runs).
    text = cpu_log.read_text(encoding="utf-8", errors="replace") if cpu_log.exists() else ""
    with open(out / "train.txt", "a", encoding="utf-8") as fh:
        fh.write("\n=== CPU reference run ===\n" + text)
    trim_log(out / "train.txt")
    cmp = results["first_epoch_loss"]
    detail = (f"first-epoch loss abs diff {cmp['abs_diff']:.3g}, rel {cmp['rel_diff']:.3g}"
              if "abs_diff" in cmp else cmp.get("error", ""))
    check.record("train_cpu", status_of(rc, timed_out), time.monotonic() - tic, detail, rc=rc)


# -- kernels (fast vs portable) -----------------------------------------------------------------

def kernel_timing(device: str, out_json: Path, quick: bool) -> int:
    """Time each fast path against the portable path on ``device``; write out_json.

    Runs in its own process (``--kernel-timing``). On the CPU only the portable path exists,
    so only it is timed (the dry run proves this code)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from cnn_xp import backend, optim
    from cnn_xp.ops import col2im, cuda_kernels, im2col, maxpool2d_backward, maxpool2d_forward

    xp = backend.get_xp(device)
    rng = np.random.default_rng(0)
    n = 8 if quick else 100
    repeats = 3 if quick else 20

    def arr(*shape):
        return xp.asarray(rng.standard_normal(shape).astype(np.float32))

    def timed(fn):
        fn()  # warm-up (and compile)
        backend.synchronize(device)
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            fn()
            backend.synchronize(device)
            times.append(time.perf_counter() - tic)
        return statistics.median(times) * 1e6

    class OneParam:
        def __init__(self, p, g):
            self.layer = type("Layer", (), {})()
            self.layer.params, self.layer.grads = {"W": p}, {"W": g}

        def params_and_grads(self):
            yield "0.W", self.layer, "W"

    x_conv = arr(n, 16, 28, 28)                       # a deep_convnet 3x3 pad-1 conv input
    col = im2col(x_conv, 3, 3, 1, 1)
    x_pool = arr(n, 30, 24, 24)                       # simple_convnet's pool input
    _, cache = maxpool2d_forward(x_pool, 2, 2, 2, 0)
    dout_pool = arr(n, 30, 12, 12)
    adam_model = OneParam(arr(1_000_000), arr(1_000_000))
    adam = optim.Adam(adam_model, lr=1e-3)
    cases = {
        "im2col (N,16,28,28) k3 p1": lambda: im2col(x_conv, 3, 3, 1, 1),
        "col2im (N,16,28,28) k3 p1": lambda: col2im(col, x_conv.shape, 3, 3, 1, 1),
        "maxpool_forward (N,30,24,24) k2 s2": lambda: maxpool2d_forward(x_pool, 2, 2, 2, 0),
        "maxpool_backward (N,30,24,24) k2 s2": lambda: maxpool2d_backward(dout_pool, cache),
        "adam_update 1M params": adam.step,
    }
    results = {"device": device, "batch": n, "repeats": repeats, "unit": "microseconds (median)",
               "fast_paths": cuda_kernels.status() if device == "gpu" else "none on the CPU",
               "cases": {}}
    failed = False
    for name, fn in cases.items():
        entry = {}
        try:
            os.environ[cuda_kernels.ENV_DISABLE] = "1"
            entry["portable_us"] = round(timed(fn), 1)
            ref = fn() if "adam" not in name else None
            if device == "gpu":
                os.environ.pop(cuda_kernels.ENV_DISABLE)
                entry["fast_us"] = round(timed(fn), 1)
                entry["speedup"] = round(entry["portable_us"] / entry["fast_us"], 2)
                if ref is not None:
                    got = fn()
                    pairs = zip(ref, got) if isinstance(ref, tuple) else [(ref, got)]
                    entry["max_abs_diff"] = max(
                        float(abs(backend.to_numpy(a).astype(np.float64)
                                  - backend.to_numpy(b).astype(np.float64)).max())
                        for a, b in pairs if hasattr(a, "shape"))
                    entry["match"] = entry["max_abs_diff"] <= 1e-5
                    failed |= not entry["match"]
        except Exception as exc:  # one broken case must not hide the others
            entry["error"] = f"{type(exc).__name__}: {exc}"
            failed = True
        finally:
            os.environ.pop(cuda_kernels.ENV_DISABLE, None)
        results["cases"][name] = entry
        print(name, entry, flush=True)
    results["fast_paths_after"] = cuda_kernels.status() if device == "gpu" else None
    write_atomic(out_json, json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


# -- the check ---------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder holding fashion-mnist/ (default: .carry; --quick: generated)")
    p.add_argument("--quick", action="store_true", help="tiny data, 1 epoch, tiny bench")
    p.add_argument("--budget", type=float, default=None,
                   help="overall seconds (default 465; --quick 240)")
    p.add_argument("--cpu-epochs", type=int, default=1, help="epochs of the CPU reference run")
    p.add_argument("--kernel-timing", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.kernel_timing is not None:
        return kernel_timing(args.device, args.kernel_timing, args.quick)

    out = args.outdir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"gpu_check: cannot create {out}: {exc.strerror}", file=sys.stderr)
        return 2
    budget = args.budget or (240.0 if args.quick else 465.0)
    check = Check(out, args.device, args.quick, budget)
    work = Path(tempfile.mkdtemp(prefix="cnn_xp_gpu_check_"))
    try:
        return run_steps(args, check, out, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_steps(args, check: Check, out: Path, work: Path) -> int:

    if args.quick:
        data_dir = make_tiny_dataset(work / "data") if args.data_dir is None else args.data_dir
    else:
        data_dir = args.data_dir or ROOT / ".carry"
    check.summary["data_dir"] = str(data_dir)

    # 0. the CPU reference training run starts first and runs beside the device steps
    cpu_proc, cpu_log, cpu_tic = start_train_cpu(data_dir, work, args.cpu_epochs)

    # 1. doctor
    rc, timed_out, wall = run(CNN_XP + ["doctor"], out / "doctor.txt", check.timeout_for("doctor"))
    check.record("doctor", status_of(rc, timed_out), wall, trim_log(out / "doctor.txt"), rc=rc)

    # 2. training on the device (the CPU reference run is going on beside it)
    step_train(check, data_dir, work, out)

    # 3. fast paths vs portable
    rc, timed_out, wall = run([sys.executable, Path(__file__).resolve(), out, "--device",
                               args.device, "--kernel-timing", out / "kernels.json"]
                              + (["--quick"] if args.quick else []),
                              work / "kernels.log", check.timeout_for("kernels"))
    check.record("kernels", status_of(rc, timed_out), wall, trim_log(work / "kernels.log"), rc=rc)
    if rc != 0 and not (out / "kernels.json").exists():
        write_atomic(out / "kernels.json", json.dumps(
            {"error": "kernel timing did not finish", "log": trim_log(work / "kernels.log")}) + "\n")

    # 4. the GPU test suite
    pytest_cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-rfEs",
                  "--durations=15", "-p", "no:cacheprovider"]
    rc, timed_out, wall = run(pytest_cmd, out / "pytest.txt", check.timeout_for("pytest"))
    check.record("pytest", status_of(rc, timed_out), wall,
                 trim_log(out / "pytest.txt"), rc=rc)

    # 5. the CPU reference run must be done before the benchmark takes the machine
    finish_train_cpu(check, cpu_proc, cpu_log, cpu_tic, work, out)

    # 6. benchmark, ours vs PyTorch, interleaved
    bench_cmd = CNN_XP + ["bench", "--device", args.device, "--json", out / "bench.json",
                          "--markdown", out / "bench.md"]
    if args.quick:
        bench_cmd += ["--models", "simple_convnet", "--dtypes", "float32", "--batch-sizes", "8",
                      "--steps", "1", "--repeats", "3", "--peer", "none"]
    else:
        bench_cmd += ["--dtypes", "float32", "--batch-sizes", "100", "1000", "--peer", "torch"]
    timeout = check.timeout_for("bench")
    if timeout < 10:
        check.record("bench", "skipped", 0.0, "no time left in the budget")
    else:
        rc, timed_out, wall = run(bench_cmd, work / "bench.log", timeout)
        last = trim_log(work / "bench.log")
        if not (out / "bench.md").exists():  # keep the log where the table would be
            (out / "bench.md").write_text((work / "bench.log").read_text(errors="replace"))
        check.record("bench", status_of(rc, timed_out), wall, last, rc=rc)

    statuses = [s["status"] for s in check.summary["steps"]]
    check.summary["ok"] = all(s == "ok" for s in statuses)
    check.write_summary()
    print(json.dumps(check.summary, indent=1), flush=True)
    return 0 if check.summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
