"""Numerically stable softmax and the fused softmax + cross-entropy loss over scores (N, K).

Labels are either class indices (N,) of an integer type or one-hot / probability rows (N, K).
The loss is the mean over the batch: a 0-d value on the scores' device.
"""
from ..backend import xp_of


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along ``axis``."""
    xp = xp_of(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def log_softmax(x, axis=-1):
    """log(softmax(x)) without overflow: (x - max) - log(sum(exp(x - max)))."""
    xp = xp_of(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def _is_one_hot(scores, labels) -> bool:
    if labels.ndim == scores.ndim and labels.shape == scores.shape:
        return True
    if labels.ndim == 1 and labels.shape[0] == scores.shape[0]:
        return False
    raise ValueError(f"labels of shape {tuple(labels.shape)} do not match scores {tuple(scores.shape)}")


def softmax_cross_entropy_forward(scores, labels):
    """(mean cross-entropy of softmax(scores) against labels, cache) from one log-softmax."""
    xp = xp_of(scores)
    n = scores.shape[0]
    log_p = log_softmax(scores)
    if _is_one_hot(scores, labels):
        loss = -(labels.astype(scores.dtype, copy=False) * log_p).sum() / n
    else:
        loss = -log_p[xp.arange(n), labels].sum() / n
    return loss, (xp.exp(log_p), labels)


def softmax_cross_entropy_backward(cache, dout=1.0):
    """d loss / d scores: (softmax - target) * dout / N."""
    probs, labels = cache
    xp = xp_of(probs)
    n = probs.shape[0]
    grad = probs.copy()
    if _is_one_hot(probs, labels):
        grad -= labels.astype(probs.dtype, copy=False)
    else:
        grad[xp.arange(n), labels] -= 1
    grad *= dout / n
    return grad


def cross_entropy(scores, labels):
    """Mean cross-entropy of softmax(scores) against labels."""
    return softmax_cross_entropy_forward(scores, labels)[0]


def cross_entropy_backward(scores, labels, dout=1.0):
    """d cross_entropy(scores, labels) / d scores, from the scores alone."""
    return softmax_cross_entropy_backward(softmax_cross_entropy_forward(scores, labels)[1], dout)
