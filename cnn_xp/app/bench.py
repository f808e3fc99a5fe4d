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
infers through ``parallel.runner_for``, as ``fit`` does. Writes a JSON file and a
markdown table.

``--real`` measures real training instead (``cnn_xp.app.bench_training``): epoch times over
several epochs of real MNIST and the time to a test accuracy, ours and PyTorch's running the
same recipe, alternating epoch by epoch.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys

import numpy

from .. import backend, dispatch, models
from ..errors import CnnXpError
from .bench_common import write_report, BenchError, accelerator_description, import_torch, machine_description
from .bench_step import DEFAULT_MODELS, bench_one, gemm_rate

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


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
    warning = dispatch.accelerator_warning(args.device) if args.kernels != "reference" else None
    if warning:
        print(f"cnn-xp bench: warning: {warning}", file=sys.stderr)
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
    except CnnXpError as exc:  # BenchError, a bad CNN_XP_THREADS or kernel mode, ...
        print(f"cnn-xp bench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cnn-xp bench: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
