"""Optimizers that update a model's parameters in place, on their device.

Each optimizer walks ``model.params_and_grads()`` at every ``step()`` and reads
``layer.params[key]`` afresh, so re-assigning a parameter array takes effect. Per-parameter
state (velocities, moment estimates) is keyed by parameter name ("0.W") and saved with
``state_dict()`` as NumPy arrays.
"""
from __future__ import annotations

import math

from .backend import to_device, to_numpy, xp_of
from .ops import cuda_kernels  # fused GPU updates


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
        self._scratch_bufs: dict[str, list] = {}  # name -> work arrays (see ``_scratch``)

    def _slot(self, name: str, slot: str, like):
        """Per-parameter state array, created as zeros like ``like`` on first use."""
        per_param = self.state.setdefault(name, {})
        if slot not in per_param:
            per_param[slot] = xp_of(like).zeros_like(like)
        return per_param[slot]

    def _scratch(self, name: str, like, count: int = 1):
        """``count`` reusable work arrays shaped like ``like`` (not saved): updates write
        their temporaries into them instead of allocating new arrays at every step."""
        bufs = self._scratch_bufs.get(name)
        if bufs is None or len(bufs) < count or bufs[0].shape != like.shape or bufs[0].dtype != like.dtype:
            bufs = [xp_of(like).empty_like(like) for _ in range(count)]
            self._scratch_bufs[name] = bufs
        return bufs

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


class SGD(Optimizer):
    """p -= lr * g"""

    def update(self, name, param, grad):
        if cuda_kernels.applies(param) and cuda_kernels.sgd_update(param, grad, self.lr) is not None:
            return
        param -= self.lr * grad


class Momentum(Optimizer):
    """v = momentum * v - lr * g;  p += v"""

    def __init__(self, model, lr=0.01, momentum=0.9):
        super().__init__(model, lr)
        self.momentum = float(momentum)

    def update(self, name, param, grad):
        v = self._slot(name, "v", param)
        if cuda_kernels.applies(param) and cuda_kernels.momentum_update(
                param, grad, v, self.lr, self.momentum) is not None:
            return
        v *= self.momentum
        v -= self.lr * grad
        param += v

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum}


class Nesterov(Momentum):
    """Nesterov's accelerated gradient (Sutskever et al. form):
    v = m * v - lr * g;  p += m * v - lr * g"""

    def update(self, name, param, grad):
        v = self._slot(name, "v", param)
        if cuda_kernels.applies(param) and cuda_kernels.nesterov_update(
                param, grad, v, self.lr, self.momentum) is not None:
            return
        v *= self.momentum
        v -= self.lr * grad
        param += self.momentum * v - self.lr * grad


class AdaGrad(Optimizer):
    """h += g * g;  p -= lr * g / (sqrt(h) + eps)"""

    def __init__(self, model, lr=0.01, eps=1e-7):
        super().__init__(model, lr)
        self.eps = float(eps)

    def update(self, name, param, grad):
        xp = xp_of(param)
        h = self._slot(name, "h", param)
        if cuda_kernels.applies(param) and cuda_kernels.adagrad_update(
                param, grad, h, self.lr, self.eps) is not None:
            return
        a, b = self._scratch(name, param, 2)
        h += xp.multiply(grad, grad, out=a)
        denom = xp.sqrt(h, out=a)
        denom += self.eps
        step = xp.multiply(grad, self.lr, out=b)
        step /= denom
        param -= step

    def hyperparameters(self):
        return {"lr": self.lr, "eps": self.eps}


class RMSProp(Optimizer):
    """h = decay * h + (1 - decay) * g * g;  p -= lr * g / (sqrt(h) + eps)"""

    def __init__(self, model, lr=0.01, decay=0.99, eps=1e-7):
        super().__init__(model, lr)
        self.decay, self.eps = float(decay), float(eps)

    def update(self, name, param, grad):
        xp = xp_of(param)
        h = self._slot(name, "h", param)
        if cuda_kernels.applies(param) and cuda_kernels.rmsprop_update(
                param, grad, h, self.lr, self.decay, self.eps) is not None:
            return
        h *= self.decay
        h += (1.0 - self.decay) * grad * grad
        param -= self.lr * grad / (xp.sqrt(h) + self.eps)

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
        xp = xp_of(param)
        m = self._slot(name, "m", param)
        v = self._slot(name, "v", param)
        step = self.lr / (1.0 - self.beta1 ** self.t)
        v_scale = 1.0 / math.sqrt(1.0 - self.beta2 ** self.t)
        if cuda_kernels.applies(param) and cuda_kernels.adam_update(
                param, grad, m, v, self.beta1, self.beta2, step, v_scale, self.eps) is not None:
            return
        a, b = self._scratch(name, param, 2)
        delta = xp.subtract(grad, m, out=a)
        delta *= 1.0 - self.beta1
        m += delta
        delta = xp.multiply(grad, grad, out=a)
        delta -= v
        delta *= 1.0 - self.beta2
        v += delta
        denom = xp.sqrt(v, out=a)
        denom *= v_scale
        denom += self.eps
        update = xp.multiply(m, step, out=b)
        update /= denom
        param -= update

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
