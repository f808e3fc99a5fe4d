"""Where a training step's time goes: per-layer forward/backward and optimizer times.

    python scripts/profile_step.py --model simple_convnet --device gpu --batch-size 1000

Each entry is synchronised on its own (``backend.synchronize``), so on a GPU the numbers
include launch overhead and the sum exceeds an unsynchronised step. Medians over --steps.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from cnn_xp import backend, models  # noqa: E402
from cnn_xp.atomic import write_text  # noqa: E402


def profile(name: str, device: str, batch: int, steps: int, dtype: str) -> dict:
    model = models.build(name, seed=0, device=device, dtype=dtype)
    opt = models.build_optimizer(name, model)
    rng = np.random.default_rng(0)
    x = backend.to_device(rng.random((batch, *models.INPUT_SHAPE), dtype=np.float32).astype(dtype), device)
    t = backend.to_device(rng.integers(0, models.NUM_CLASSES, batch), device)
    order = range(len(model.layers))
    times: dict[str, list[float]] = {}

    def timed(label, fn, *args):
        """fn(*args), its time (between two device synchronisations) recorded under label."""
        backend.synchronize(device)
        start = time.perf_counter()
        out = fn(*args)
        backend.synchronize(device)
        times.setdefault(label, []).append(time.perf_counter() - start)
        return out

    for step in range(steps + 2):
        if step == 2:
            times.clear()  # the first two steps warm caches and compile kernels
        h = x
        for i in order:
            layer = model.layers[i]
            h = timed(f"fwd {i} {type(layer).__name__}", layer.forward, h)  # train=True
        timed("fwd loss", model.loss_layer.forward, h, t)
        g = timed("bwd loss", model.loss_layer.backward)
        for i in reversed(order):
            layer = model.layers[i]
            g = timed(f"bwd {i} {type(layer).__name__}", layer.backward, g)
            if g is None:
                break
        timed("optimizer step", opt.step)
        backend.synchronize(device)
        start = time.perf_counter()
        model.loss(x, t)
        model.backward()
        opt.step()
        backend.synchronize(device)
        times.setdefault("whole step (unsynchronised)", []).append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"model": name, "device": device, "batch": batch, "dtype": dtype, "ms": med}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=["simple_convnet"], choices=sorted(models.MODELS))
    p.add_argument("--device", choices=backend.DEVICES, default="cpu")
    p.add_argument("--batch-size", nargs="+", type=int, default=[100])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--dtype", default="float32", choices=backend.FLOAT_DTYPES)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    backend.retain_host_memory()  # as cnn-xp train does
    results = []
    for name in args.model:
        for batch in args.batch_size:
            r = profile(name, args.device, batch, args.steps, args.dtype)
            results.append(r)
            total = sum(v for k, v in r["ms"].items() if not k.startswith("whole"))
            print(f"\n{name} {args.device} batch {batch} {args.dtype}: "
                  f"{1e3 * batch / r['ms']['whole step (unsynchronised)']:,.0f} img/s")
            for label, ms in sorted(r["ms"].items(), key=lambda kv: -kv[1]):
                share = f"{100 * ms / total:5.1f}%" if not label.startswith("whole") else "      "
                print(f"  {label:32s} {ms:8.3f} ms {share}")
    if args.json:
        write_text(args.json, json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
