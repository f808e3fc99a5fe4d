"""Numerically stable softmax and cross-entropy over class scores (N, K).

Labels are either class indices (N,) of an integer type or one-hot / probability rows (N, K).
The loss is the mean over the batch, returned as a 0-d array on the scores' device.
"""
from ..backend import xp_of
from . import cuda_kernels


def softmax(x, axis=-1):
    xp = xp_of(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def log_softmax(x, axis=-1):
    xp = xp_of(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def _is_one_hot(scores, labels) -> bool:
    if labels.ndim == scores.ndim and labels.shape == scores.shape:
        return True
    if labels.ndim == 1 and labels.shape[0] == scores.shape[0]:
        return False
    raise ValueError(f"labels of shape {tuple(labels.shape)} do not match scores {tuple(scores.shape)}")


def cross_entropy(scores, labels):
    """Mean cross-entropy of softmax(scores) against labels; a 0-d array."""
    return softmax_cross_entropy(scores, labels)[0]


def softmax_cross_entropy(scores, labels):
    """(mean cross-entropy, softmax(scores)) from one log-softmax pass; hand the
    probabilities to ``cross_entropy_backward`` to skip recomputing them."""
    xp = xp_of(scores)
    n = scores.shape[0]
    one_hot = _is_one_hot(scores, labels)
    if not one_hot and labels.dtype.kind in "iu" and cuda_kernels.applies(scores):
        fused = cuda_kernels.softmax_cross_entropy(scores, labels)
        if fused is not None:
            return fused
    log_p = log_softmax(scores)
    if one_hot:
        loss = -(labels.astype(scores.dtype, copy=False) * log_p).sum() / n
    else:
        loss = -log_p[xp.arange(n), labels].sum() / n
    return loss, xp.exp(log_p, out=log_p)


def cross_entropy_backward(scores, labels, dout=1.0, probs=None):
    """d loss / d scores for ``cross_entropy`` (the mean): (softmax - target) * dout / N.

    ``probs``: softmax(scores) from ``softmax_cross_entropy``; it is overwritten."""
    xp = xp_of(scores)
    n = scores.shape[0]
    if (probs is not None and isinstance(dout, (int, float)) and labels.ndim == 1
            and labels.dtype.kind in "iu" and probs.flags.c_contiguous and cuda_kernels.applies(probs)):
        fused = cuda_kernels.softmax_cross_entropy_grad(probs, labels, dout / n)
        if fused is not None:
            return fused
    grad = softmax(scores) if probs is None else probs
    if _is_one_hot(scores, labels):
        grad -= labels.astype(scores.dtype, copy=False)
    else:
        grad[xp.arange(n), labels] -= 1
    grad *= dout / n
    return grad
