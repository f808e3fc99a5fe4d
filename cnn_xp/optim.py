"""Optimizers that update a model's parameters in place, on their device.

Each optimizer walks ``model.params_and_grads()`` at every ``step()`` and reads
``layer.params[key]`` afresh, so re-assigning a parameter array takes effect. Per-parameter
state (velocities, moment estimates) is keyed by parameter name ("0.W") and saved with
``state_dict()`` as NumPy arrays.
"""
from __future__ import annotations

import math

from . import dispatch
from .backend import device_of, to_device, to_numpy, xp_of


class Optimizer:
    """Base class: ``step()`` calls ``update(name, param, grad)`` for every parameter with a
    gradient; subclasses keep per-parameter state arrays (slots) via ``_slot``."""

    def __init__(self, model, lr: float):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate must be a positive number, got {lr!r}")
        self.model = model
        self.lr = float(lr)
        self.t = 0
        self.state: dict[str, dict] = {}

    def _slot(self, name: str, slot: str, like):
        """Per-parameter state array, created as zeros like ``like`` on first use."""
        per_param = self.state.setdefault(name, {})
        if slot not in per_param:
            per_param[slot] = xp_of(like).zeros_like(like)
        return per_param[slot]

    def step(self) -> None:
        """Apply one update to every parameter that has a gradient."""
        self.t += 1
        for name, layer, key in self.model.params_and_grads():
            if key in layer.grads:
                self.update(name, layer.params[key], layer.grads[key])

    def update(self, name: str, param, grad) -> None:
        raise NotImplementedError

    def hyperparameters(self) -> dict:
        return {"lr": self.lr}

    def state_dict(self) -> dict:
        """Flat dict: "t", "lr", and "<slot>/<param name>" -> NumPy array."""
        out = {"t": self.t, "lr": self.lr}
        for name, per_param in self.state.items():
            for slot, value in per_param.items():
                out[f"{slot}/{name}"] = to_numpy(value).copy()
        return out

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self.lr = float(state["lr"])
        device = self.model.device
        self.state = {}
        for key, value in state.items():
            if "/" in key:
                slot, name = key.split("/", 1)
                # a copy: later in-place steps must not write into the caller's dict
                self.state.setdefault(name, {})[slot] = to_device(value, device).copy()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


def _rule(op: str, param):
    """The update function of ``op`` for the device ``param`` lives on (see ``cnn_xp.dispatch``)."""
    return getattr(dispatch.implementation(op, device_of(param)), f"{op}_update")


class SGD(Optimizer):
    """p -= lr * g"""

    def update(self, name, param, grad):
        _rule("sgd", param)(param, grad, self.lr)


class Momentum(Optimizer):
    """v = momentum * v - lr * g;  p += v"""

    def __init__(self, model, lr=0.01, momentum=0.9):
        super().__init__(model, lr)
        self.momentum = float(momentum)

    def update(self, name, param, grad):
        _rule("momentum", param)(param, grad, self._slot(name, "v", param), self.lr, self.momentum)

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum}


class Nesterov(Momentum):
    """Nesterov's accelerated gradient (Sutskever et al. form):
    v = m * v - lr * g;  p += m * v - lr * g"""

    def update(self, name, param, grad):
        _rule("nesterov", param)(param, grad, self._slot(name, "v", param), self.lr, self.momentum)


class AdaGrad(Optimizer):
    """h += g * g;  p -= lr * g / (sqrt(h) + eps)"""

    def __init__(self, model, lr=0.01, eps=1e-7):
        super().__init__(model, lr)
        self.eps = float(eps)

    def update(self, name, param, grad):
        _rule("adagrad", param)(param, grad, self._slot(name, "h", param), self.lr, self.eps)

    def hyperparameters(self):
        return {"lr": self.lr, "eps": self.eps}


class RMSProp(Optimizer):
    """h = decay * h + (1 - decay) * g * g;  p -= lr * g / (sqrt(h) + eps)"""

    def __init__(self, model, lr=0.01, decay=0.99, eps=1e-7):
        super().__init__(model, lr)
        self.decay, self.eps = float(decay), float(eps)

    def update(self, name, param, grad):
        _rule("rmsprop", param)(param, grad, self._slot(name, "h", param), self.lr, self.decay, self.eps)

    def hyperparameters(self):
        return {"lr": self.lr, "decay": self.decay, "eps": self.eps}


class Adam(Optimizer):
    """Kingma & Ba (2015), bias-corrected:
    m += (1 - b1)(g - m);  v += (1 - b2)(g^2 - v);
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)"""

    def __init__(self, model, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(model, lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def update(self, name, param, grad):
        lr_t = self.lr / (1.0 - self.beta1 ** self.t)
        v_scale = 1.0 / math.sqrt(1.0 - self.beta2 ** self.t)
        _rule("adam", param)(param, grad, self._slot(name, "m", param), self._slot(name, "v", param),
                             lr_t, self.beta1, self.beta2, v_scale, self.eps)

    def hyperparameters(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


OPTIMIZERS = {
    "sgd": SGD, "momentum": Momentum, "nesterov": Nesterov,
    "adagrad": AdaGrad, "rmsprop": RMSProp, "adam": Adam,
}


def create(name: str, model, **kwargs) -> Optimizer:
    """An optimizer by (case-insensitive) name, e.g. ``create("adam", model, lr=1e-3)``."""
    try:
        cls = OPTIMIZERS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}") from None
    return cls(model, **kwargs)
