"""``cnn-xp``: train, evaluate, predict, explain, export, serve, download, doctor, bench.

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

from . import explain_cmd  # light: matplotlib loads when the command runs
from . import serve  # light: the model and Pillow load when the command runs


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _dataset_names() -> tuple:
    from ..data.sources import DATASETS

    return tuple(DATASETS)


def _add_run_flags(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu or gpu (default: cpu)")
    _add_kernels_flag(p)


def _add_kernels_flag(p) -> None:
    p.add_argument("--kernels", choices=("auto", "reference"), default=None,
                   help="auto: the device's accelerated kernels where present; reference: the "
                        "reference ops everywhere (default: $CNN_XP_KERNELS, else auto)")


def add_train_arguments(p) -> None:
    """The flags of ``cnn-xp train``: the recipe's (generated from ``cnn_xp.Recipe``) and the run's."""
    from .flags import add_recipe_arguments

    add_recipe_arguments(p, skip=())
    run = p.add_argument_group("run")
    run.add_argument("--resume", nargs="?", const="latest", metavar="RUN",
                     help="continue the run in folder RUN (default: the newest under runs/) from its checkpoint; "
                          "with --epochs N, train on to N epochs")
    run.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/<model>-<dataset>-<time>)")
    _add_run_flags(run)
    run.add_argument("--no-download", dest="download", action="store_false",
                     help="never download; fail when the data is not on disk")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    run.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (the log goes to stderr)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = OneLineParser(prog=PROG, description="Convolutional networks from scratch on NumPy / CuPy.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    add_train_arguments(sub.add_parser("train", help="train a zoo model (or --resume a run)"))

    ev = sub.add_parser("evaluate", help="overall and per-class test accuracy of a checkpoint or saved model")
    ev.add_argument("--checkpoint", required=True, metavar="PATH", help="a run's checkpoint.npz or a model.save file")
    ev.add_argument("--dataset", metavar="NAME", help="mnist, fashion-mnist, cifar10 or folder:PATH (default: the "
                                                     "one it was trained on)")
    ev.add_argument("--data-dir", metavar="DIR", help="folder holding the data set's files (it must exist)")
    ev.add_argument("--no-download", dest="download", action="store_false", help="never download")
    ev.add_argument("--limit-test", type=_positive_int, metavar="N", help="use only the first N test images")
    ev.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_run_flags(ev)

    pr = sub.add_parser("predict", help="classify image files (PNG/JPEG, any size)")
    pr.add_argument("--checkpoint", required=True, metavar="PATH", help="a run's checkpoint.npz or a model.save file")
    _add_run_flags(pr)
    pr.add_argument("images", nargs="+", metavar="IMAGE")

    _add_run_flags(explain_cmd.add_parser(sub))
    _add_run_flags(serve.add_parser(sub))

    dl = sub.add_parser("download", help="download and verify a data set")
    dl.add_argument("name", choices=_dataset_names())
    dl.add_argument("--data-dir", metavar="DIR", help="download into DIR (created if needed)")

    _add_kernels_flag(sub.add_parser("doctor", help="check the installation and the GPU"))
    bench = sub.add_parser("bench", help="throughput benchmarks", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    models = sub.add_parser("models", help="list the zoo with each model's recipe")
    models.add_argument("--json", action="store_true", help="print the recipes as JSON")
    from .export_cmd import add_parser as add_export_parser
    add_export_parser(sub)
    return parser


# -- commands -----------------------------------------------------------------------------
def cmd_train(args) -> int:
    import json

    from .flags import recipe_overrides
    from .train import TrainRequest, train

    _warn_slow_kernels(args.device)
    request = TrainRequest(overrides=recipe_overrides(args), resume=args.resume, out=args.out, device=args.device,
                           download=args.download, progress=args.progress and not args.json)
    summary = train(request, out=sys.stderr if args.json else None)
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def _warn_slow_kernels(device: str) -> None:
    from .. import dispatch

    line = dispatch.accelerator_warning(device)
    if line:
        print(f"{PROG}: warning: {line}", file=sys.stderr)


def cmd_evaluate(args) -> int:
    from .evaluate import cmd_evaluate as run

    return run(args)


def load_model(checkpoint_path, device: str):
    """(model, class names, data description or None) from a run checkpoint or a model.save
    file, on ``device``."""
    from .evaluate import load_model as load

    loaded = load(checkpoint_path, device)
    names = loaded.class_names or [str(k) for k in range(int(loaded.model.layers[-1].params["b"].shape[0]))]
    return loaded.model, names, loaded.description


def cmd_predict(args) -> int:
    from ..input_files import display_path
    from .predict import classify_files

    model, names, description = load_model(args.checkpoint, args.device)
    status = 0
    for path, row, error in classify_files(model, args.images, description=description):  # in batches, as they are answered
        if error is not None:
            status = _fail(error)
            continue
        k = int(row.argmax())
        label = names[k] if names[k] == str(k) else f"{k} ({names[k]})"
        print(f"{display_path(path)}: {label}  p={float(row[k]):.4f}", flush=True)
    return status


def cmd_download(args) -> int:
    from ..data import download_command

    return download_command(args.name, args.data_dir, progress=sys.stderr.isatty())  # no bars in a log


def cmd_doctor(args) -> int:
    from .doctor import run_doctor

    return int(run_doctor() or 0)


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return int(bench_main(list(args.rest)) or 0)


def cmd_models(args) -> int:
    import json

    from ..models import MODELS
    from ..recipe import Recipe

    recipes = {name: Recipe.create(name) for name in MODELS}
    if args.json:
        print(json.dumps({name: recipe.to_dict() for name, recipe in recipes.items()}, indent=2))
        return 0
    for name, recipe in recipes.items():
        print(f"{name}: {recipe.describe()}")
        print(f"    {MODELS[name].notes}")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "download": cmd_download,
            "doctor": cmd_doctor, "bench": cmd_bench, "models": cmd_models}
COMMANDS["explain"] = explain_cmd.run
COMMANDS["serve"] = serve.run


def cmd_export(args) -> int:
    from .export_cmd import run
    return run(args)


COMMANDS["export"] = cmd_export


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
    argv = sys.argv[1:] if argv is None else list(argv)
    if parser is None and argv[:1] == ["bench"]:  # bench parses its own flags (including --help)
        return _run(lambda: cmd_bench(argparse.Namespace(rest=argv[1:])))
    from .. import backend

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
    return _run(lambda: handler(args))


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr (no source line), e.g. when the CPU kernels can't be built."""
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _run(call) -> int:
    from ..errors import CnnXpError, TrainingDiverged
    from .train import RunInterrupted

    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        # NumPy's floating-point warnings: a loss gone non-finite stops training with its own line
        warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered",
                                RuntimeWarning)
        try:
            return call()
        except _Exit as exc:
            return _fail(exc.message, exc.status) if exc.message else exc.status
        except TrainingDiverged as exc:
            return _fail(f"training stopped: {exc}", 1)
        except CnnXpError as exc:
            return _fail(str(exc))
        except RunInterrupted as exc:
            print(f"{PROG}: {' '.join(str(exc).split())}", file=sys.stderr)
            return 128 + int(getattr(signal, exc.signal_name, signal.SIGINT))
        except KeyboardInterrupt as exc:
            return _stopped(exc)


if __name__ == "__main__":
    sys.exit(main())
