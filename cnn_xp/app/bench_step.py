"""The step benchmark's measurements (``cnn-xp bench`` without ``--real``): FLOPs per image,
the machine's GEMM rate, our training step and inference and PyTorch's twin of them, timed
interleaved, and the peak memory of a training step. ``cnn_xp.app.bench`` parses the flags
and writes the report."""
from __future__ import annotations

import statistics
import time
import tracemalloc

import numpy

from .. import backend, dispatch, models, parallel
from ..models import INPUT_SHAPE, NUM_CLASSES
from .bench_common import (SETTLE_SECONDS, torch_optimizer, torch_param_groups, torch_twin,
                           twin_parameters)

DEFAULT_MODELS = ["simple_convnet", "deep_convnet", "one_conv", "lenet5"]

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
