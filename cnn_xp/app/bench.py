"""``cnn-xp bench``: training and inference throughput, side by side with PyTorch.

For each zoo model, dtype and batch size: images/s of a training step (forward + backward +
the model's own optimizer step) and of inference, after a warm-up, over ``--repeats`` timed
repeats (median, min, max). With PyTorch importable the same network (same weights, same
optimizer) is timed *interleaved* with ours (ours, torch, ours, torch, ...) on the same
device, so machine load hits both alike, and the ratio ours/torch is reported. Also: FLOPs
per image (multiply-adds x 2 of conv and affine layers; training = forward + dW + dX without
the first layer's dX), the measured GEMM rate of the machine and each result as a fraction
of it, and the peak memory of a training step. ``--kernels`` times the accelerated path
(``auto``), the reference (``reference``) or both, each against its own interleaved PyTorch
runs; the report says which implementation ran each op. On the CPU our side trains and
infers through ``parallel.BatchSlices``, as the trainer does. Writes a JSON file and a
markdown table.

``--real`` measures real training instead (``cnn_xp.app.bench_training``): epoch times over
several epochs of real MNIST and the time to a test accuracy, ours and PyTorch's running the
same recipe, alternating epoch by epoch.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy

from .. import backend, dispatch, models, parallel
from ..models import INPUT_SHAPE, NUM_CLASSES
from .bench_common import (SETTLE_SECONDS, write_report, BenchError, accelerator_description, import_torch,
                           machine_description, torch_optimizer, torch_param_groups, torch_twin,
                           twin_parameters)

DEFAULT_MODELS = ["simple_convnet", "deep_convnet", "one_conv", "lenet5"]
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# -- FLOPs ----------------------------------------------------------------------------
def flops_per_image(model) -> dict:
    """Forward and training FLOPs per image of a Sequential (conv and affine layers only).

    A multiply-add counts 2. Training = forward + dW (same count as forward per layer) + dX
    (same again) for every learnable layer except the first, whose input gradient is skipped.
    """
    per_layer = [f for f in model.layer_flops(INPUT_SHAPE) if f]
    forward = sum(per_layer)
    first_dx = per_layer[0] if per_layer and not model.layers[0].need_input_grad else 0
    return {"forward": forward, "train": 3 * forward - first_dx}


def gemm_rate(xp, dtype: str, size: int, device: str) -> float:
    """GFLOP/s of a large square matmul in ``xp`` (best of a few)."""
    rng = numpy.random.default_rng(0)
    a = backend.to_device(rng.random((size, size)).astype(dtype), device)
    b = backend.to_device(rng.random((size, size)).astype(dtype), device)
    a @ b
    backend.synchronize(device)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        backend.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best / 1e9


# -- our side -------------------------------------------------------------------------
class OurRunner:
    """A zoo model with its own optimizer, ready to time."""

    def __init__(self, name: str, dtype: str, device: str, seed: int = 0):
        self.device = device
        self.model = models.build(name, seed=seed, device=device, dtype=dtype)
        self.optimizer = models.build_optimizer(name, self.model)
        # what the trainer runs: on the CPU, batches in slices on every core
        self.steps = parallel.runner_for(self.model)

    def set_batch(self, x, t):
        self.x = backend.to_device(x.astype(self.model.dtype), self.device)
        self.t = backend.to_device(t, self.device)

    def train(self, steps: int) -> None:
        for _ in range(steps):
            self.steps.loss(self.x, self.t)
            self.steps.backward()
            self.optimizer.step()
        backend.synchronize(self.device)

    def infer(self, steps: int) -> None:
        for _ in range(steps):
            self.steps.predict(self.x, train=False)
        backend.synchronize(self.device)


class TorchRunner:
    """The same network in PyTorch, same weights and optimizer, on the matching device."""

    def __init__(self, torch, ours: OurRunner, name: str):
        spec = models.get_spec(name)
        self.torch = torch
        self.cuda = ours.device == "gpu"
        self.dev = torch.device("cuda" if self.cuda else "cpu")
        self.net = torch_twin(torch, ours.model).to(self.dev)
        self.net = self.net.to(getattr(torch, ours.model.dtype))
        groups = torch_param_groups(twin_parameters(ours.model, self.net), ours.model,
                                    {"lr": spec.lr, "lr_groups": list(spec.lr_groups)})
        self.optimizer = torch_optimizer(torch, spec.optimizer, groups, spec.lr, spec.optimizer_kwargs)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.dtype = getattr(torch, ours.model.dtype)

    def set_batch(self, x, t):
        self.x = self.torch.from_numpy(x).to(self.dev, self.dtype)
        self.t = self.torch.from_numpy(t.astype(numpy.int64)).to(self.dev)

    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def train(self, steps: int) -> None:
        self.net.train()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.net(self.x), self.t)
            loss.backward()
            self.optimizer.step()
        self._sync()

    def infer(self, steps: int) -> None:
        self.net.eval()
        with self.torch.no_grad():
            for _ in range(steps):
                self.net(self.x)
        self._sync()


# -- timing ---------------------------------------------------------------------------
def summarize(rates: list[float]) -> dict:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "runs": [round(r, 1) for r in rates]}


def time_interleaved(runners: dict, phase: str, steps: int, batch: int, repeats: int,
                     settle: float = 0.0) -> dict:
    """images/s per runner; repeats alternate between runners (ours, torch, ours, ...),
    each run after ``settle`` idle seconds."""
    rates = {key: [] for key in runners}
    for _ in range(repeats):
        for key, runner in runners.items():
            time.sleep(settle)
            start = time.perf_counter()
            getattr(runner, phase)(steps)
            rates[key].append(steps * batch / (time.perf_counter() - start))
    return {key: summarize(values) for key, values in rates.items()}


def peak_train_memory(ours: OurRunner) -> int:
    """Peak bytes allocated during one training step beyond what was live before it.

    CPU: tracemalloc (NumPy reports its array buffers to it); GPU: the CuPy memory pool's
    total bytes after a step, starting from an emptied pool (parameters and batch included).
    """
    if ours.device == "gpu":
        cp = backend.cupy()
        pool = cp.get_default_memory_pool()
        pool.free_all_blocks()
        ours.train(1)
        return int(pool.total_bytes())
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        ours.train(1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return int(peak - base)


def default_steps(batch: int, device: str = "cpu") -> int:
    """Steps per timed repeat: about 2,000 images on the CPU; 20,000 on a GPU, where a step
    takes a millisecond or two and short windows are dominated by host jitter."""
    return max(2, (20_000 if device == "gpu" else 2_000) // batch)


def bench_one(name, dtype, batch, args, torch, gemm, kernels: str = "auto") -> dict:
    dispatch.set_mode(kernels)
    rng = numpy.random.default_rng(1)
    x = rng.random((batch, *INPUT_SHAPE)).astype(dtype)
    t = rng.integers(0, NUM_CLASSES, size=batch)
    ours = OurRunner(name, dtype, args.device)
    runners = {"ours": ours}
    if torch is not None:
        runners["torch"] = TorchRunner(torch, ours, name)
    for runner in runners.values():
        runner.set_batch(x, t)
    flops = flops_per_image(ours.model)
    steps = args.steps or default_steps(batch, args.device)
    for runner in runners.values():  # warm-up: caches, allocator pools, BLAS threads
        runner.train(max(1, steps // 4))
        runner.infer(max(1, steps // 4))
    settle = SETTLE_SECONDS if args.device == "cpu" and len(runners) > 1 else 0.0
    train = time_interleaved(runners, "train", steps, batch, args.repeats, settle)
    infer = time_interleaved(runners, "infer", steps, batch, args.repeats, settle)
    result = {
        "model": name, "dtype": dtype, "batch": batch, "device": args.device, "steps": steps,
        "kernels": kernels, "implementations": dispatch.table(args.device),
        "repeats": args.repeats, "optimizer": models.get_spec(name).optimizer,
        "flops_per_image": flops,
        "train": train["ours"], "infer": infer["ours"],
        "train_gflops": train["ours"]["median"] * flops["train"] / 1e9,
        "infer_gflops": infer["ours"]["median"] * flops["forward"] / 1e9,
        "peak_train_bytes": peak_train_memory(ours),
        "param_bytes": sum(int(layer.params[k].nbytes) for _, layer, k in ours.model.params_and_grads()),
    }
    result["train_fraction_of_gemm"] = result["train_gflops"] / gemm[dtype]
    result["infer_fraction_of_gemm"] = result["infer_gflops"] / gemm[dtype]
    if "torch" in runners:
        result["torch_train"] = train["torch"]
        result["torch_infer"] = infer["torch"]
        result["train_ratio"] = train["ours"]["median"] / train["torch"]["median"]
        result["infer_ratio"] = infer["ours"]["median"] / infer["torch"]["median"]
    return result


# -- reporting ------------------------------------------------------------------------
def _rate(summary: dict) -> str:
    return f"{summary['median']:,.0f} ({summary['min']:,.0f}-{summary['max']:,.0f})"


def markdown_table(report: dict) -> str:
    peer = report["peer"] is not None
    head = ["model", "kernels", "dtype", "batch", "train img/s (min-max)"]
    head += ["torch train", "ratio"] if peer else []
    head += ["infer img/s (min-max)"]
    head += ["torch infer", "ratio"] if peer else []
    head += ["MFLOP/img train", "train % of GEMM", "peak step MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        row = [r["model"], r.get("kernels", "auto"), r["dtype"], str(r["batch"]), _rate(r["train"])]
        row += [_rate(r["torch_train"]), f"{r['train_ratio']:.2f}x"] if peer else []
        row += [_rate(r["infer"])]
        row += [_rate(r["torch_infer"]), f"{r['infer_ratio']:.2f}x"] if peer else []
        row += [f"{r['flops_per_image']['train'] / 1e6:.2f}", f"{100 * r['train_fraction_of_gemm']:.1f}%",
                f"{r['peak_train_bytes'] / 2**20:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    env = ", ".join(f"{k}={v if v is not None else '(unset)'}" for k, v in report["env"].items())
    gemm = ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in report["gemm_gflops"].items())
    kernels = f"; accelerator: {report['accelerator']}" if report.get("accelerator") else ""
    lines += ["", f"Device: {report['device']} ({report['machine']}){kernels}; GEMM rate: {gemm}; {env}.",
              f"numpy {report['versions']['numpy']}" + (f", torch {report['versions']['torch']}" if peer else "")
              + f"; command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


# -- command line ---------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="cnn-xp bench", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help=f"zoo models (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--device", choices=backend.DEVICES, default="cpu")
    p.add_argument("--dtypes", nargs="+", choices=backend.FLOAT_DTYPES, default=None)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (>= 3)")
    p.add_argument("--steps", type=int, default=None, help="steps per repeat (default 2000 / batch)")
    p.add_argument("--peer", choices=["auto", "torch", "none"], default="auto",
                   help="time PyTorch alongside (auto: when importable)")
    p.add_argument("--kernels", choices=["auto", "reference", "both"], default=None,
                   help="time the accelerated ops (auto), the reference, or both "
                        "(default: $CNN_XP_KERNELS, else auto)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--markdown", default=None, metavar="PATH", help="write the markdown table")
    p.add_argument("--quick", action="store_true", help="a fast smoke run: float32, batch 100, few steps")
    p.add_argument("--unset-openblas-env", action="store_true",
                   help="re-run in a subprocess without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE")
    real = p.add_argument_group("real training (--real)")
    real.add_argument("--real", action="store_true",
                      help="train each model's recipe on real data: seconds per epoch and time to --target "
                           "test accuracy, side by side with PyTorch (default models: fast_mnist simple_convnet)")
    real.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the recipe's, at most 4)")
    real.add_argument("--target", type=float, default=0.99, help="test accuracy to time to (default 0.99)")
    real.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED", help="one run per seed")
    real.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    real.add_argument("--data-dir", default=None, metavar="DIR", help="folder of the four IDX files")
    real.add_argument("--limit-train", type=int, default=None, metavar="N", help="the first N training images")
    real.add_argument("--limit-test", type=int, default=None, metavar="N", help="the first N test images")
    args = p.parse_args(argv)
    if args.real:
        if args.epochs is not None and args.epochs < 1:
            raise BenchError(f"--epochs must be a positive integer, got {args.epochs}")
        if not 0 < args.target <= 1:
            raise BenchError(f"--target must be a test accuracy in (0, 1], got {args.target}")
        if any(seed < 0 for seed in args.seeds):
            raise BenchError("--seeds must be 0 or more")
        for key in ("limit_train", "limit_test"):
            if getattr(args, key) is not None and getattr(args, key) < 1:
                raise BenchError(f"--{key.replace('_', '-')} must be a positive integer")
    elif not args.models:
        args.models = DEFAULT_MODELS
    for name in args.models or []:
        if name not in models.MODELS:
            raise BenchError(f"unknown model {name!r}; choose from {', '.join(models.MODELS)}")
    args.dtypes = args.dtypes or (["float32"] if args.quick else ["float32", "float64"])
    args.batch_sizes = args.batch_sizes or [100]
    if args.quick and args.steps is None:
        args.steps = 3
    if args.repeats < 3:
        raise BenchError(f"--repeats must be at least 3 (median and spread), got {args.repeats}")
    if any(b < 1 for b in args.batch_sizes) or (args.steps is not None and args.steps < 1):
        raise BenchError("--batch-sizes and --steps must be positive")
    return args


def rerun_without_openblas_env(argv) -> int:
    """Run this benchmark again in a child Python whose environment lacks the OpenBLAS vars."""
    env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_VARS}
    return subprocess.call([sys.executable, "-m", "cnn_xp.app.bench", *argv], env=env)


def run(args, argv) -> int:
    backend.retain_host_memory()  # as the cnn-xp commands do; PyTorch's host memory too
    if args.device == "gpu":
        try:
            backend.cupy()
        except backend.GPUUnavailableError as exc:
            raise BenchError(str(exc)) from None
    torch = None
    if args.peer != "none":
        torch = import_torch()
        if torch is None and args.peer == "torch":
            raise BenchError("--peer torch: PyTorch is not installed (pip install 'cnn_xp[bench]')")
        if torch is not None and args.device == "gpu" and not torch.cuda.is_available():
            if args.peer == "torch":
                raise BenchError("--peer torch --device gpu: this PyTorch has no usable CUDA")
            torch = None
    if args.real:
        from .bench_training import run_real

        return run_real(args, argv, torch)
    xp = backend.get_xp(args.device)
    size = 512 if args.quick else 2048
    gemm = {dtype: gemm_rate(xp, dtype, size, args.device) for dtype in args.dtypes}
    results = []
    modes = ["auto", "reference"] if args.kernels == "both" else [args.kernels or dispatch.mode()]
    try:
        for dtype in args.dtypes:
            for batch in args.batch_sizes:
                for name in args.models:
                    for kernels in modes:
                        result = bench_one(name, dtype, batch, args, torch, gemm, kernels)
                        results.append(result)
                        ratio = (f"  ratio {result['train_ratio']:.2f}x / {result['infer_ratio']:.2f}x"
                                 if torch else "")
                        print(f"{name} [{kernels}] {dtype} batch {batch}: train {result['train']['median']:,.0f}"
                              f" img/s, infer {result['infer']['median']:,.0f} img/s{ratio}",
                              file=sys.stderr, flush=True)
    finally:
        dispatch.set_mode(None)
    report = {
        "command": " ".join(["cnn-xp bench", *argv]),
        "device": args.device, "machine": machine_description(args.device),
        "env": {k: os.environ.get(k) for k in OPENBLAS_VARS},
        "versions": {"python": platform.python_version(), "numpy": numpy.__version__,
                     "torch": getattr(torch, "__version__", None)},
        "peer": "torch" if torch is not None else None,
        "accelerator": accelerator_description(args.device),
        "gemm_gflops": gemm, "gemm_size": size, "results": results,
    }
    write_report(report, markdown_table(report), args)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
        if args.unset_openblas_env and any(k in os.environ for k in OPENBLAS_VARS):
            return rerun_without_openblas_env(argv)  # the child finds them unset and runs
        return run(args, argv)
    except (BenchError, parallel.ThreadSettingError, dispatch.KernelModeError) as exc:
        print(f"cnn-xp bench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cnn-xp bench: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
