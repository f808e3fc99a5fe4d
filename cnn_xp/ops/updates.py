"""Optimizer update rules, in place on one parameter and its state arrays (any shape).

``lr`` and the other hyperparameters are Python floats, so a float32 parameter stays
float32. The optimizers in ``cnn_xp.optim`` keep the state and call these through the seam.
"""
from ..backend import xp_of


def sgd_update(param, grad, lr):
    """p -= lr * g"""
    param -= lr * grad


def momentum_update(param, grad, v, lr, momentum):
    """v = momentum * v - lr * g;  p += v"""
    v *= momentum
    v -= lr * grad
    param += v


def nesterov_update(param, grad, v, lr, momentum):
    """Nesterov's accelerated gradient (Sutskever et al. form):
    v = momentum * v - lr * g;  p += momentum * v - lr * g"""
    v *= momentum
    v -= lr * grad
    param += momentum * v - lr * grad


def adagrad_update(param, grad, h, lr, eps):
    """h += g * g;  p -= lr * g / (sqrt(h) + eps)"""
    xp = xp_of(param)
    h += grad * grad
    param -= lr * grad / (xp.sqrt(h) + eps)


def rmsprop_update(param, grad, h, lr, decay, eps):
    """h = decay * h + (1 - decay) * g * g;  p -= lr * g / (sqrt(h) + eps)"""
    xp = xp_of(param)
    h *= decay
    h += (1.0 - decay) * grad * grad
    param -= lr * grad / (xp.sqrt(h) + eps)


def adam_update(param, grad, m, v, lr_t, beta1, beta2, v_scale, eps):
    """Adam with the bias corrections folded into ``lr_t = lr / (1 - beta1^t)`` and
    ``v_scale = 1 / sqrt(1 - beta2^t)``:
    m += (1 - beta1)(g - m);  v += (1 - beta2)(g^2 - v);  p -= lr_t * m / (sqrt(v) * v_scale + eps)"""
    xp = xp_of(param)
    m += (1.0 - beta1) * (grad - m)
    v += (1.0 - beta2) * (grad * grad - v)
    param -= lr_t * m / (xp.sqrt(v) * v_scale + eps)


# rule -> (its update function, the names of its state arrays, of its hyperparameters after lr)
RULES = {
    "sgd": (sgd_update, (), ()),
    "momentum": (momentum_update, ("v",), ("momentum",)),
    "nesterov": (nesterov_update, ("v",), ("momentum",)),
    "adagrad": (adagrad_update, ("h",), ("eps",)),
    "rmsprop": (rmsprop_update, ("h",), ("decay", "eps")),
    "adam": (adam_update, ("m", "v"), ("beta1", "beta2", "v_scale", "eps")),
}


def update_all(rule, params, grads, states, lrs, hyper, weight_decay=0.0, shrink=None):
    """One optimizer step of ``rule`` (a key of ``RULES``) on every parameter, in order:
    ``params[k]`` and its state arrays ``states[k]`` (a tuple, the rule's slots) in place,
    from ``grads[k]``, with learning rate ``lrs[k]`` (Adam: its ``lr_t``) and the rule's
    other hyperparameters ``hyper`` (a tuple, ``RULES[rule][2]``). Before the rule:
    ``shrink`` (None, or a factor per parameter: decoupled weight decay, AdamW's
    ``1 - lr * wd``) multiplies the parameter; ``weight_decay`` > 0 adds the L2 term to
    the gradient, ``g + weight_decay * p`` (a new array; the grads are left as they are)."""
    update = RULES[rule][0]
    for k, (param, grad) in enumerate(zip(params, grads)):
        if shrink is not None:
            param *= shrink[k]
        if weight_decay:
            grad = grad + weight_decay * param
        update(param, grad, *states[k], lrs[k], *hyper)
