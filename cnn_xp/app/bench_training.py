"""``cnn-xp bench --real``: real training on real data, side by side with PyTorch.

For each zoo model and seed: the model's own recipe (optimizer, parameter groups, schedule,
augmentation, batch size; ``--epochs`` epochs, default the recipe's, at most 4) trained by
the trainer's own epoch loop on the real training set, the test set evaluated after every
epoch. Reported: seconds per epoch, every epoch (the slowdown over epochs shows there),
test accuracy per epoch, and the time to ``--target`` test accuracy: data loading, set-up,
training and the evaluations, up to the first epoch whose test accuracy reaches it.

The PyTorch twin runs the same recipe: the same network with our initial weights copied in,
the same optimizer and parameter groups, the same learning rate per step (a ``LambdaLR``
with our schedule's factors), the same batches in the same order and the same augmented
images (drawn by our augmenter on the host); only dropout masks differ. The two alternate
epoch by epoch (ours, torch, ours, ...), each after a short idle pause, so a load on the
machine hits both alike. One untimed step on throwaway copies first loads our compiled
kernels and PyTorch's. Ratios are torch seconds / our seconds: above 1, ours is faster.
"""
from __future__ import annotations

import platform
import statistics
import sys
import time

import numpy

from .. import backend, dispatch, models, parallel
from .bench_common import torch_param_groups, twin_parameters, write_report
from .bench_real_report import markdown_table, summarize_seeds, summary_line

DEFAULT_MODELS = ["fast_mnist", "simple_convnet"]
MAX_DEFAULT_EPOCHS = 4


class _Clock:
    """Seconds spent in named phases."""

    def __init__(self):
        self.seconds = {}

    def add(self, phase, seconds):
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


def load_real_data(dataset: str, data_dir, limit_train, limit_test, dtype: str):
    """(host arrays x_train, t_train, x_test, t_test, seconds, folder); the BenchError-free
    DatasetError of a missing data set propagates."""
    from ..data import load_dataset, to_float

    tic = time.perf_counter()
    ds = load_dataset(dataset, data_dir, download=False, progress=False)
    x, t, x_test, t_test = ds.train_images, ds.train_labels, ds.test_images, ds.test_labels
    if limit_train:
        x, t = x[:limit_train], t[:limit_train]
    if limit_test:
        x_test, t_test = x_test[:limit_test], t_test[:limit_test]
    x, x_test = to_float(x, dtype), to_float(x_test, dtype)
    return x, t, x_test, t_test, time.perf_counter() - tic, str(ds.folder)


def recipe(name: str, epochs: int, seed: int, dtype: str) -> dict:
    """The model's recipe for ``epochs`` epochs (no validation) as a dict: its fields, with
    ``schedule`` as ``fit``'s schedule argument and ``recipe`` the ``Recipe`` itself."""
    from ..recipe import Recipe

    resolved = Recipe.create(name, epochs=epochs, seed=seed, dtype=dtype, val_size=0)
    return {**resolved.to_dict(), "schedule": resolved.schedule_spec(), "recipe": resolved}


class OurRun:
    """Our trainer's parts and epoch loop for one recipe."""

    label = "ours"

    def __init__(self, name, hp, x, t, x_test, t_test, device):
        tic = time.perf_counter()
        self.recipe, self.device = hp["recipe"].replace(batch_size=hp["batch_size"]), device
        self.model = self.recipe.build_model(device)
        self.optimizer = self.recipe.build_optimizer(self.model)
        self.x, self.t = backend.to_device(x, device), backend.to_device(t, device)
        self.x_test = backend.to_device(x_test, device)
        self.t_test = backend.to_device(t_test, device)
        self.state = None  # fit's training state after the last epoch trained
        self.setup_seconds = time.perf_counter() - tic

    def train_epoch(self, epoch):
        """Epoch ``epoch`` through ``cnn_xp.fit``, continuing from the previous epoch's state."""
        from ..callbacks import Callback
        from ..training import fit

        run = self

        class KeepState(Callback):
            def on_train_end(self, logs):
                run.state = self.training.state()

        r = self.recipe
        fit(self.model, self.optimizer, (self.x, self.t), epochs=epoch, batch_size=r.batch_size,
            schedule=r.schedule_spec(),
            augment=r.augment, seed=r.seed, initial_state=self.state, callbacks=[KeepState()], verbose=False)
        backend.synchronize(self.device)

    def evaluate(self) -> float:
        from ..training import evaluate

        return evaluate(self.model, (self.x_test, self.t_test))["accuracy"]


class TorchRun:
    """The PyTorch twin of an :class:`OurRun`: same initial weights, optimizer, groups,
    per-step learning rates, batches and augmented images."""

    label = "torch"

    def __init__(self, torch, name, hp, x, t, x_test, t_test, device):
        from ..data import BatchIterator
        from .bench_common import torch_optimizer, torch_twin
        from ..training import build_augmenter, build_schedule

        tic = time.perf_counter()
        self.torch, self.hp = torch, hp
        self.cuda = device == "gpu"
        self.dev = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = getattr(torch, hp["dtype"])
        model = models.build(name, seed=hp["seed"], dtype=hp["dtype"])  # our initial weights
        self.net = torch_twin(torch, model).to(self.dev, self.dtype)
        kwargs = dict(hp["optimizer_args"])
        groups = torch_param_groups(twin_parameters(model, self.net), model, hp)
        self.optimizer = torch_optimizer(torch, hp["optimizer"], groups, float(hp["lr"]), kwargs)
        self.batches = BatchIterator(x, t.astype(numpy.int64), hp["batch_size"], seed=hp["seed"], device="cpu")
        self.scheduler = None
        if hp.get("schedule") is not None:
            schedule = build_schedule(hp["schedule"], len(self.batches), hp["epochs"])
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule.factor)
        strengths = hp.get("augment")
        self.augmenter = build_augmenter(strengths, hp["seed"])
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.x_test = torch.from_numpy(x_test).to(self.dev, self.dtype)
        self.t_test = torch.from_numpy(t_test.astype(numpy.int64)).to(self.dev)
        self.setup_seconds = time.perf_counter() - tic

    def _sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def train_epoch(self, epoch):
        torch = self.torch
        self.net.train()
        for xb, tb in self.batches:
            if self.augmenter is not None:
                xb = self.augmenter(xb)
            xb = torch.from_numpy(xb).to(self.dev, self.dtype)
            tb = torch.from_numpy(tb).to(self.dev)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.net(xb), tb)
            loss.backward()
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
        self._sync()

    def evaluate(self) -> float:
        torch = self.torch
        self.net.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(self.t_test), 1000):
                scores = self.net(self.x_test[start:start + 1000])
                correct += int((scores.argmax(dim=1) == self.t_test[start:start + 1000]).sum())
        return correct / len(self.t_test)


def warm_up(name: str, hp: dict, x, t, torch, device: str) -> None:
    """One untimed training step of each side on throwaway copies of the recipe (our compiled
    kernels load, PyTorch initialises its own), so that one-time start-up is not timed."""
    few = dict(hp, batch_size=min(8, len(t)))  # OurRun applies batch_size to the recipe
    runs = [OurRun(name, few, x[:8], t[:8], x[:8], t[:8], device)]
    if torch is not None:
        runs.append(TorchRun(torch, name, few, x[:8], t[:8], x[:8], t[:8], device))
    for run in runs:
        run.train_epoch(1)
        run.evaluate()


def measure(runs: list, epochs: int, target: float, load_seconds: float, settle: float) -> dict:
    """Train every run for ``epochs`` epochs, alternating epoch by epoch; per run: seconds of
    every epoch and evaluation, test accuracy per epoch, time to ``target``."""
    results = {run.label: {"setup_seconds": run.setup_seconds, "epoch_seconds": [], "eval_seconds": [],
                           "test_accuracy": [], "time_to_target": None, "epochs_to_target": None}
               for run in runs}
    for epoch in range(1, epochs + 1):
        for run in runs:
            r = results[run.label]
            time.sleep(settle)
            tic = time.perf_counter()
            run.train_epoch(epoch)
            r["epoch_seconds"].append(time.perf_counter() - tic)
            tic = time.perf_counter()
            acc = run.evaluate()
            r["eval_seconds"].append(time.perf_counter() - tic)
            r["test_accuracy"].append(acc)
            if r["time_to_target"] is None and acc >= target:
                r["time_to_target"] = (load_seconds + r["setup_seconds"] + sum(r["epoch_seconds"])
                                       + sum(r["eval_seconds"]))
                r["epochs_to_target"] = epoch
    for r in results.values():
        r["final_accuracy"] = r["test_accuracy"][-1]
        r["total_seconds"] = load_seconds + r["setup_seconds"] + sum(r["epoch_seconds"]) + sum(r["eval_seconds"])
    return results


def run_real(args, argv, torch) -> int:
    """The ``--real`` benchmark; returns the exit status."""
    from ..data import DatasetError
    from .bench_common import SETTLE_SECONDS, BenchError, accelerator_description, machine_description

    names = args.models or DEFAULT_MODELS
    dtype = (args.dtypes or ["float32"])[0]
    try:
        x, t, x_test, t_test, load_seconds, folder = load_real_data(
            args.dataset, args.data_dir, args.limit_train, args.limit_test, dtype)
    except DatasetError as exc:
        raise BenchError(f"--real needs the {args.dataset} files: {exc}") from None
    print(f"data: {args.dataset} from {folder}: {len(t)} train, {len(t_test)} test images, "
          f"loaded in {load_seconds:.2f} s", file=sys.stderr, flush=True)
    settle = SETTLE_SECONDS if args.device == "cpu" and torch is not None else 0.0
    results = []
    for name in names:
        spec = models.get_spec(name)
        epochs = args.epochs or min(spec.epochs, MAX_DEFAULT_EPOCHS)
        for seed in args.seeds:
            hp = recipe(name, epochs, seed, dtype)
            with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
                warm_up(name, hp, x, t, torch, args.device)
            runs = [OurRun(name, hp, x, t, x_test, t_test, args.device)]
            if torch is not None:
                runs.append(TorchRun(torch, name, hp, x, t, x_test, t_test, args.device))
            with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
                measured = measure(runs, epochs, args.target, load_seconds, settle)
            row = {"model": name, "seed": seed, "epochs": epochs, "batch": hp["batch_size"],
                   "optimizer": hp["optimizer"], "schedule": (hp["schedule"] or {}).get("name"),
                   "augment": hp["augment"], "target": args.target, "load_seconds": load_seconds, **measured}
            if "torch" in measured:
                ours, theirs = measured["ours"], measured["torch"]
                row["epoch_ratio"] = statistics.median(theirs["epoch_seconds"]) / statistics.median(ours["epoch_seconds"])
                row["total_ratio"] = theirs["total_seconds"] / ours["total_seconds"]
                if ours["time_to_target"] and theirs["time_to_target"]:
                    row["time_to_target_ratio"] = theirs["time_to_target"] / ours["time_to_target"]
            results.append(row)
            print(summary_line(row), file=sys.stderr, flush=True)
    report = {
        "command": " ".join(["cnn-xp bench", *argv]), "kind": "real-training",
        "device": args.device, "machine": machine_description(args.device),
        "dataset": args.dataset, "train_images": int(len(t)), "test_images": int(len(t_test)),
        "threads": parallel.thread_setting(), "torch_threads": torch.get_num_threads() if torch else None,
        "versions": {"python": platform.python_version(), "numpy": numpy.__version__,
                     "torch": getattr(torch, "__version__", None)},
        "peer": "torch" if torch is not None else None,
        "accelerator": accelerator_description(args.device), "kernels": dispatch.mode(),
        "results": results, "summary": summarize_seeds(results),
    }
    write_report(report, markdown_table(report), args)
    return 0
