"""ReLU and inverted dropout as forward/backward pairs (any shape, dtype preserved)."""
from ..backend import xp_of
from .random import philox_uniform


def relu_forward(x, train=True):
    """(max(x, 0), cache); cache None when ``train`` is False."""
    out = xp_of(x).maximum(x, 0)
    return out, (out if train else None)


def relu_backward(dout, cache):
    """The gradient passes where the forward's output is positive."""
    return dout * (cache > 0)


def dropout_forward(x, draws, p, train=True):
    """(out, cache): a unit is kept where ``draws`` (uniform [0, 1), x's shape) >= ``p`` and
    scaled by 1/(1-p), so inference is the identity. cache (the scaled mask) is None when
    ``train`` is False or p is 0."""
    if not train or p == 0.0:
        return x, None
    mask = (draws >= p).astype(x.dtype)
    mask *= 1.0 / (1.0 - p)
    return x * mask, mask


def dropout_forward_philox(x, seed, counter, p, train=True):
    """``dropout_forward`` with its draws from the counter-based stream ``seed`` at block
    ``counter`` (``cnn_xp.ops.random``: the same numbers on every device); the caller
    advances its counter by ``random.blocks(x.size)`` per call."""
    if not train or p == 0.0:
        return x, None
    return dropout_forward(x, philox_uniform(xp_of(x), seed, counter, x.shape, x.dtype), p, train)


def dropout_backward(dout, cache):
    """dout through the forward's scaled mask."""
    return dout if cache is None else dout * cache
