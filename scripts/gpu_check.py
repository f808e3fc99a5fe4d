#!/usr/bin/env python3
"""The prepared GPU check: everything a lent GPU must prove, in one call, into one folder.

    python scripts/gpu_check.py OUTDIR [--device gpu|cpu] [--data-dir DIR] [--quick] [--budget S]

Steps (each a subprocess with its own timeout, all inside one overall budget, so the check
never hangs; a missing or failing step is recorded and the next one runs). The numbers come
first and the long test suite last, so a short budget is spent on the numbers. "Reference"
is the kernel mode ``CNN_XP_KERNELS=reference`` (cnn_xp.ops on either device), "auto" the
default (the device's accelerator where it implements an op):

  doctor     ``cnn-xp doctor``: versions, devices, which implementation runs each op
                                                                          -> doctor.txt
  warmup     one training step and one evaluation of every zoo model, and every op of the
             seam, in float32 and float64, in both kernel modes, on --device: every kernel
             is compiled (CuPy keeps the binaries in its disk cache, so the later steps'
             processes load them), its own wall time reported      -> summary.json
  mnist      real MNIST (``.carry/mnist``): MNIST_MODEL with its zoo recipe on --device
             (auto), the 10,000 test images evaluated after every epoch: test accuracy and
             time to 99%, measured warm (after the warm-up, and after one batch of the recipe
             in the same process); and a parity run (dropout off, the first PARITY_IMAGES
             training images, one pass) whose per-step losses, weights and test accuracy are
             compared with the same run on the CPU (reference)            -> train.txt
  train      simple_convnet on Fashion-MNIST (60,000 / 10,000) with ``cnn-xp train``: 5
             epochs on --device (auto), 1 epoch on --device (reference)   -> train.txt
  kernels    every op of the seam on zoo-sized inputs: the implementation it uses
             (``dispatch.table``), device reference and device auto timed (median), each
             compared with the CPU reference                             -> kernels.json
  train_cpu  waits for the CPU reference runs started at the beginning (Fashion-MNIST 1
             epoch; the MNIST parity run), which ran beside the device steps with their
             threads capped; first-epoch losses and the MNIST parity compared -> train.txt
  bench      ``cnn-xp bench --kernels both``: every zoo model, float32, batch 100 and 1000,
             reference and auto, ours vs PyTorch on the same device where PyTorch is
             installed                                                  -> bench.json, bench.md
  pytest     ``pytest tests/gpu``: the GPU suite, both kernel modes      -> pytest.txt

summary.json lists each step's status (ok / failed / timeout / skipped), wall time, headline
numbers and, for a step that failed, the error's class and message (an exception in the check
itself included: it never stops the check). It is written at the start, after every step and
on every exit (the end, an exception, SIGTERM, SIGINT, SIGHUP), when the CPU runs still going
are killed with their process groups. Seven small flat files: the device tool brings back at
most eight.

``--device cpu --quick`` is the dry run CI uses: tiny generated data sets (IDX files named as
Fashion-MNIST and MNIST), 1 epoch, a tiny benchmark; "the device" is then the CPU and "auto"
its accelerator. The check and everything it runs import only the standard library, numpy,
cupy, pytest and the wheels carried in ``.carry/wheels`` (see docs/gpu.md). On the GPU machine
run it through scripts/gpu_check.sh, which installs the carried wheels and sets PYTHONPATH.
"""
from __future__ import annotations

import argparse
import atexit
import csv
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATUSES = ("ok", "failed", "timeout", "skipped")
LOG_LIMIT = 60_000  # characters kept per log file (head and tail)
KERNELS_ENV = "CNN_XP_KERNELS"
DTYPES = ("float32", "float64")
EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

MNIST_MODEL = "fast_mnist"    # the zoo's time-to-99% recipe (Adam, one-cycle, batch 256, 1 epoch)
TARGET_ACCURACY = 0.99
PARITY_IMAGES = 6000          # training images of the CPU <-> device parity run (one pass)

# Per-step timeouts (seconds) for the full GPU run; the overall budget caps them all.
TIMEOUTS = {"doctor": 60, "warmup": 120, "mnist": 120, "train": 150, "kernels": 90,
            "train_cpu": 300, "bench": 200, "pytest": 240}
QUICK_TIMEOUTS = {"doctor": 60, "warmup": 90, "mnist": 60, "train": 60, "kernels": 60,
                  "train_cpu": 120, "bench": 60, "pytest": 120}
STEPS = ("doctor", "warmup", "mnist", "train", "kernels", "train_cpu", "bench", "pytest")
MIN_STEP_S = {"bench": 10.0}  # a step given less time than this is skipped (others: 1 s)


class Interrupted(BaseException):
    """A signal that ends the check (SIGTERM, SIGINT, SIGHUP)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Check:
    """Runs steps inside a deadline and keeps summary.json current."""

    def __init__(self, out: Path, device: str, quick: bool, budget: float):
        self.out, self.device, self.quick = out, device, quick
        self.started = time.time()
        self.deadline = time.monotonic() + budget
        self.closed = False
        self.summary = {
            "device": device, "quick": quick, "budget_s": budget,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": {"python": platform.python_version(), "platform": platform.platform(),
                     "cpus": os.cpu_count()},
            "finished": False, "steps": [], "results": {},
        }
        self.timeouts = QUICK_TIMEOUTS if quick else TIMEOUTS

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout_for(self, step: str) -> float:
        return max(0.0, min(self.timeouts[step], self.remaining() - 5.0))

    def no_time_for(self, step: str) -> bool:
        """Records ``step`` as skipped (and says True) where the budget leaves it too little."""
        if self.timeout_for(step) >= MIN_STEP_S.get(step, 1.0):
            return False
        self.record(step, "skipped", 0.0, "no time left in the budget")
        return True

    def record(self, name, status, wall, detail="", **extra):
        assert status in STATUSES
        entry = {"name": name, "status": status, "wall_s": round(wall, 2), "detail": detail}
        entry.update({k: v for k, v in extra.items() if v is not None})
        self.summary["steps"].append(entry)
        print(f"[gpu_check] {name:8s} {status:8s} {wall:7.1f}s  {detail}", flush=True)
        self.write_summary()

    def guarded(self, name: str, step, *args):
        """``step(*args)``; an exception it raises is recorded as step ``name`` failing (the
        error's class and message) instead of stopping the check. Returns the step's value or
        None."""
        tic = time.monotonic()
        try:
            return step(*args)
        except Exception as exc:  # noqa: BLE001 -- every error is a result here
            traceback.print_exc()
            self.record(name, "failed", time.monotonic() - tic, one_line(exc), error=error_of(exc))
            return None

    def write_summary(self):
        self.summary["wall_s"] = round(time.time() - self.started, 2)
        self.summary["files"] = sorted(p.name for p in self.out.iterdir() if p.is_file()
                                       and p.name != "summary.json") + ["summary.json"]
        write_atomic(self.out / "summary.json", json.dumps(self.summary, indent=2) + "\n")

    def close(self, exit_reason: str, error: BaseException | None = None) -> None:
        """The last summary (once): how the check ended, the steps that did not run, ok."""
        if self.closed:
            return
        self.closed = True
        kill_children()
        ran = [s["name"] for s in self.summary["steps"]]
        self.summary.update(finished=exit_reason == "end", exit=exit_reason,
                            not_run=[s for s in STEPS if s not in ran])
        if error is not None:
            self.summary["error"] = error_of(error)
        self.summary["ok"] = (exit_reason == "end" and not self.summary["not_run"]
                              and all(s["status"] == "ok" for s in self.summary["steps"]))
        self.write_summary()


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# -- errors --------------------------------------------------------------------------------------

def error_of(exc: BaseException) -> dict:
    """{"class", "module", "message"} of an exception (CuPy's included), JSON-able."""
    kind = type(exc)
    return {"class": kind.__name__, "module": kind.__module__, "message": first_line(str(exc))}


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(str(exc))}"


def first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def error_in_log(log: Path) -> dict | None:
    """{"class", "module", "message"} of the last Python traceback in ``log`` (a child's
    error: its last line, "module.Class: message"), or None."""
    if not log.exists():
        return None
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        return None
    for line in lines[starts[-1] + 1:]:
        if line and not line[0].isspace():
            name, _, message = line.partition(":")
            if not re.fullmatch(r"[A-Za-z_][\w.]*", name):
                return None
            module, _, cls = name.rpartition(".")
            return {"class": cls, "module": module or "builtins", "message": message.strip()[:300]}
    return None


def read_json(path: Path) -> dict:
    """A child's JSON file, or {} where it is missing or broken."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# -- child processes -----------------------------------------------------------------------------

_children: set = set()  # every child started and not yet waited for (killed on exit)


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
    _children.add(proc)
    return proc


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (what is left of it) and reap ``proc``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    proc.log_handle.close()
    _children.discard(proc)


def kill_children() -> None:
    """Kill every child still running, with its process group (the CPU runs on an early exit)."""
    for proc in list(_children):
        kill_group(proc)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int | None, bool]:
    """Wait up to ``timeout`` s; on expiry kill the process group. (returncode, timed_out)."""
    try:
        rc = proc.wait(timeout=max(timeout, 0.1))
        timed_out = False
    except subprocess.TimeoutExpired:
        rc, timed_out = None, True
    kill_group(proc)  # on expiry, and whatever the child left behind in its group
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
SELF = [sys.executable, Path(__file__).resolve()]


# -- data --------------------------------------------------------------------------------------

def write_idx(path: Path, array) -> None:
    """``array`` (uint8) as an IDX file: magic (0, 0, type 0x08, ndim), big-endian dims, data."""
    import numpy as np

    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_tiny_dataset(folder: Path, n_train=600, n_test=200, seed=0) -> Path:
    """Write small learnable look-alikes of Fashion-MNIST and MNIST as IDX files into
    ``folder``/fashion-mnist and ``folder``/mnist: each class a bright band at its own rows,
    plus noise. Returns the folder to pass as --data-dir."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def images(labels):
        x = rng.integers(0, 60, size=(labels.size, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            x[i, 2 + 2 * label: 5 + 2 * label, 4:24] = 230
        return x

    for name in ("fashion-mnist", "mnist"):
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        for prefix, n in (("train", n_train), ("t10k", n_test)):
            labels = (np.arange(n) % 10).astype(np.uint8)
            rng.shuffle(labels)
            write_idx(target / f"{prefix}-images-idx3-ubyte", images(labels))
            write_idx(target / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


# -- train (Fashion-MNIST through the CLI) -------------------------------------------------------

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


def cpu_env(threads: int) -> dict:
    """A CPU reference child: the reference ops, BLAS threads capped."""
    return child_env({KERNELS_ENV: "reference",
                      **{k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                   "MKL_NUM_THREADS")}})


def start_cpu_runs(check: "Check", data_dir: Path, work: Path, cpu_epochs: int) -> dict:
    """Start the two CPU reference runs in the background (Fashion-MNIST through the CLI, the
    MNIST parity run), each with a share of the cores the device steps leave free."""
    threads = max(1, min(6, ((os.cpu_count() or 2) - 4) // 2))
    started = {}
    tic = time.monotonic()
    started["fashion"] = (start(train_cmd("cpu", cpu_epochs, data_dir, work / "run_cpu"),
                                work / "train_cpu.log", cpu_env(threads)), work / "train_cpu.log")
    started["mnist"] = (start(mnist_cmd("cpu", data_dir, work / "mnist_cpu.json", check.quick,
                                        parity_only=True),
                              work / "mnist_cpu.log", cpu_env(threads)), work / "mnist_cpu.log")
    return {"runs": started, "tic": tic, "threads": threads}


def step_train(check: "Check", data_dir: Path, work: Path, out: Path):
    """Fashion-MNIST on the device: 5 epochs in mode auto (1 in quick mode), 1 epoch in mode
    reference; the logs go to train.txt."""
    epochs = 1 if check.quick else 5
    log = out / "train.txt"
    tic = time.monotonic()
    rc, timed_out, _ = run(train_cmd(check.device, epochs, data_dir, work / "run_device"),
                           work / "train_device.log", check.timeout_for("train"),
                           child_env({KERNELS_ENV: "auto"}))
    append_log(log, f"=== {check.device}, kernel mode auto, {epochs} epoch(s) ===", work / "train_device.log")
    ref_log = work / "train_ref.log"
    left = max(0.0, check.timeouts["train"] - (time.monotonic() - tic))
    rc_ref, timed_out_ref, _ = run(train_cmd(check.device, 1, data_dir, work / "run_device_ref"),
                                   ref_log, min(left, check.timeout_for("train")),
                                   child_env({KERNELS_ENV: "reference"}))
    append_log(log, f"=== {check.device}, kernel mode reference, 1 epoch ===", ref_log)
    results = check.summary["results"]
    results["train_device"] = read_run(work / "run_device")
    results["train_device_reference"] = read_run(work / "run_device_ref")
    run_ = results["train_device"]
    detail = f"test accuracy {run_.get('test_accuracy')}, s/epoch {run_.get('epoch_seconds')}"
    status = status_of(rc, timed_out)
    if status == "ok":
        status = status_of(rc_ref, timed_out_ref)
    error = None if status == "ok" else (error_in_log(work / "train_device.log") or error_in_log(ref_log))
    check.record("train", status, time.monotonic() - tic, detail, rc=rc, rc_reference=rc_ref, error=error,
                 command=" ".join(train_cmd(check.device, epochs, data_dir, "RUN_DIR")[1:]))


def append_log(target: Path, title: str, source: Path) -> None:
    text = source.read_text(encoding="utf-8", errors="replace") if source.exists() else "(no log)\n"
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(f"\n{title}\n{text}")


# -- mnist (in a child process: --mnist-run) ------------------------------------------------------

def mnist_cmd(device, data_dir, out_json, quick, parity_only=False, model=MNIST_MODEL, epochs=None):
    cmd = SELF + ["MNIST", "--device", device,
           "--data-dir", data_dir, "--mnist-run", out_json, "--mnist-model", model]
    if epochs is not None:
        cmd += ["--mnist-epochs", str(epochs)]
    return cmd + (["--quick"] if quick else []) + (["--parity-only"] if parity_only else [])


def _fit(model, opt, x, t, recipe, epochs, device, validation=None, record_steps=False, shuffle=True):
    """``cnn_xp.fit`` of ``recipe`` for ``epochs``; returns (history rows, per-step losses or
    [], per epoch wall seconds of training and of evaluation)."""
    from cnn_xp import backend, fit
    from cnn_xp.callbacks import Callback

    per_step, clocks = [], []

    class Record(Callback):
        def on_epoch_begin(self, epoch, logs):
            backend.synchronize(device)
            self.tic = time.perf_counter()

        def on_batch_end(self, batch, logs):
            if record_steps:
                per_step.append(float(logs["batch_loss"]))

        def on_epoch_end(self, epoch, logs):
            clocks.append((time.perf_counter() - self.tic - logs["seconds"], logs["seconds"]))

    history = fit(model, opt, (x, t), epochs=epochs, batch_size=recipe.batch_size, validation_data=validation,
                  schedule=recipe.schedule_spec(), augment=recipe.augment, seed=recipe.seed, shuffle=shuffle,
                  callbacks=[Record()], verbose=False)
    return history.rows, per_step, clocks


def _warm_in_process(model, opt, recipe, x, t, x_test, t_test, device) -> float:
    """Two batches of ``recipe`` (schedule, augmentation, dropout) and an evaluation of the
    test set with a throwaway model: the timed run after it in this process starts warm
    (kernels loaded, memory pool grown). Returns its wall seconds."""
    from cnn_xp import backend

    tic = time.perf_counter()
    n = min(2 * recipe.batch_size, x.shape[0])
    one = recipe.replace(epochs=1, schedule_epochs=1 if recipe.schedule != "constant" else None)
    _fit(model, opt, x[:n], t[:n], one, 1, device, validation=(x_test, t_test))
    backend.synchronize(device)
    return round(time.perf_counter() - tic, 3)


def mnist_run(device: str, data_dir: Path, out_json: Path, model_name: str, epochs, quick: bool,
              parity_only: bool) -> int:
    """The MNIST runs of one device, written to ``out_json``:

    - ``parity``: dropout off, the first PARITY_IMAGES training images in one pass, in order
      (no shuffle), batch of the recipe; per-step losses, test accuracy, final weights
      (sampled: every 97th value of each parameter) -- to compare across devices;
    - ``run`` (unless ``parity_only``): the zoo recipe on all 60,000 images, shuffled per
      epoch from the seed; after every epoch the 10,000 test images are evaluated; the time
      to TARGET_ACCURACY counts training and every evaluation up to the first epoch that
      reaches it. It runs warm: after the parity run and ``_warm_in_process``."""

    sys.path.insert(0, str(ROOT))
    from cnn_xp import Recipe, backend, data, dispatch, evaluate, layers, models

    tic = time.perf_counter()
    ds = data.load_dataset("mnist", data_dir=data_dir, download=False)
    x_train, t_train = data.to_float(ds.train_images), ds.train_labels
    x_test = backend.to_device(data.to_float(ds.test_images), device)
    t_test = backend.to_device(ds.test_labels, device)
    load_s = time.perf_counter() - tic
    recipe = Recipe.create(model_name, seed=0)
    result = {"device": device, "model": model_name, "kernel_mode": dispatch.mode(),
              "ops": dispatch.table(device), "recipe": recipe.to_dict(), "data": str(ds.folder),
              "train_images": int(x_train.shape[0]), "test_images": int(ds.test_labels.shape[0]),
              "load_seconds": round(load_s, 3)}

    def fresh(dropout: bool):
        model = models.build(model_name, seed=0, device=device)
        if not dropout:
            for layer in model.layers:
                if isinstance(layer, layers.Dropout):
                    layer.p = 0.0
        return model, models.build_optimizer(model_name, model)

    # parity: the same batches on every device, no random draws
    n = min(PARITY_IMAGES if not quick else 200, x_train.shape[0])
    model, opt = fresh(dropout=False)
    plain = recipe.replace(schedule="constant", schedule_epochs=None, augment=None)  # no random draws
    rows, per_step, clocks = _fit(model, opt, x_train[:n], t_train[:n], plain, 1, device, record_steps=True,
                                  shuffle=False)
    mean_loss, train_s = rows[0]["train_loss"], clocks[0][1]
    accuracy = evaluate(model, (x_test, t_test))["accuracy"]
    result["parity"] = {"images": n, "batch_size": recipe.batch_size, "losses": per_step,
                        "mean_loss": mean_loss, "test_accuracy": accuracy,
                        "seconds": round(train_s, 3),
                        "weights": {k: v.reshape(-1)[::97].tolist() for k, v in model.state_dict().items()}}
    write_atomic(out_json, json.dumps(result) + "\n")
    print(f"parity run: {n} images, mean loss {mean_loss:.6f}, test accuracy {accuracy:.4f}", flush=True)
    if parity_only:
        return 0

    epochs = epochs or (1 if quick else recipe.epochs)
    warm_model, warm_opt = fresh(dropout=True)
    result["warm_seconds"] = _warm_in_process(warm_model, warm_opt, recipe, x_train, t_train, x_test,
                                              t_test, device)
    model, opt = fresh(dropout=True)
    rows, _, clocks = _fit(model, opt, x_train, t_train, recipe.replace(epochs=epochs,
                           schedule_epochs=epochs if recipe.schedule != "constant" else None), epochs, device,
                           validation=(x_test, t_test))
    history, clock, reached = [], 0.0, None
    for row, (eval_s, train_s) in zip(rows, clocks):
        epoch, mean_loss, accuracy = row["epoch"], row["train_loss"], row["val_acc"]
        clock += train_s + eval_s
        history.append({"epoch": epoch, "train_loss": mean_loss, "test_accuracy": accuracy,
                        "train_seconds": round(train_s, 3), "eval_seconds": round(eval_s, 3),
                        "images_per_second": round(x_train.shape[0] / train_s, 1)})
        print(f"epoch {epoch}: loss {mean_loss:.4f}, test accuracy {accuracy:.4f}, "
              f"{train_s:.2f} s training + {eval_s:.2f} s evaluation", flush=True)
        if reached is None and accuracy >= TARGET_ACCURACY:
            reached = {"epoch": epoch, "seconds": round(clock, 3),
                       "seconds_with_loading": round(clock + load_s, 3)}
    result["run"] = {"epochs": epochs, "history": history,
                     "test_accuracy": history[-1]["test_accuracy"],
                     "best_test_accuracy": max(h["test_accuracy"] for h in history),
                     "train_seconds": round(sum(h["train_seconds"] for h in history), 3),
                     "target_accuracy": TARGET_ACCURACY, "time_to_target": reached}
    result["ops_after"] = dispatch.table(device)
    write_atomic(out_json, json.dumps(result) + "\n")
    return 0


def compare_parity(device_run: dict, cpu_run: dict) -> dict:
    """The parity runs of the device and the CPU, side by side."""
    a, b = device_run.get("parity"), cpu_run.get("parity")
    if not a or not b:
        return {"error": "a parity run is missing"}
    if len(a["losses"]) != len(b["losses"]) or a["weights"].keys() != b["weights"].keys():
        return {"error": "the parity runs differ in length or parameters"}
    loss_rel = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a["losses"], b["losses"]))
    num = den = 0.0
    for key, w in b["weights"].items():
        num += sum((x - y) ** 2 for x, y in zip(a["weights"][key], w))
        den += sum(y * y for y in w)
    weights_rel = math.sqrt(num) / max(math.sqrt(den), 1e-30)
    return {"images": a["images"], "steps": len(a["losses"]),
            "loss_max_rel_diff": loss_rel, "weights_rel_l2_diff": weights_rel,
            "device_test_accuracy": a["test_accuracy"], "cpu_test_accuracy": b["test_accuracy"],
            "test_accuracy_diff": abs(a["test_accuracy"] - b["test_accuracy"]),
            "device_ops": device_run.get("ops"), "cpu_ops": cpu_run.get("ops"),
            "agree": loss_rel < 1e-3 and weights_rel < 1e-2
                     and abs(a["test_accuracy"] - b["test_accuracy"]) <= 0.005}


def step_mnist(check: "Check", data_dir: Path, work: Path, out: Path):
    log = work / "mnist_device.log"
    out_json = work / "mnist_device.json"
    rc, timed_out, wall = run(mnist_cmd(check.device, data_dir, out_json, check.quick), log,
                              check.timeout_for("mnist"), child_env({KERNELS_ENV: "auto"}))
    append_log(out / "train.txt", f"=== MNIST, {MNIST_MODEL}, {check.device}, kernel mode auto ===", log)
    found = read_json(out_json)
    check.summary["results"]["mnist"] = {k: v for k, v in found.items() if k != "parity"}
    check.summary["results"]["mnist_device_parity_run"] = _parity_summary(found)
    run_ = found.get("run", {})
    reached = run_.get("time_to_target")
    detail = (f"test accuracy {run_.get('test_accuracy')}, time to {TARGET_ACCURACY:.0%}: "
              + (f"{reached['seconds']} s (epoch {reached['epoch']})" if reached else "not reached"))
    status = status_of(rc, timed_out)
    error = None if status == "ok" else (found.get("error") or error_in_log(log))
    check.record("mnist", status, wall, detail if run_ else trim_log(log), rc=rc, error=error)
    return found


def _parity_summary(found: dict) -> dict:
    parity = found.get("parity") or {}
    return {k: v for k, v in parity.items() if k not in ("weights", "losses")}


def finish_cpu_runs(check: "Check", cpu: dict, work: Path, out: Path):
    """Wait for the CPU reference runs (killed when their time is up) and compare them with
    the device's runs."""
    results = check.summary["results"]
    statuses, errors = [], []
    for name, (proc, log) in cpu["runs"].items():
        waited = max(0.0, check.timeouts["train_cpu"] - (time.monotonic() - cpu["tic"]))
        rc, timed_out = finish(proc, min(waited, max(check.remaining() - 5.0, 0.1)))
        statuses.append(status_of(rc, timed_out))
        errors.append(error_in_log(log) if statuses[-1] == "failed" else None)
        title = ("=== CPU reference run (Fashion-MNIST, kernel mode reference) ===" if name == "fashion"
                 else f"=== CPU reference run (MNIST parity, {MNIST_MODEL}, kernel mode reference) ===")
        append_log(out / "train.txt", title, log)
    trim_log(out / "train.txt")
    results["train_cpu"] = read_run(work / "run_cpu")
    results["first_epoch_loss"] = compare_first_epoch(results.get("train_device", {}), results["train_cpu"])
    results["first_epoch_loss_reference"] = compare_first_epoch(
        results.get("train_device_reference", {}), results["train_cpu"])
    results["mnist_parity"] = compare_parity(read_json(work / "mnist_device.json"),
                                             read_json(work / "mnist_cpu.json"))
    cmp, par = results["first_epoch_loss"], results["mnist_parity"]
    detail = (f"Fashion first-epoch loss rel diff {cmp['rel_diff']:.3g}" if "rel_diff" in cmp
              else cmp.get("error", ""))
    detail += ("; MNIST parity: " + (f"loss rel {par['loss_max_rel_diff']:.3g}, weights rel "
                                     f"{par['weights_rel_l2_diff']:.3g}, agree {par['agree']}"
                                     if "agree" in par else par["error"]))
    status = next((s for s in statuses if s != "ok"), "ok")
    if status == "ok" and not par.get("agree", False):
        status = "failed"
    check.record("train_cpu", status, time.monotonic() - cpu["tic"], detail,
                 error=next((e for e in errors if e), None))


# -- kernels: every op, GPU reference and GPU auto against the CPU reference -----------------------

def kernel_cases(n: int, params: int, dtype: str = "float32") -> dict:
    """op -> (host inputs builder, runner(impl, inputs) -> list of outputs), in ``dtype``."""
    import numpy as np

    from cnn_xp import backend

    rng = np.random.default_rng(0)

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    def conv(impl, x, W, b, dout):
        out, cache = impl.conv2d_forward(x, W, b, 1, 1)
        return [out, *impl.conv2d_backward(dout, cache)]

    def pool(kind):
        def go(impl, x, dout):
            out, cache = getattr(impl, f"{kind}pool2d_forward")(x, 2, 2, 2, 0)
            return [out, getattr(impl, f"{kind}pool2d_backward")(dout, cache)]
        return go

    def relu(impl, x, dout):
        out, cache = impl.relu_forward(x)
        return [out, impl.relu_backward(dout, cache)]

    def dropout(impl, x, draws, dout):
        out, cache = impl.dropout_forward(x, draws, 0.5)
        return [out, impl.dropout_backward(dout, cache)]

    def loss(impl, scores, labels):
        # three launches in a row over 1000 rows (several thread blocks: the kernel's ticket
        # must be back at 0 after each), with the running totals a training epoch keeps
        xp = backend.xp_of(scores)
        totals = xp.zeros(2, dtype="float64")
        for _ in range(3):
            value, cache = impl.softmax_cross_entropy_forward(scores, labels, totals, True)
        return [value, impl.softmax_cross_entropy_backward(cache), totals]

    def update(op, slots, hyper):
        def go(impl, p, g, *state):
            getattr(impl, f"{op}_update")(p, g, *state, *hyper)
            return [p, *state]
        inputs = lambda: [normal(params), normal(params)] + [np.abs(normal(params)) for _ in range(slots)]
        return inputs, go

    def update_all(impl, p1, p2, g1, g2, m1, m2, v1, v2):
        # Adam, 40 parameters in two launches (32 a launch), with their own rates, their
        # gradients C-contiguous or (every other one) rows of a wider matrix, as a conv's
        # [dW | db] views are: p1 and p2 cut into 20 parameters each
        params = [p[i::20] for p in (p1, p2) for i in range(20)]
        params = [p.copy() for p in params]  # C-contiguous parameters
        states = [(m.copy(), v.copy()) for m, v in zip([m[i::20] for m in (m1, m2) for i in range(20)],
                                                      [v[i::20] for v in (v1, v2) for i in range(20)])]
        grads = []
        for k, g in enumerate([g[i::20] for g in (g1, g2) for i in range(20)]):
            if k % 2:
                wide = backend.xp_of(g).zeros((g.size, 3), dtype=g.dtype)
                wide[:, 1] = g
                g = wide[:, 1]  # a strided view
            else:
                g = g.copy()
            grads.append(g)
        impl.update_all("adam", params, grads, states, [1e-2 / (1 + k % 3) for k in range(40)],
                        (0.9, 0.999, 1 / math.sqrt(1 - 0.999), 1e-8))
        return params + [s for pair in states for s in pair]

    angle = rng.uniform(-0.3, 0.3, n)
    inverse = np.zeros((n, 2, 3))
    inverse[:, 0, 0], inverse[:, 0, 1], inverse[:, 0, 2] = np.cos(angle), np.sin(angle), rng.uniform(-3, 3, n)
    inverse[:, 1, 0], inverse[:, 1, 1], inverse[:, 1, 2] = -np.sin(angle), np.cos(angle), rng.uniform(-3, 3, n)
    offsets = rng.integers(0, 9, (2, n))
    flips = rng.random(n) < 0.5

    def fully_connected(impl, x, W, b, dout):
        out, cache = impl.affine_forward(x, W, b)
        return [out, *impl.affine_backward(dout, cache)]

    def affine(impl, x):
        return [impl.affine_resample(x, inverse)]

    def cropped(impl, x):
        return [impl.crop_flip(x, offsets[0], offsets[1], flips, 4)]

    cases = {
        "conv2d": (lambda: [normal(n, 16, 28, 28), normal(32, 16, 3, 3, scale=0.1), normal(32),
                            normal(n, 32, 28, 28)], conv),
        "maxpool2d": (lambda: [normal(n, 30, 24, 24), normal(n, 30, 12, 12)], pool("max")),
        "avgpool2d": (lambda: [normal(n, 30, 24, 24), normal(n, 30, 12, 12)], pool("avg")),
        "relu": (lambda: [normal(n, 30, 24, 24), normal(n, 30, 24, 24)], relu),
        "dropout": (lambda: [normal(n, 4320), rng.random((n, 4320)).astype(dtype),
                             normal(n, 4320)], dropout),
        "softmax_cross_entropy": (lambda: [normal(1000, 10, scale=3.0), rng.integers(0, 10, 1000)], loss),
        "sgd": update("sgd", 0, (0.01,)),
        "momentum": update("momentum", 1, (0.01, 0.9)),
        "nesterov": update("nesterov", 1, (0.01, 0.9)),
        "adagrad": update("adagrad", 1, (0.01, 1e-7)),
        "rmsprop": update("rmsprop", 1, (0.01, 0.99, 1e-7)),
        "adam": update("adam", 2, (1e-3 / (1 - 0.9), 0.9, 0.999, 1 / math.sqrt(1 - 0.999), 1e-8)),
        "update_all": (lambda: [normal(params), normal(params // 4), normal(params), normal(params // 4)]
                       + [np.abs(normal(s)) for s in (params, params // 4, params, params // 4)], update_all),
        "affine": (lambda: [normal(n, 30, 12, 12), normal(30 * 12 * 12, 100, scale=0.05), normal(100),
                            normal(n, 100)], fully_connected),
        "affine_resample": (lambda: [normal(n, 1, 28, 28)], affine),
        "crop_flip": (lambda: [normal(n, 3, 32, 32)], cropped),
    }
    return cases


# -- warm-up: every kernel compiled before anything is timed ---------------------------------------

def warm_model(name: str, dtype: str, device: str, batch: int) -> None:
    """One training step of zoo model ``name``'s recipe (its optimizer, schedule, augmentation
    and dropout) and one evaluation, on ``batch`` random images in ``dtype`` on ``device``."""
    import numpy as np

    from cnn_xp import Recipe, evaluate, fit, models

    model = models.build(name, seed=0, device=device, dtype=dtype)
    recipe = Recipe.create(name, seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((batch, *model.input_shape)).astype(dtype)
    t = rng.integers(0, 10, batch)
    fit(model, models.build_optimizer(name, model), (x, t), epochs=1, batch_size=batch,
        schedule=recipe.replace(epochs=1, schedule_epochs=1 if recipe.schedule != "constant" else None)
        .schedule_spec(), augment=recipe.augment, seed=0, verbose=False)
    evaluate(model, (x, t))


def warm_ops(dtype: str, device: str) -> None:
    """Every op of the seam, forward and backward or update, in the current kernel mode."""
    from cnn_xp import backend, dispatch

    for op, (inputs, go) in kernel_cases(4, 1000, dtype).items():
        go(dispatch.implementation(op, device), *[backend.to_device(a, device) for a in inputs()])


def warmup(device: str, out_json: Path, quick: bool) -> int:
    """Compile every kernel the check times: each zoo model (``warm_model``) and each op
    (``warm_ops``) in both float dtypes and both kernel modes, on ``device``; CuPy keeps the
    binaries in its disk cache (``~/.cupy/kernel_cache``, ``CUPY_CACHE_DIR``), where the later
    steps' processes find them. Writes each part's seconds (or error) and the total to
    ``out_json``; runs in its own process."""
    sys.path.insert(0, str(ROOT))
    from cnn_xp import backend, dispatch, models

    tic = time.perf_counter()
    parts, failed = {}, False
    for mode in ("auto", "reference"):
        dispatch.reset()
        dispatch.set_mode(mode)
        for dtype in DTYPES:
            jobs = [(f"{mode}/{dtype}/{name}", warm_model, (name, dtype, device, 4 if quick else 32))
                    for name in models.MODELS]
            jobs.append((f"{mode}/{dtype}/ops", warm_ops, (dtype, device)))
            for key, job, job_args in jobs:
                start_s = time.perf_counter()
                try:
                    job(*job_args)
                    backend.synchronize(device)
                    parts[key] = {"seconds": round(time.perf_counter() - start_s, 3)}
                except Exception as exc:  # noqa: BLE001 -- one broken part must not hide the others
                    parts[key] = {"error": error_of(exc)}
                    failed = True
                print(key, parts[key], flush=True)
    dispatch.set_mode("auto")
    found = {"device": device, "seconds": round(time.perf_counter() - tic, 3), "parts": parts,
             "ops": dispatch.table(device), "accelerator": _details(dispatch, device)}
    write_atomic(out_json, json.dumps(found, indent=2) + "\n")
    return 1 if failed else 0


def step_warmup(check: "Check", work: Path):
    log, out_json = work / "warmup.log", work / "warmup.json"
    rc, timed_out, wall = run(SELF + ["WARMUP", "--device", check.device, "--warmup", out_json]
                              + (["--quick"] if check.quick else []), log, check.timeout_for("warmup"))
    found = read_json(out_json)
    errors = {k: v["error"] for k, v in found.get("parts", {}).items() if "error" in v}
    check.summary["results"]["warmup"] = {"seconds": found.get("seconds"), "wall_s": round(wall, 2),
                                          "parts": len(found.get("parts", {})), "errors": errors,
                                          "accelerator": found.get("accelerator")}
    status = status_of(rc, timed_out)
    error = None
    if status != "ok":
        error = found.get("error") or next(iter(errors.values()), None) or error_in_log(log)
    detail = (f"every kernel compiled in {found['seconds']} s ({len(found['parts'])} parts, "
              f"{len(errors)} failed)" if "seconds" in found else trim_log(log))
    check.record("warmup", status, wall, detail, rc=rc, error=error)



def kernel_timing(device: str, out_json: Path, quick: bool) -> int:
    """Every op of the seam on ``device``: the implementation it uses in mode auto, GPU
    reference and GPU auto timed (median), and both compared with the CPU reference (max
    difference relative to the result's scale). Writes out_json; runs in its own process."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from cnn_xp import backend, dispatch, ops

    n = 8 if quick else 100
    repeats = 3 if quick else 20
    cases = kernel_cases(n, 10_000 if quick else 1_000_000)

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

    def max_rel_diff(got, want):
        worst = 0.0
        for g, w in zip(got, want):
            if w is None:
                continue
            g = backend.to_numpy(g).astype(np.float64)
            w = np.asarray(w, dtype=np.float64)
            worst = max(worst, float(np.abs(g - w).max()) / max(1.0, float(np.abs(w).max())))
        return worst

    dispatch.set_mode("auto")
    results = {"device": device, "batch": n, "repeats": repeats, "dtype": "float32",
               "unit": "microseconds (median), forward + backward or one update",
               "ops": dispatch.table(device),
               "accelerator": _details(dispatch, device), "cases": {}}
    failed = False
    for op, (inputs, go) in cases.items():
        entry = {"implementation": results["ops"][op]}
        try:
            host_inputs = inputs()
            want = go(ops, *[a.copy() for a in host_inputs])  # the CPU reference
            for mode in ("reference", "auto"):
                dispatch.set_mode(mode)
                impl = dispatch.implementation(op, device)
                got = go(impl, *[backend.to_device(a.copy(), device) for a in host_inputs])
                entry[f"{mode}_max_rel_diff_vs_cpu_reference"] = max_rel_diff(got, want)
                device_inputs = [backend.to_device(a.copy(), device) for a in host_inputs]
                entry[f"{mode}_us"] = round(timed(lambda: go(impl, *device_inputs)), 1)
            entry["speedup"] = round(entry["reference_us"] / entry["auto_us"], 2)
            entry["match"] = max(entry["reference_max_rel_diff_vs_cpu_reference"],
                                 entry["auto_max_rel_diff_vs_cpu_reference"]) <= 1e-4
            failed |= not entry["match"]
        except Exception as exc:  # one broken case must not hide the others
            entry["error"] = error_of(exc)
            failed = True
        results["cases"][op] = entry
        print(op, entry, flush=True)
    dispatch.set_mode("auto")
    results["ops_after"] = dispatch.table(device)
    results["accelerator_after"] = _details(dispatch, device)
    write_atomic(out_json, json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


def _details(dispatch, device):
    module, reason = dispatch.accelerator(device)
    if module is None:
        return {"name": None, "reason": reason}
    return module.details()


# -- the steps in the parent -------------------------------------------------------------------

def step_doctor(check: "Check", out: Path):
    log = out / "doctor.txt"
    rc, timed_out, wall = run(CNN_XP + ["doctor"], log, check.timeout_for("doctor"),
                              child_env({KERNELS_ENV: "auto"}))
    status = status_of(rc, timed_out)
    check.record("doctor", status, wall, trim_log(log), rc=rc,
                 error=None if status == "ok" else error_in_log(log))


def step_kernels(check: "Check", work: Path, out: Path):
    log, out_json = work / "kernels.log", out / "kernels.json"
    rc, timed_out, wall = run(SELF + [out, "--device", check.device, "--kernel-timing", out_json]
                              + (["--quick"] if check.quick else []), log, check.timeout_for("kernels"))
    status = status_of(rc, timed_out)
    found = read_json(out_json)
    if not found:
        write_atomic(out_json, json.dumps({"error": error_in_log(log) or "kernel timing did not finish",
                                           "log": trim_log(log)}) + "\n")
    check.summary["results"]["ops"] = found.get("ops")
    errors = {op: e["error"] for op, e in found.get("cases", {}).items() if "error" in e}
    error = None if status == "ok" else (next(iter(errors.values()), None) or error_in_log(log))
    check.record("kernels", status, wall, trim_log(log), rc=rc, error=error)


def bench_cmd(device: str, out: Path, quick: bool) -> list:
    cmd = CNN_XP + ["bench", "--device", device, "--json", out / "bench.json",
                    "--markdown", out / "bench.md", "--kernels", "both"]
    if quick:
        return cmd + ["--models", "simple_convnet", "--dtypes", "float32", "--batch-sizes", "8",
                      "--steps", "1", "--repeats", "3", "--peer", "none"]
    return cmd + ["--dtypes", "float32", "--batch-sizes", "100", "1000", "--peer", "auto"]


def step_bench(check: "Check", work: Path, out: Path):
    """ours (reference and auto) vs PyTorch where it is installed, interleaved."""
    log = work / "bench.log"
    rc, timed_out, wall = run(bench_cmd(check.device, out, check.quick), log, check.timeout_for("bench"))
    last = trim_log(log)
    if not (out / "bench.md").exists():  # keep the log where the table would be
        (out / "bench.md").write_text(log.read_text(encoding="utf-8", errors="replace"))
    status = status_of(rc, timed_out)
    check.record("bench", status, wall, last, rc=rc, error=None if status == "ok" else error_in_log(log))


def step_pytest(check: "Check", out: Path):
    """The GPU suite: tests/gpu only (the GPU tests all live there)."""
    log = out / "pytest.txt"
    cmd = [sys.executable, "-m", "pytest", "tests/gpu", "-q", "-rfEs", "--durations=15",
           "-p", "no:cacheprovider"]
    rc, timed_out, wall = run(cmd, log, check.timeout_for("pytest"))
    status = status_of(rc, timed_out)
    check.record("pytest", status, wall, trim_log(log), rc=rc,
                 error=None if status == "ok" else error_in_log(log))


def prepare_data(args, work: Path) -> Path:
    """The folder of fashion-mnist/ and mnist/: --data-dir, else generated (--quick) or .carry."""
    if args.data_dir is not None:
        return args.data_dir
    return make_tiny_dataset(work / "data") if args.quick else ROOT / ".carry"


def run_steps(args, check: "Check", out: Path, work: Path) -> None:
    """Every step in order: the numbers first (warm-up, MNIST, Fashion-MNIST, ops, the CPU
    comparisons, the benchmark), the GPU suite last."""
    data_dir = check.guarded("data", prepare_data, args, work) or ROOT / ".carry"
    check.summary["data_dir"] = str(data_dir)

    # the CPU reference runs start first and run beside the device steps
    cpu = check.guarded("train_cpu", start_cpu_runs, check, data_dir, work, args.cpu_epochs)
    steps = [
        ("doctor", step_doctor, (check, out)),
        ("warmup", step_warmup, (check, work)),
        ("mnist", step_mnist, (check, data_dir, work, out)),
        ("train", step_train, (check, data_dir, work, out)),
        ("kernels", step_kernels, (check, work, out)),
        ("train_cpu", finish_cpu_runs, (check, cpu, work, out)),
        ("bench", step_bench, (check, work, out)),
        ("pytest", step_pytest, (check, out)),
    ]
    assert tuple(name for name, _, _ in steps) == STEPS
    for name, step, step_args in steps:
        if name == "train_cpu" and cpu is None:
            continue  # recorded as failed when they could not start
        if name != "train_cpu" and check.no_time_for(name):
            continue
        check.guarded(name, step, *step_args)


# -- the command line -----------------------------------------------------------------------------

def child_main(args) -> int:
    """The check's own child processes: --warmup, --kernel-timing, --mnist-run. An error is
    written into the child's JSON file with its class, and its traceback goes to the log."""
    if args.warmup is not None:
        target, job = args.warmup, lambda: warmup(args.device, args.warmup, args.quick)
    elif args.kernel_timing is not None:
        target, job = args.kernel_timing, lambda: kernel_timing(args.device, args.kernel_timing, args.quick)
    else:
        target, job = args.mnist_run, lambda: mnist_run(args.device, args.data_dir, args.mnist_run,
                                                        args.mnist_model, args.mnist_epochs, args.quick,
                                                        args.parity_only)
    try:
        return job()
    except Exception as exc:  # noqa: BLE001 -- reported to the parent with its class
        traceback.print_exc()
        found = read_json(target)
        found["error"] = error_of(exc)
        write_atomic(target, json.dumps(found) + "\n")
        return 1


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder holding fashion-mnist/ and mnist/ (default: .carry; --quick: generated)")
    p.add_argument("--quick", action="store_true", help="tiny data, 1 epoch, tiny bench")
    p.add_argument("--budget", type=float, default=None,
                   help="overall seconds (default 465; --quick 240)")
    p.add_argument("--cpu-epochs", type=int, default=1, help="epochs of the CPU reference run")
    p.add_argument("--mnist-model", default=MNIST_MODEL, help=argparse.SUPPRESS)
    p.add_argument("--mnist-epochs", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--kernel-timing", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--mnist-run", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--parity-only", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def on_signal(signum, frame):
    raise Interrupted(signum)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.warmup or args.kernel_timing or args.mnist_run:
        return child_main(args)

    out = args.outdir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"gpu_check: cannot create {out}: {exc.strerror}", file=sys.stderr)
        return 2
    budget = args.budget or (240.0 if args.quick else 465.0)
    check = Check(out, args.device, args.quick, budget)
    check.write_summary()
    atexit.register(check.close, "exit")  # a path the handlers below miss still leaves a summary
    previous = {signum: signal.signal(signum, on_signal) for signum in EXIT_SIGNALS}
    work = Path(tempfile.mkdtemp(prefix="cnn_xp_gpu_check_"))
    try:
        run_steps(args, check, out, work)
        check.close("end")
    except Interrupted as exc:
        print(f"gpu_check: stopped by {exc}", file=sys.stderr)
        check.close(str(exc))
        return 128 + exc.signum
    except BaseException as exc:  # a bug in the check itself: still a summary, with the error
        traceback.print_exc()
        check.close("error", exc)
        return 1
    finally:
        kill_children()
        shutil.rmtree(work, ignore_errors=True)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        atexit.unregister(check.close)
    print(json.dumps(check.summary, indent=1), flush=True)
    return 0 if check.summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
