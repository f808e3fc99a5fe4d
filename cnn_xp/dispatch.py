"""The one seam between the reference ops and the accelerators.

Every op is written once, in ``cnn_xp.ops``, against ``xp``: that is the *reference*, and
it runs on both devices. An accelerator (``cnn_xp.kernels.cpu``: compiled C;
``cnn_xp.kernels.cuda``: CuPy kernels) may implement some of the same ops, with the
reference's function names, signatures and semantics. This module alone chooses which one
runs, per device and op, once (the choice is cached), from the kernel mode:

* ``"reference"``: the reference everywhere (``CNN_XP_KERNELS=reference``,
  ``cnn-xp ... --kernels reference``);
* ``"auto"`` (default): the device's accelerator for the ops it implements, when it is
  usable; the reference for the rest.

An *op* is a group of functions that belong together (``"conv2d"``: ``conv2d_forward`` and
``conv2d_backward``). ``implementation(op, device)`` returns the module that implements it;
a layer calls its forward function and keeps that module with the forward's cache, so the
backward runs the same implementation. Layers, models and optimizers import this module,
never ``cnn_xp.kernels``.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

from .backend import check_device
from .errors import ConfigError

ENV = "CNN_XP_KERNELS"
MODES = ("auto", "reference")

# op -> the functions an implementation of it provides
OPS: dict[str, tuple[str, ...]] = {
    "conv2d": ("conv2d_forward", "conv2d_backward"),
    "affine": ("affine_forward", "affine_backward"),
    "maxpool2d": ("maxpool2d_forward", "maxpool2d_backward"),
    "avgpool2d": ("avgpool2d_forward", "avgpool2d_backward"),
    "relu": ("relu_forward", "relu_backward"),
    "dropout": ("dropout_forward", "dropout_forward_philox", "dropout_backward"),
    "softmax_cross_entropy": ("softmax_cross_entropy_forward", "softmax_cross_entropy_backward"),
    "sgd": ("sgd_update",),
    "momentum": ("momentum_update",),
    "nesterov": ("nesterov_update",),
    "adagrad": ("adagrad_update",),
    "rmsprop": ("rmsprop_update",),
    "adam": ("adam_update",),
    "update_all": ("update_all",),
    "affine_resample": ("affine_resample",),  # data augmentation (cnn_xp.augment)
    "crop_flip": ("crop_flip",),  # one step of any rule on every parameter (what optimizers call)
}

# device -> the module path of its accelerator
ACCELERATORS = {"cpu": "cnn_xp.kernels.cpu", "gpu": "cnn_xp.kernels.cuda"}

_mode: str | None = None
_chosen: dict[tuple[str, str], ModuleType] = {}
_accelerators: dict[str, tuple[ModuleType | None, str]] = {}


class KernelModeError(ConfigError):
    """An unknown kernel mode (CNN_XP_KERNELS or --kernels)."""


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise KernelModeError(f"unknown kernel mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def mode() -> str:
    """The kernel mode: set by ``set_mode``, else ``$CNN_XP_KERNELS``, else ``"auto"``."""
    global _mode
    if _mode is None:
        _mode = _check_mode(os.environ.get(ENV, "").strip() or "auto")
    return _mode


def set_mode(new_mode: str | None) -> None:
    """Choose the kernel mode for this process (None: back to ``$CNN_XP_KERNELS``); the
    choices made so far are forgotten."""
    global _mode
    _mode = None if new_mode is None else _check_mode(new_mode)
    _chosen.clear()


def reference() -> ModuleType:
    """The reference ops (``cnn_xp.ops``)."""
    return importlib.import_module("cnn_xp.ops")


def accelerator(device: str) -> tuple[ModuleType | None, str]:
    """(module, "") for the device's accelerator where it is usable, else (None, why not).
    Asked once per process (``reset`` forgets)."""
    check_device(device)
    if device not in _accelerators:
        try:
            module = importlib.import_module(ACCELERATORS[device])
            usable, reason = module.status()
        except (ImportError, AttributeError) as exc:  # not built, or not an accelerator module
            module, usable, reason = None, False, f"{ACCELERATORS[device]} is not usable ({exc})"
        _accelerators[device] = (module if usable else None, "" if usable else reason)
    return _accelerators[device]


def implementation(op: str, device: str) -> ModuleType:
    """The module whose functions of ``op`` run on ``device`` (see ``OPS``)."""
    key = (op, device)
    module = _chosen.get(key)
    if module is None:
        if op not in OPS:
            raise KeyError(f"unknown op {op!r}; ops are {', '.join(OPS)}")
        module = reference()
        if mode() == "auto":
            fast, _ = accelerator(device)
            if fast is not None and op in fast.OPS:
                module = fast
        _chosen[key] = module
    return module


def implementation_name(module: ModuleType) -> str:
    """``"reference"``, ``"cpu"`` or ``"cuda"``: the ``NAME`` of an implementation module."""
    return getattr(module, "NAME", module.__name__)


def describe_accelerator(device: str) -> str:
    """One line on the device's accelerator: its name and details, or why there is none."""
    module, reason = accelerator(device)
    if module is None:
        return f"none ({reason})"
    try:
        details = module.details()
    except Exception as exc:  # e.g. a GPU that probes usable but fails on use
        return f"{implementation_name(module)} (details unavailable: {type(exc).__name__}: {exc})"
    shown = []
    for key, value in details.items():
        if key in ("name", "usable", "reason", "ops", "kernels") or value in (None, "", [], (), {}):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            value = "/".join(map(str, value))
        shown.append(f"{key} {value}")
    return f"{implementation_name(module)} ({'; '.join(shown)})"


def table(device: str) -> dict[str, str]:
    """op -> the name of the implementation that runs it on ``device`` in the current mode."""
    return {op: implementation_name(implementation(op, device)) for op in OPS}


def reset() -> None:
    """Forget the mode read from the environment, the accelerators' status and every choice
    (for tests that change the environment)."""
    global _mode
    _mode = None
    _chosen.clear()
    _accelerators.clear()


_warned: set = set()


def accelerator_warning(device: str) -> str | None:
    """One line, the first time it is asked per device, when the default (auto) mode finds
    no compiled CPU kernels although they run on any CPU they were built for: the build
    failed or was skipped at install, and the reference runs, several times slower."""
    if device != "cpu" or mode() != "auto" or device in _warned:
        return None
    module, reason = accelerator(device)
    if module is not None:
        return None
    _warned.add(device)
    return (f"the compiled CPU kernels are not usable ({reason}); the reference ops run instead, several times "
            f"slower: reinstall with a C compiler (pip install -e .) or pass --kernels reference to silence this")
