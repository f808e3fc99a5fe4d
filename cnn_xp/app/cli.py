"""``cnn-xp``: train, evaluate, predict, download, doctor, bench.

Every user mistake (bad flag, unknown model, missing data, unusable GPU, bad image, ...)
ends with one line on stderr, ``cnn-xp: error: ...``, and exit status 2; a diverging
training run ends with exit status 1; success is 0. ``predict`` answers every good image
and names every bad one, then exits 2 if there was any. SIGINT and SIGTERM stop any
command with one line saying what was kept, and status 128 + the signal number.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import warnings

from .. import backend
from ..backend import FLOAT_DTYPES
from ..data.sources import DATASETS

PROG = "cnn-xp"


class _Exit(Exception):
    """Raised instead of argparse's own exit so errors stay one line."""

    def __init__(self, status: int, message: str = ""):
        super().__init__(message)
        self.status, self.message = status, message


class OneLineParser(argparse.ArgumentParser):
    """argparse without the usage block on errors: one line, status 2."""

    def error(self, message):
        raise _Exit(2, message)

    def exit(self, status=0, message=None):
        if message:
            (sys.stderr if status else sys.stdout).write(message)
        raise _Exit(status)


def _int_at_least(minimum: int):
    """An argparse ``type``: an int >= ``minimum`` (1: a positive integer, 0: 0 or more)."""
    wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {value}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _lr_group(key: str):
    """An argparse ``type``: ``PATTERNS=VALUE`` -> a parameter group ``{"params": [...], key: VALUE}``
    (PATTERNS: comma-separated parameter names or glob patterns, e.g. ``0.W,0.b`` or ``0.*``)."""

    def parse(text: str) -> dict:
        patterns, sep, value = text.rpartition("=")
        names = [p.strip() for p in patterns.split(",") if p.strip()]
        if not sep or not names:
            raise argparse.ArgumentTypeError(f"expected PARAMS=VALUE, e.g. '0.W,0.b=0.01' or '0.*=0.01', got {text!r}")
        return {"params": names, key: _positive_float(value)}

    return parse


def _schedule_name(text: str) -> str:
    from ..schedules import SCHEDULES

    if text.lower() not in SCHEDULES:
        raise argparse.ArgumentTypeError(f"unknown schedule {text!r}; choose one of {', '.join(SCHEDULES)}")
    return text.lower()


def _gamma(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _augment_spec(text: str) -> str:
    from ..augment import parse_spec

    try:
        parse_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_data_flags(p, dataset_required: bool = True):
    p.add_argument("--dataset", choices=tuple(DATASETS), required=dataset_required,
                   default=None, help="data set (the four IDX files)")
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the IDX files (searched first)")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="never download; fail when the data is not on disk")
    p.add_argument("--device", default="cpu", help="cpu or gpu (default: cpu)")
    _add_kernels_flag(p)


def _add_kernels_flag(p) -> None:
    from ..dispatch import MODES
    p.add_argument("--kernels", choices=MODES, default=None,
                   help="auto: the device's accelerated kernels where present; reference: the "
                        "reference ops everywhere (default: $CNN_XP_KERNELS, else auto)")


def add_train_arguments(p) -> None:
    """The flags of ``cnn-xp train`` (also used by scripts/train_mnist.py)."""
    from ..models import MODELS

    p.add_argument("--model", required=True, metavar="NAME", help=f"one of: {', '.join(MODELS)}")
    _add_data_flags(p)
    p.add_argument("--epochs", type=_positive_int, help="epochs (default: the model's)")
    p.add_argument("--batch-size", type=_positive_int, help="mini-batch size (default: the model's)")
    p.add_argument("--lr", type=_positive_float, help="learning rate (default: the model's)")
    p.add_argument("--optimizer", metavar="NAME",
                   help="sgd, momentum, nesterov, adagrad, rmsprop or adam (default: the model's)")
    p.add_argument("--lr-group", dest="lr_groups", action="append", type=_lr_group("lr"), metavar="PARAMS=LR",
                   help="a parameter group with its own learning rate, e.g. '0.W,0.b=0.001' or '0.*=0.001' "
                        "(names as in the checkpoint: layer index.W/b); repeatable; replaces the model's groups")
    p.add_argument("--lr-scale", dest="lr_groups", action="append", type=_lr_group("lr_scale"),
                   metavar="PARAMS=FACTOR", help="a parameter group whose learning rate is FACTOR times --lr, "
                                                 "e.g. '0.*=0.00128'; repeatable; replaces the model's groups")
    p.add_argument("--schedule", type=_schedule_name, metavar="NAME",
                   help="learning-rate schedule: constant, step, cosine or onecycle (default: the model's)")
    p.add_argument("--warmup-epochs", type=_non_negative_float, metavar="E",
                   help="linear warm-up over E epochs (may be fractional); for onecycle, its rising phase")
    p.add_argument("--schedule-epochs", type=_positive_int, metavar="N",
                   help="epochs the schedule is planned over (default: --epochs)")
    p.add_argument("--step-epochs", type=_positive_float, metavar="E",
                   help="--schedule step: multiply the learning rate by --gamma every E epochs")
    p.add_argument("--gamma", type=_gamma, help="--schedule step: the decay factor (default 0.1)")
    p.add_argument("--augment", type=_augment_spec, metavar="SPEC",
                   help="random affine distortions of the training images, e.g. "
                        "'shift=0.1,scale=0.1,rotate=10,shear=10' (shift: fraction of the size; rotate, shear: "
                        "degrees), or 'none' (default: the model's)")
    p.add_argument("--seed", type=_non_negative_int, help="seed of weights, batch order and dropout (default 0)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/<model>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--val-size", type=_non_negative_int,
                   help="training images held out for validation (default: the model's)")
    p.add_argument("--limit-train", type=_positive_int, metavar="N", help="use only the first N training images")
    p.add_argument("--limit-test", type=_positive_int, metavar="N", help="use only the first N test images")
    p.add_argument("--dtype", choices=FLOAT_DTYPES, help="float32 (default) or float64")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Convolutional networks from scratch on NumPy / CuPy.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    add_train_arguments(sub.add_parser("train", help="train a zoo model"))

    ev = sub.add_parser("evaluate", help="overall and per-class test accuracy of a checkpoint")
    ev.add_argument("--checkpoint", required=True, metavar="PATH")
    _add_data_flags(ev, dataset_required=False)
    ev.add_argument("--limit-test", type=_positive_int, metavar="N")

    pr = sub.add_parser("predict", help="classify image files (PNG/JPEG, any size)")
    pr.add_argument("--checkpoint", required=True, metavar="PATH")
    pr.add_argument("--device", default="cpu")
    _add_kernels_flag(pr)
    pr.add_argument("images", nargs="+", metavar="IMAGE")

    dl = sub.add_parser("download", help="download and verify a data set")
    dl.add_argument("name", choices=tuple(DATASETS))
    dl.add_argument("--data-dir", metavar="DIR")

    _add_kernels_flag(sub.add_parser("doctor", help="check the installation and the GPU"))
    bench = sub.add_parser("bench", help="throughput benchmarks", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    sub.add_parser("models", help="list the zoo with each model's defaults")
    return parser


# -- commands -----------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .train import TrainConfig, train

    from ..augment import parse_spec

    explicit = {k for k in ("epochs", "batch_size", "lr", "optimizer", "val_size", "limit_train", "limit_test",
                            "seed", "dtype", "lr_groups", "augment", "schedule", "warmup_epochs",
                            "schedule_epochs", "step_epochs", "gamma") if getattr(args, k) is not None}
    cfg = TrainConfig(model=args.model, dataset=args.dataset, device=args.device, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr,
                      optimizer=None if args.optimizer is None else args.optimizer.lower(),
                      seed=0 if args.seed is None else args.seed, data_dir=args.data_dir, out=args.out, resume=args.resume,
                      val_size=args.val_size, limit_train=args.limit_train, limit_test=args.limit_test,
                      dtype=args.dtype or "float32", download=args.download, progress=args.progress,
                      lr_groups=args.lr_groups, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
                      schedule_epochs=args.schedule_epochs, step_epochs=args.step_epochs, gamma=args.gamma,
                      augment=None if args.augment is None else parse_spec(args.augment), explicit=explicit)
    train(cfg)
    return 0


def load_model(checkpoint_path, device: str):
    """(model, checkpoint) from a run's checkpoint.npz, on ``device``."""
    from .. import models
    from .train import UserError, check_device, load_run_checkpoint

    check_device(device)
    ckpt = load_run_checkpoint(checkpoint_path)  # validated: model, dtype, weights' shapes, class names
    name = ckpt.meta["model"]
    model = models.build(name, seed=0, device=device, dtype=ckpt.meta["hyperparameters"]["dtype"])
    try:
        model.load_state_dict(ckpt.model_state)
    except ValueError as exc:
        raise UserError(f"{checkpoint_path}: {exc}") from None
    return model, ckpt


def cmd_evaluate(args) -> int:
    from ..data import load_dataset, to_float
    from .train import confusion_matrix, evaluate_arrays, per_class_accuracy

    model, ckpt = load_model(args.checkpoint, args.device)
    dataset = args.dataset or ckpt.meta["dataset"]
    ds = load_dataset(dataset, args.data_dir, download=args.download)
    x, t = ds.test_images, ds.test_labels
    if args.limit_test:
        x, t = x[:args.limit_test], t[:args.limit_test]
    x = backend.to_device(to_float(x, model.dtype), model.device)
    loss, acc, predicted = evaluate_arrays(model, x, backend.to_device(t, model.device))
    matrix = confusion_matrix(t, predicted, len(ds.class_names))
    print(f"{ckpt.meta['model']} (epoch {ckpt.meta['epoch']}) on {dataset} test set, {len(t)} images")
    width = max(len(n) for n in ds.class_names)
    for name, count, class_acc in zip(ds.class_names, matrix.sum(axis=1), per_class_accuracy(matrix)):
        shown = "   n/a" if class_acc is None else f"{class_acc:.4f}"
        print(f"  class {name:<{width}}  {shown}  ({int(count)} images)")
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {acc:.4f} ({int((predicted == t).sum())}/{len(t)})")
    return 0


def cmd_predict(args) -> int:
    from ..input_files import display_path
    from .predict import classify_files

    model, ckpt = load_model(args.checkpoint, args.device)
    names = ckpt.meta["class_names"]
    status = 0
    for path, row, error in classify_files(model, args.images):  # in batches, as they are answered
        if error is not None:
            status = _fail(error)
            continue
        k = int(row.argmax())
        label = names[k] if names[k] == str(k) else f"{k} ({names[k]})"
        print(f"{display_path(path)}: {label}  p={float(row[k]):.4f}", flush=True)
    return status


def cmd_download(args) -> int:
    from ..data import download_command

    return download_command(args.name, args.data_dir)


def cmd_doctor(args) -> int:
    from .doctor import run_doctor

    return int(run_doctor() or 0)


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return int(bench_main(list(args.rest)) or 0)


def cmd_models(args) -> int:
    from ..models import MODELS

    for spec in MODELS.values():
        groups = "".join(f", lr {'x' if 'lr_scale' in g else ''}{g.get('lr_scale', g.get('lr')):g} for "
                         f"{','.join(g['params'])}" for g in spec.lr_groups)
        sched = "" if not spec.schedule else f", {spec.schedule['name']} schedule"
        augment = "" if not spec.augment else ", augment " + ",".join(f"{k}={v:g}" for k, v in spec.augment.items())
        print(f"{spec.name}: {spec.optimizer} lr {spec.lr:g}{groups}{sched}, batch {spec.batch_size}, "
              f"{spec.epochs} epochs, {spec.init}" + (f", validation {spec.val_size}" if spec.val_size else "")
              + augment)
        print(f"    {spec.notes}")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "download": cmd_download,
            "doctor": cmd_doctor, "bench": cmd_bench, "models": cmd_models}


def _user_errors() -> tuple:
    from ..backend import GPUUnavailableError
    from ..checkpoint import CheckpointError
    from ..data import DatasetError
    from ..dispatch import KernelModeError
    from ..parallel import ThreadSettingError
    from .predict import ImageError
    from .train import UserError

    return (UserError, DatasetError, GPUUnavailableError, CheckpointError, ImageError,
            ThreadSettingError, KernelModeError)


def _fail(message: str, status: int = 2) -> int:
    message = " ".join(str(message).split())  # one line
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


@contextlib.contextmanager
def _stop_signals():
    """SIGINT and SIGTERM raise ``train.Stopped`` (a KeyboardInterrupt naming the signal) in the
    main thread while a command runs, so both stop it through the same clean path."""
    from .train import Stopped

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue  # e.g. SIGINT in a background job: the caller chose to ignore it
        previous[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv=None, parser: argparse.ArgumentParser | None = None, command: str | None = None) -> int:
    """Entry point of the ``cnn-xp`` console script; returns the exit status.

    ``parser``/``command`` let scripts/train_mnist.py run the ``train`` command on its own parser.
    """
    with _stop_signals():
        try:
            return _main(argv, parser, command)
        except KeyboardInterrupt as exc:  # a signal outside a command (e.g. while parsing)
            return _stopped(exc)


def _stopped(exc: KeyboardInterrupt) -> int:
    name = getattr(exc, "signal_name", "SIGINT")
    print(f"{PROG}: stopped by {name}", file=sys.stderr)
    return 128 + int(getattr(signal, name, signal.SIGINT))


def _main(argv, parser, command) -> int:
    from .train import TrainingDiverged

    argv = sys.argv[1:] if argv is None else list(argv)
    if parser is None and argv[:1] == ["bench"]:  # bench parses its own flags (including --help)
        return _run(lambda: cmd_bench(argparse.Namespace(rest=argv[1:])))
    backend.retain_host_memory()  # reuse freed step temporaries (see there; bench does its own)
    parser = parser or build_parser()
    try:
        args = parser.parse_args(argv)
    except _Exit as exc:
        return _fail(exc.message, exc.status) if exc.message else exc.status
    handler = COMMANDS[command or args.command]
    if getattr(args, "kernels", None):
        from .. import dispatch
        dispatch.set_mode(args.kernels)
    try:
        return _run(lambda: handler(args))
    except TrainingDiverged as exc:
        return _fail(f"training stopped: {exc}", 1)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr (no source line), e.g. when the CPU kernels can't be built."""
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _run(call) -> int:
    from .train import RunInterrupted

    errors = _user_errors()
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        # NumPy's floating-point warnings: a loss gone non-finite stops training with its own line
        warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered",
                                RuntimeWarning)
        try:
            return call()
        except _Exit as exc:
            return _fail(exc.message, exc.status) if exc.message else exc.status
        except errors as exc:
            return _fail(str(exc))
        except RunInterrupted as exc:
            print(f"{PROG}: {' '.join(str(exc).split())}", file=sys.stderr)
            return 128 + int(getattr(signal, exc.signal_name, signal.SIGINT))
        except KeyboardInterrupt as exc:
            return _stopped(exc)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
