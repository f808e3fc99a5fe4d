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
