"""Optimizer updates on the GPU: ``update_all``, what the optimizers call, updates every
parameter of a step in one launch (per UPDATE_SLOTS parameters), weight decay included;
the per-parameter rules are one fused kernel per parameter, updating the parameter and its
state arrays in place (the reference takes three to six launches).
Hyperparameters are Python floats, cast to the parameter's dtype (no upcast). The rules are
those of ``cnn_xp.ops.updates``; a call the kernels cannot serve (another dtype, mixed
shapes, a CPU array) runs the reference.
"""
from __future__ import annotations

from ... import ops
from . import launch
from .sources import UPDATE_SLOTS


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


def _kernel_hyperparameters(rule: str, hyper: tuple) -> tuple:
    """The reference's hyperparameters (``ops.updates.RULES``) as the kernel takes them."""
    if rule == "rmsprop":
        decay, eps = hyper
        return float(decay), 1.0 - float(decay), float(eps)
    if rule == "adam":
        beta1, beta2, v_scale, eps = hyper
        return 1.0 - float(beta1), 1.0 - float(beta2), float(v_scale), float(eps)
    return tuple(float(h) for h in hyper)


def _launch_groups(sizes: list[int]) -> list[list[int]]:
    """Parameter indices in launches of at most UPDATE_SLOTS tensors and 2^31 - 1 elements."""
    groups, current, total = [], [], 0
    for k, size in enumerate(sizes):
        if current and (len(current) == UPDATE_SLOTS or not launch.fits(total + size)):
            groups.append(current)
            current, total = [], 0
        current.append(k)
        total += size
    return groups + ([current] if current else [])


def _servable(params, grads, states) -> bool:
    arrays = [*params, *grads, *(s for st in states for s in st)]
    written = [*params, *(s for st in states for s in st)]
    if not (arrays and launch.serves(*arrays) and all(a.flags.c_contiguous for a in written)
            and all(launch.row_layout(g) is not None for g in grads)):
        return False
    if any(g.shape != p.shape or any(s.shape != p.shape for s in st) for p, g, st in zip(params, grads, states)):
        return False
    written = [launch.address(a) for a in (*params, *(s for st in states for s in st)) if a.size]
    return len(set(written)) == len(written)  # no array updated twice in one launch


def update_all(rule, params, grads, states, lrs, hyper, weight_decay=0.0, shrink=None):
    """One step of ``rule`` on every parameter (``cnn_xp.ops.updates.update_all``): one
    ``<rule>_update_all`` launch per UPDATE_SLOTS parameters, weight decay and ``shrink``
    included. Parameters and states: C-contiguous CuPy arrays of one float dtype, none
    given twice; grads: the same, or rows of a wider matrix (``launch.row_layout``); any
    other call runs the reference."""
    params, grads, states = list(params), list(grads), [tuple(s) for s in states]
    if not _servable(params, grads, states):
        return ops.update_all(rule, params, grads, states, lrs, hyper, weight_decay, shrink)
    scalars = _kernel_hyperparameters(rule, hyper)
    unused = launch.constant("update_all_unused", 1, params[0].dtype)
    for done, group in enumerate(_launch_groups([p.size for p in params])):
        args, end = [], 0
        for slot in range(UPDATE_SLOTS):
            if slot < len(group):
                k = group[slot]
                end += params[k].size
                addresses = [launch.address(a) for a in (params[k], grads[k], *states[k])]
                factor = 1.0 if shrink is None else float(shrink[k])
                args += [*addresses, end, *launch.row_layout(grads[k]), float(lrs[k]), factor]
            else:
                args += [0] * (2 + len(states[0])) + [end, 1, 1, 0.0, 1.0]
        if end and launch.launch(f"{rule}_update_all", *args, float(weight_decay), *scalars, unused,
                                 size=end) is None:
            rest = [k for later in _launch_groups([p.size for p in params])[done:] for k in later]
            pick = (lambda seq: [seq[k] for k in rest])
            ops.update_all(rule, pick(params), pick(grads), pick(states), pick(list(lrs)), hyper, weight_decay,
                           None if shrink is None else pick(list(shrink)))
            return
