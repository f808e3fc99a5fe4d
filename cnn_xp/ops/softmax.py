"""Numerically stable softmax and the fused softmax + cross-entropy loss over scores (N, K).

Labels are either class indices (N,) of an integer dtype, each in 0..K-1, or one-hot /
probability rows (N, K) of any real dtype. The loss is the mean over the batch: a 0-d value
on the scores' device. ``check_targets`` is the one rule every implementation applies (the
CUDA kernels included): scores (N, K) with N, K >= 1, and labels as above; anything else is
a ValueError saying what is wrong (an out-of-range label is named with its index).

A training loop that has checked its labels once (``fit``) passes ``checked=True`` and skips
the per-batch range check (a device-to-host copy on the GPU), and may pass ``totals``, a
float64 array (2,) on the scores' device, to which the forward adds the batch's summed loss
and its count of rows whose highest score is at the label: the epoch's running metrics
without reading the device every step.
"""
from ..backend import to_numpy, xp_of


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


def first_bad_label(labels, classes: int) -> tuple[int, int] | None:
    """(index, label) of the first class index outside 0..classes-1 in ``labels`` (N,), or
    None. One min/max reduction (one device-to-host copy of two numbers); the labels are
    searched on the host only when one is bad."""
    xp = xp_of(labels)
    low, high = (int(v) for v in to_numpy(xp.stack((labels.min(), labels.max()))))
    if low >= 0 and high < classes:
        return None
    host = to_numpy(labels).astype("int64") if labels.dtype.kind == "i" else to_numpy(labels)
    index = int(((host < 0) | (host >= classes)).argmax())
    return index, int(host[index])


def check_targets(scores, labels, checked: bool = False) -> bool:
    """The loss's input rule, shared by every implementation; True for one-hot / probability
    rows (N, K), False for class indices (N,). ValueError unless scores is (N, K) with
    N >= 1 (the mean over an empty batch is undefined) and K >= 1, and labels are rows of
    that shape or integer class indices (N,), each in 0..K-1 (``checked``: the caller
    has checked the range, which is then not read again)."""
    if getattr(scores, "ndim", None) != 2:
        raise ValueError(f"softmax cross-entropy: scores must be (N, K), got shape {tuple(getattr(scores, 'shape', ()))}")
    n, classes = scores.shape
    if n == 0:
        raise ValueError("softmax cross-entropy: the batch is empty (0 samples); the mean loss over no samples "
                         "is undefined")
    if classes == 0:
        raise ValueError(f"softmax cross-entropy: scores {tuple(scores.shape)} have no classes")
    if _is_one_hot(scores, labels):
        return True
    if labels.dtype.kind not in "iu":
        raise ValueError(f"softmax cross-entropy: class labels (N,) must be of an integer dtype, got {labels.dtype} "
                         f"(one-hot targets are (N, K))")
    bad = None if checked else first_bad_label(labels, classes)
    if bad is not None:
        index, label = bad
        raise ValueError(f"softmax cross-entropy: label {label} at index {index} is outside 0..{classes - 1}")
    return False


def softmax_cross_entropy_forward(scores, labels, totals=None, checked=False):
    """scores (N, K), labels (N,) integer class indices in 0..K-1 or (N, K) target rows ->
    (mean cross-entropy of softmax(scores) against labels, cache), from one log-softmax.
    ValueError (``check_targets``) for an empty batch, float class indices or a label
    outside 0..K-1 (not looked for with ``checked=True``). The cache holds its own copy of
    the labels: changing them after the forward does not change the backward.

    ``totals``: None, or a float64 array (2,) on the scores' device; adds [the sum of the
    rows' losses, the number of rows whose first highest score is at the label (for
    target rows: at their first highest entry)] to it."""
    xp = xp_of(scores)
    n = scores.shape[0]
    one_hot = check_targets(scores, labels, checked)
    log_p = log_softmax(scores)
    if one_hot:
        total = -(labels.astype(scores.dtype, copy=False) * log_p).sum()
    else:
        total = -log_p[xp.arange(n), labels].sum()
    if totals is not None:
        targets = labels.argmax(axis=1) if one_hot else labels
        totals[0] += total
        totals[1] += (scores.argmax(axis=1) == targets).sum()
    return total / n, (xp.exp(log_p), labels.copy())


def softmax_cross_entropy_backward(cache, dout=1.0):
    """d loss / d scores (N, K): (softmax - target) * dout / N. ValueError for the cache of
    an empty batch (which the forward never makes)."""
    probs, labels = cache
    xp = xp_of(probs)
    n = probs.shape[0]
    if n == 0:
        raise ValueError("softmax cross-entropy backward: the batch is empty (0 samples)")
    grad = probs.copy()
    if _is_one_hot(probs, labels):
        grad -= labels.astype(probs.dtype, copy=False)
    else:
        grad[xp.arange(n), labels] -= 1
    grad *= dout / n
    return grad


def cross_entropy(scores, labels):
    """Mean cross-entropy of softmax(scores) (N, K) against labels (see
    ``softmax_cross_entropy_forward``; ValueError on the same inputs)."""
    return softmax_cross_entropy_forward(scores, labels)[0]


def cross_entropy_backward(scores, labels, dout=1.0):
    """d cross_entropy(scores, labels) / d scores, from the scores alone."""
    return softmax_cross_entropy_backward(softmax_cross_entropy_forward(scores, labels)[1], dout)
