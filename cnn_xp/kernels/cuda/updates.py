"""Optimizer updates on the GPU: one fused kernel per step of one parameter, updating the
parameter and its state arrays in place (the reference takes three to six launches).
Hyperparameters are Python floats, cast to the parameter's dtype (no upcast). The rules are
those of ``cnn_xp.ops.updates``; a call the kernels cannot serve (another dtype, mixed
shapes, a CPU array) runs the reference.
"""
from __future__ import annotations

from ... import ops
from . import launch


def _fused(name: str, param, grad, state: tuple, scalars: tuple) -> bool:
    """Run update kernel ``name`` (inputs grad and scalars, outputs param and state);
    False when the kernels cannot serve the call."""
    arrays = (param, grad, *state)
    if not (launch.serves(*arrays) and all(a.shape == param.shape for a in arrays)):
        return False
    return launch.launch(name, grad, *scalars, param, *state) is not None


def sgd_update(param, grad, lr):
    """p -= lr * g"""
    if not _fused("sgd_update", param, grad, (), (float(lr),)):
        ops.sgd_update(param, grad, lr)


def momentum_update(param, grad, v, lr, momentum):
    """v = momentum * v - lr * g;  p += v"""
    if not _fused("momentum_update", param, grad, (v,), (float(lr), float(momentum))):
        ops.momentum_update(param, grad, v, lr, momentum)


def nesterov_update(param, grad, v, lr, momentum):
    """v = momentum * v - lr * g;  p += momentum * v - lr * g"""
    if not _fused("nesterov_update", param, grad, (v,), (float(lr), float(momentum))):
        ops.nesterov_update(param, grad, v, lr, momentum)


def adagrad_update(param, grad, h, lr, eps):
    """h += g * g;  p -= lr * g / (sqrt(h) + eps)"""
    if not _fused("adagrad_update", param, grad, (h,), (float(lr), float(eps))):
        ops.adagrad_update(param, grad, h, lr, eps)


def rmsprop_update(param, grad, h, lr, decay, eps):
    """h = decay * h + (1 - decay) * g * g;  p -= lr * g / (sqrt(h) + eps)"""
    scalars = (float(lr), float(decay), 1.0 - float(decay), float(eps))
    if not _fused("rmsprop_update", param, grad, (h,), scalars):
        ops.rmsprop_update(param, grad, h, lr, decay, eps)


def adam_update(param, grad, m, v, lr_t, beta1, beta2, v_scale, eps):
    """m += (1 - beta1)(g - m);  v += (1 - beta2)(g^2 - v);
    p -= lr_t * m / (sqrt(v) * v_scale + eps), with lr_t = lr / (1 - beta1^t) and
    v_scale = 1 / sqrt(1 - beta2^t)."""
    scalars = (1.0 - float(beta1), 1.0 - float(beta2), float(lr_t), float(v_scale), float(eps))
    if not _fused("adam_update", param, grad, (m, v), scalars):
        ops.adam_update(param, grad, m, v, lr_t, beta1, beta2, v_scale, eps)
