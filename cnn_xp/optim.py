"""Optimizers that update a model's parameters in place, on their device.

Each optimizer walks ``model.params_and_grads()`` at every ``step()`` and reads
``layer.params[key]`` afresh, so re-assigning a parameter array takes effect. Per-parameter
state (velocities, moment estimates) is keyed by parameter name ("0.W") and saved with
``state_dict()`` as NumPy arrays.

Learning rates per parameter, as PyTorch's parameter groups: ``param_groups`` is a list of
``{"params": [names or glob patterns], "lr": value}`` (an absolute learning rate, as in
PyTorch) or ``{"params": [...], "lr_scale": factor}`` (a multiple of the optimizer's ``lr``,
so that changing ``lr`` moves every group alike). Parameters in no group use ``lr``. A
group that matches no parameter, or a parameter claimed by two groups, is a ValueError.
A schedule (``cnn_xp.schedules``) multiplies every learning rate by ``lr_factor``.

Every hyperparameter is checked up front, in the constructor (and in ``load_state_dict``):
a ValueError naming it unless it is a finite number in its range -- ``lr``, a group's
``lr`` / ``lr_scale`` and ``eps`` > 0; ``momentum``, ``beta1``, ``beta2`` and ``decay`` in
[0, 1); ``weight_decay`` >= 0 -- so no step can turn the weights NaN through a hyperparameter.

Weight decay (``weight_decay``, default 0: none): every optimizer but AdamW adds the L2
term to the gradient before its rule, ``g + weight_decay * p`` (PyTorch's ``weight_decay``
of SGD, Adam, ...); :class:`AdamW` decays the weights apart from the gradient,
``p -= lr * weight_decay * p`` before the Adam step (Loshchilov & Hutter, PyTorch's
``AdamW``). Both are part of the seam's ``update_all`` (``cnn_xp.ops.updates``), which every
built-in optimizer calls once per step for all its parameters. The layers' grads
are left as ``backward`` made them. Every parameter decays, biases and BatchNorm's gamma /
beta included (as PyTorch does unless given parameter groups).
"""
from __future__ import annotations

import fnmatch
import math

from . import dispatch, validation
from .backend import device_of, to_device, to_numpy, xp_of
from .ops.updates import RULES


def _check_lr(value, what: str = "learning rate") -> float:
    """A finite number > 0 (NumPy scalars included), else a one-line ValueError."""
    return validation.positive(value, what)


def resolve_param_groups(names, groups) -> list[dict]:
    """Validated copies of ``groups`` (see the module docstring) for parameter ``names``:
    each ``{"params": [matched names, in model order], "patterns": [...], "lr" or "lr_scale"}``.
    ValueError (one line) on a group naming no parameter, a parameter in two groups, a
    missing or non-positive rate, or an unknown key."""
    names = list(names)
    owner: dict[str, int] = {}
    resolved = []
    for index, group in enumerate(groups or ()):
        if not isinstance(group, dict):
            raise ValueError(f"parameter group {index} must be a dict, got {type(group).__name__}")
        unknown = set(group) - {"params", "patterns", "lr", "lr_scale"}
        if unknown:
            raise ValueError(f"parameter group {index}: unknown key(s) {', '.join(sorted(unknown))}; "
                             f"a group has 'params' and one of 'lr', 'lr_scale'")
        patterns = group.get("patterns", group.get("params"))
        if isinstance(patterns, str):
            patterns = [patterns]
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(f"parameter group {index}: 'params' must list parameter names or patterns")
        if ("lr" in group) == ("lr_scale" in group):
            raise ValueError(f"parameter group {index} ({','.join(patterns)}): give exactly one of 'lr', 'lr_scale'")
        key = "lr" if "lr" in group else "lr_scale"
        rate = _check_lr(group[key], f"parameter group {index} ({','.join(patterns)}): {key}")
        matched = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not matched:
            raise ValueError(f"parameter group {index} ({','.join(patterns)}) names no parameter of this model; "
                             f"its parameters are {', '.join(names)}")
        for n in matched:
            if n in owner:
                raise ValueError(f"parameter {n} is in parameter groups {owner[n]} and {index}; "
                                 f"each parameter may be in one group only")
            owner[n] = index
        resolved.append({"params": matched, "patterns": list(patterns), key: rate})
    return resolved


class Optimizer:
    """Base class: ``step()`` calls ``update(name, param, grad)`` for every parameter with a
    gradient; subclasses keep per-parameter state arrays (slots) via ``_slot`` and take the
    learning rate of each parameter from ``lr_of(name)``."""

    def __init__(self, model, lr: float, param_groups=None, weight_decay: float = 0.0):
        self.model = model
        self.lr = _check_lr(lr, f"{type(self).__name__}: lr (the learning rate)")
        self.weight_decay = _check_decay(weight_decay, type(self).__name__)
        self.lr_factor = 1.0  # set each step by a schedule (cnn_xp.schedules)
        self.t = 0
        self.state: dict[str, dict] = {}
        self.set_param_groups(param_groups)

    def set_param_groups(self, groups) -> None:
        """Replace the parameter groups (ValueError as ``resolve_param_groups``)."""
        names = [name for name, _, _ in self.model.params_and_grads()]
        self.param_groups = resolve_param_groups(names, groups)
        self._group_of = {n: g for g in self.param_groups for n in g["params"]}

    def lr_of(self, name: str) -> float:
        """The learning rate of parameter ``name`` for this step: its group's rate (or
        ``lr``) times the schedule's ``lr_factor``."""
        group = self._group_of.get(name)
        if group is None:
            base = self.lr
        elif "lr" in group:
            base = group["lr"]
        else:
            base = self.lr * group["lr_scale"]
        return base * self.lr_factor

    def _slot(self, name: str, slot: str, like):
        """Per-parameter state array, created as zeros like ``like`` on first use."""
        per_param = self.state.setdefault(name, {})
        if slot not in per_param:
            per_param[slot] = xp_of(like).zeros_like(like)
        return per_param[slot]

    # The built-in optimizers name their rule (a key of ``cnn_xp.ops.updates.RULES``) and
    # give its learning rates, hyperparameters and weight decay; one ``update_all`` call
    # through the seam then updates every parameter (one fused launch on the GPU).
    RULE: str | None = None

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        self.t += 1
        names, params, grads = [], [], []
        for name, layer, key in self.model.params_and_grads():
            if key in layer.grads:
                names.append(name)
                params.append(layer.params[key])
                grads.append(layer.grads[key])
        if names:
            self.update_all(names, params, grads)

    def update_all(self, names, params, grads) -> None:
        """Update every parameter ``params[k]`` (named ``names[k]``) from ``grads[k]``: for
        a built-in optimizer one call of the seam's ``update_all``; for a subclass with its
        own ``update``, that method per parameter."""
        if self.RULE is None or type(self).update is not Optimizer.update:
            for name, param, grad in zip(names, params, grads):
                self.update(name, param, grad)
            return
        slots = RULES[self.RULE][1]
        states = [tuple(self._slot(name, slot, param) for slot in slots) for name, param in zip(names, params)]
        impl = dispatch.implementation("update_all", device_of(params[0]))
        impl.update_all(self.RULE, params, grads, states, self._rates(names), self._rule_hyperparameters(),
                        self._l2(), self._shrink(names))

    def update(self, name: str, param, grad) -> None:
        """Update one parameter (``update_all`` for one)."""
        if self.RULE is None:
            raise NotImplementedError
        self.update_all([name], [param], [grad])

    def _rates(self, names) -> list[float]:
        """The rule's learning rate of each parameter this step."""
        return [self.lr_of(name) for name in names]

    def _rule_hyperparameters(self) -> tuple:
        """The rule's hyperparameters after the learning rate (``RULES[rule][2]``)."""
        return ()

    def _l2(self) -> float:
        """The L2 weight decay added to the gradient."""
        return self.weight_decay

    def _shrink(self, names):
        """Factors multiplying each parameter before the rule (decoupled decay), or None."""
        return None

    def hyperparameters(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def state_dict(self) -> dict:
        """Flat dict: "t", "lr", "lr_factor", "weight_decay", "<slot>/<param name>" -> NumPy
        array, and "param_groups" (a list of dicts) when there are groups."""
        out = {"t": self.t, "lr": self.lr, "lr_factor": self.lr_factor, "weight_decay": self.weight_decay}
        if self.param_groups:
            out["param_groups"] = [{k: (list(v) if isinstance(v, list) else v) for k, v in g.items() if k != "params"}
                                   for g in self.param_groups]
        for name, per_param in self.state.items():
            for slot, value in per_param.items():
                out[f"{slot}/{name}"] = to_numpy(value).copy()
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``; its parameter groups replace this optimizer's (none
        saved: no groups), and its ``weight_decay`` this one's (a state saved before weight
        decay existed keeps the constructor's). ValueError when a saved group names no
        parameter of the model or a value is out of range."""
        weight_decay = _check_decay(state.get("weight_decay", self.weight_decay), "optimizer state")
        self.set_param_groups(state.get("param_groups"))
        self.t = validation.integer(state["t"], "t", "optimizer state", minimum=0)
        self.lr = _check_lr(state["lr"], "optimizer state: lr")
        self.lr_factor = validation.real(state.get("lr_factor", 1.0), "lr_factor", "optimizer state", low=0.0)
        self.weight_decay = weight_decay
        device = self.model.device
        self.state = {}
        for key, value in state.items():
            if "/" in key:
                slot, name = key.split("/", 1)
                # a copy: later in-place steps must not write into the caller's dict
                self.state.setdefault(name, {})[slot] = to_device(value, device).copy()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items()
                         if k != "weight_decay" or v)  # no decay: not shown
        groups = "".join(f", group {','.join(g['patterns'])}: " + ", ".join(f"{k}={g[k]:g}" for k in ("lr", "lr_scale")
                                                                           if k in g) for g in self.param_groups)
        return f"{type(self).__name__}({args}{groups})"


def _check_decay(value, owner: str) -> float:
    """``weight_decay``: a finite number >= 0, else a one-line ValueError."""
    return validation.real(value, "weight_decay", owner, low=0.0)


class SGD(Optimizer):
    """p -= lr * (g + wd * p)"""

    RULE = "sgd"

    def __init__(self, model, lr, param_groups=None, weight_decay=0.0):
        super().__init__(model, lr, param_groups, weight_decay)


class Momentum(Optimizer):
    """v = momentum * v - lr * (g + wd * p);  p += v"""

    def __init__(self, model, lr=0.01, momentum=0.9, param_groups=None, weight_decay=0.0):
        self.momentum = validation.fraction(momentum, "momentum", type(self).__name__)
        super().__init__(model, lr, param_groups, weight_decay)

    RULE = "momentum"

    def _rule_hyperparameters(self):
        return (self.momentum,)

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay}


class Nesterov(Momentum):
    """Nesterov's accelerated gradient (Sutskever et al. form), g' = g + wd * p:
    v = m * v - lr * g';  p += m * v - lr * g'"""

    RULE = "nesterov"


class AdaGrad(Optimizer):
    """g' = g + wd * p;  h += g' * g';  p -= lr * g' / (sqrt(h) + eps)"""

    def __init__(self, model, lr=0.01, eps=1e-7, param_groups=None, weight_decay=0.0):
        self.eps = validation.positive(eps, "eps", "AdaGrad")
        super().__init__(model, lr, param_groups, weight_decay)

    RULE = "adagrad"

    def _rule_hyperparameters(self):
        return (self.eps,)

    def hyperparameters(self):
        return {"lr": self.lr, "eps": self.eps, "weight_decay": self.weight_decay}


class RMSProp(Optimizer):
    """g' = g + wd * p;  h = decay * h + (1 - decay) * g' * g';  p -= lr * g' / (sqrt(h) + eps)"""

    def __init__(self, model, lr=0.01, decay=0.99, eps=1e-7, param_groups=None, weight_decay=0.0):
        self.decay = validation.fraction(decay, "decay", "RMSProp")
        self.eps = validation.positive(eps, "eps", "RMSProp")
        super().__init__(model, lr, param_groups, weight_decay)

    RULE = "rmsprop"

    def _rule_hyperparameters(self):
        return (self.decay, self.eps)

    def hyperparameters(self):
        return {"lr": self.lr, "decay": self.decay, "eps": self.eps, "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Kingma & Ba (2015), bias-corrected, g' = g + wd * p (L2, PyTorch's Adam weight_decay):
    m += (1 - b1)(g' - m);  v += (1 - b2)(g'^2 - v);
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)"""

    def __init__(self, model, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, param_groups=None, weight_decay=0.0):
        owner = type(self).__name__
        self.beta1 = validation.fraction(beta1, "beta1", owner)
        self.beta2 = validation.fraction(beta2, "beta2", owner)
        self.eps = validation.positive(eps, "eps", owner)
        super().__init__(model, lr, param_groups, weight_decay)

    RULE = "adam"

    def _rates(self, names):
        correction = 1.0 - self.beta1 ** self.t
        return [self.lr_of(name) / correction for name in names]  # lr_t: the first moment's bias corrected

    def _rule_hyperparameters(self):
        return (self.beta1, self.beta2, 1.0 / math.sqrt(1.0 - self.beta2 ** self.t), self.eps)

    def hyperparameters(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self.weight_decay}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019; PyTorch's ``AdamW``, whose
    default ``weight_decay`` 0.01 it shares): ``p -= lr * wd * p`` with this step's learning
    rate (group and schedule included), then the Adam step on the plain gradient."""

    def __init__(self, model, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, param_groups=None, weight_decay=0.01):
        super().__init__(model, lr, beta1, beta2, eps, param_groups, weight_decay)

    def _l2(self):
        return 0.0

    def _shrink(self, names):
        if not self.weight_decay:
            return None
        return [1.0 - self.lr_of(name) * self.weight_decay for name in names]


OPTIMIZERS = {
    "sgd": SGD, "momentum": Momentum, "nesterov": Nesterov,
    "adagrad": AdaGrad, "rmsprop": RMSProp, "adam": Adam, "adamw": AdamW,
}


def create(name: str, model, **kwargs) -> Optimizer:
    """An optimizer by (case-insensitive) name, e.g. ``create("adam", model, lr=1e-3)``."""
    try:
        cls = OPTIMIZERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}") from None
    return cls(model, **kwargs)
