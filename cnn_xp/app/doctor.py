"""``cnn-xp doctor``: what this machine can run, and proof that it runs.

Prints the versions that matter (Python, NumPy and its BLAS, the installed CuPy wheel, the
CUDA runtime CuPy was built for and the driver's CUDA version, each GPU), says which devices
are usable and why not, then trains a tiny conv net (conv - ReLU - maxpool - affine, softmax
cross-entropy, Adam) for a few steps on every usable device: the loss must be finite and fall,
and CPU and GPU must agree on the first loss (same seed, same weights). It says, per device,
the kernel mode, the accelerator (``cnn_xp.kernels.cpu`` / ``cnn_xp.kernels.cuda``) or why
there is none, and which implementation runs each op. Exit code 0 when the CPU works (a
missing GPU is reported, not an error), 1 otherwise.
"""
from __future__ import annotations

import importlib.metadata
import math
import platform
import statistics
import sys
import time

import numpy

from .. import __version__, backend, dispatch
from ..layers import Affine, Conv2D, MaxPool2D, ReLU
from ..model import Sequential
from ..optim import Adam

CHECK_SEED = 0
CHECK_BATCH = 16  # images (1, 12, 12), 10 classes
CHECK_STEPS = 6   # one warm-up step, then the timed ones
AGREE_RTOL = 1e-4  # float32 CPU vs GPU first loss


def _cuda_version(code: int) -> str:
    """12090 -> "12.9" (CUDA encodes major*1000 + minor*10)."""
    return f"{code // 1000}.{(code % 1000) // 10}"


def _cupy_wheels() -> list[str]:
    """Installed distributions whose name starts with "cupy" (without importing cupy)."""
    found = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower().startswith("cupy"):
            found.add(f"{name} {dist.version}")
    return sorted(found)


def _numpy_blas() -> str:
    try:
        config = numpy.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no dict mode
        return "unknown"


def _report_versions(say) -> None:
    say(f"cnn_xp {__version__}")
    say(f"python {platform.python_version()} ({platform.python_implementation()}) on {platform.platform()}")
    say(f"numpy {numpy.__version__} (BLAS: {_numpy_blas()})")
    wheels = _cupy_wheels()
    if not wheels:
        say("cupy: not installed (GPU support: pip install 'cnn_xp[gpu]')")
    else:
        say(f"cupy: {', '.join(wheels)}")
        if len(wheels) > 1:
            say("  warning: more than one CuPy wheel is installed; keep exactly one "
                "(pip uninstall the others)")


def _report_cuda(say) -> None:
    """CUDA runtime/driver versions and GPUs, as far as the installed cupy can tell."""
    try:
        cp = backend._import_cupy()
    except Exception as exc:  # not installed, or a broken install
        say(f"cuda: unknown (cupy cannot be imported: {type(exc).__name__}: {exc})")
        return
    runtime = cp.cuda.runtime
    built = driver = 0
    try:
        built = int(runtime.runtimeGetVersion())
        say(f"cuda runtime (cupy built for): {_cuda_version(built)}")
    except Exception as exc:
        say(f"cuda runtime: unknown ({type(exc).__name__}: {exc})")
    try:
        driver = int(runtime.driverGetVersion())
        say("cuda driver: " + (_cuda_version(driver) if driver else "none (no NVIDIA driver found)"))
    except Exception as exc:
        say(f"cuda driver: unknown ({type(exc).__name__}: {exc})")
    if driver and built and driver // 1000 < built // 1000:
        say(f"  hint: the driver supports CUDA {_cuda_version(driver)} but this CuPy wheel needs "
            f"CUDA {built // 1000}; install cupy-cuda{driver // 1000}x instead, or update the driver")
    if not backend.gpu_available():
        return
    try:
        count = int(runtime.getDeviceCount())
        for index in range(count):
            props = runtime.getDeviceProperties(index)
            name = props["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            memory = props["totalGlobalMem"] / 2**30
            say(f"gpu {index}: {name}, compute capability {props['major']}.{props['minor']}, "
                f"{memory:.1f} GiB")
    except Exception as exc:
        say(f"gpu properties: unknown ({type(exc).__name__}: {exc})")


def _check_batch():
    """A fixed host batch: x (N, 1, 12, 12) float32 in [0, 1), t (N,) int64 class indices."""
    rng = numpy.random.default_rng(CHECK_SEED)
    x = rng.random((CHECK_BATCH, 1, 12, 12), dtype=numpy.float32)
    t = rng.integers(0, 10, size=CHECK_BATCH)
    return x, t


def _check_model(device: str) -> Sequential:
    """conv 4x3x3 pad 1 - ReLU - maxpool 2 - affine 144->10; weights from one seed."""
    rng = numpy.random.default_rng(CHECK_SEED)
    layers = [Conv2D(1, 4, 3, pad=1, rng=rng), ReLU(), MaxPool2D(2), Affine(4 * 6 * 6, 10, rng=rng)]
    return Sequential(layers, device=device)


def check_device(device: str) -> dict:
    """Train the tiny net CHECK_STEPS Adam steps on one fixed batch on ``device``.

    Returns {"first_loss", "last_loss", "first_ms", "step_ms"}; raises RuntimeError when the
    numbers are wrong (non-finite loss or gradient, or a loss that does not fall)."""
    model = _check_model(device)
    opt = Adam(model, lr=1e-2)
    x, t = _check_batch()
    x, t = backend.to_device(x, device), backend.to_device(t, device)
    losses, times = [], []
    for _ in range(CHECK_STEPS):
        backend.synchronize(device)
        start = time.perf_counter()
        loss = model.loss(x, t)
        model.backward()
        opt.step()
        backend.synchronize(device)
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
        for name, layer, key in model.params_and_grads():
            if not bool(backend.xp_of(layer.grads[key]).isfinite(layer.grads[key]).all()):
                raise RuntimeError(f"non-finite gradient in {name}")
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"non-finite loss: {losses}")
    if not losses[-1] < losses[0]:
        raise RuntimeError(f"loss did not fall: {losses[0]:.4f} -> {losses[-1]:.4f}")
    return {"first_loss": losses[0], "last_loss": losses[-1], "first_ms": 1e3 * times[0],
            "step_ms": 1e3 * statistics.median(times[1:])}


def _report_kernels(say, device: str) -> None:
    """One line on the device's accelerator (or why there is none), one on who runs each op."""
    say(f"  {device} accelerator: {dispatch.describe_accelerator(device)}")
    table = dispatch.table(device)
    say(f"  {device} ops: " + ", ".join(f"{op} {name}" for op, name in table.items()))


def run_doctor(out=None) -> int:
    """Print the report to ``out`` (default sys.stdout); 0 when the CPU works, else 1."""
    out = sys.stdout if out is None else out

    def say(line: str = "") -> None:
        print(line, file=out)

    _report_versions(say)
    _report_cuda(say)
    gpu_ok, gpu_reason = backend.gpu_status()
    say("devices:")
    say("  cpu: usable (numpy)")
    say("  gpu: usable (cupy)" if gpu_ok else f"  gpu: not usable: {gpu_reason}")
    devices = ["cpu"] + (["gpu"] if gpu_ok else [])
    say(f"check: conv-relu-maxpool-affine net, batch {CHECK_BATCH}, float32, "
        f"{CHECK_STEPS} Adam steps per device")
    results = {}
    for device in devices:
        try:
            r = check_device(device)
        except Exception as exc:
            say(f"  {device}: FAILED: {type(exc).__name__}: {exc}")
            continue
        results[device] = r
        say(f"  {device}: ok, loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}; first step "
            f"{r['first_ms']:.1f} ms, then {r['step_ms']:.2f} ms/step (median of {CHECK_STEPS - 1})")
    say(f"kernels: mode {dispatch.mode()} ({dispatch.ENV}=auto|reference, --kernels)")
    for device in devices:
        _report_kernels(say, device)
    if "cpu" in results and "gpu" in results:
        a, b = results["cpu"]["first_loss"], results["gpu"]["first_loss"]
        if abs(a - b) <= AGREE_RTOL * abs(a):
            say(f"  cpu and gpu agree: first loss {a:.6f} vs {b:.6f}")
        else:
            say(f"  cpu and gpu DISAGREE: first loss {a:.6f} vs {b:.6f}")
    return 0 if "cpu" in results else 1


if __name__ == "__main__":
    sys.exit(run_doctor())
