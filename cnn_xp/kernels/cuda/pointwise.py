"""ReLU, dropout and the softmax-cross-entropy loss on the GPU, one launch per pass.

- ReLU: forward ``maximum(x, 0)``; backward the ``relu_backward`` kernel, dout * (out > 0),
  in one pass instead of a comparison, a cast and a product.
- Dropout (inverted): the ``dropout_forward`` kernel makes the output and the mask
  (1 / (1 - p) where draws >= p, else 0) in one pass; backward is dout * mask.
- Softmax cross-entropy with integer labels (N,): ``softmax_xent_rows`` computes each row's
  softmax (shifted by the row maximum) and its loss in one thread; the loss is their mean.
  The backward ``softmax_xent_grad`` makes (probs - one_hot(labels)) * dout / N in one
  pass, leaving the cache as it was. Labels follow the reference's rule
  (``ops.softmax.check_targets``: integer, in 0..K-1, a non-empty batch), checked before the
  launch by one min/max reduction, with the reference's ValueError. The kernels themselves
  read nothing through a label outside 0..K-1 and give its row NaN, should one reach them.
  One-hot labels run the reference; a ``dout`` that is an array runs the reference's
  backward on the cached softmax and labels (the cache holds its own copy of the labels, as
  the reference's does).
"""
from __future__ import annotations

import numbers

from ... import ops
from ...ops.softmax import check_targets
from . import launch
from .cache import ReferenceCache, reference_call


# -- ReLU ---------------------------------------------------------------------------------

def relu_forward(x, train=True):
    """max(x, 0) -> (out, cache); ``train=False``: cache None."""
    if not launch.serves(x):
        return reference_call("relu_forward", x, train=train)
    out = launch.cupy().maximum(x, 0)
    return out, (("cuda", out) if train else None)


def relu_backward(dout, cache):
    """dout * (out > 0)."""
    if isinstance(cache, ReferenceCache):
        return ops.relu_backward(dout, cache.cache)
    _, out = cache
    if launch.serves(dout, out) and dout.shape == out.shape:
        dx = launch.launch("relu_backward", dout, out, launch.cupy().empty_like(dout))
        if dx is not None:
            return dx
    # The reference: relu(out) == out, so its forward on out gives the same gate.
    return ops.relu_backward(dout, ops.relu_forward(out, train=True)[1])


# -- dropout ------------------------------------------------------------------------------

def dropout_forward(x, draws, p, train=True):
    """Inverted dropout from uniform draws (x's shape and dtype): a unit is kept where
    draws >= p and scaled by 1 / (1 - p). -> (out, cache); ``train=False`` (and p = 0, as
    in the reference): (x, None)."""
    if not train or p == 0.0 or not (launch.serves(x, draws) and x.shape == draws.shape
                                     and 0.0 < p < 1.0):
        return reference_call("dropout_forward", x, draws, p, train=train)
    cp = launch.cupy()
    out, mask = cp.empty_like(x), cp.empty_like(x)
    done = launch.launch("dropout_forward", x, draws, float(p), 1.0 / (1.0 - float(p)), out, mask)
    if done is None:
        return reference_call("dropout_forward", x, draws, p, train=train)
    return out, ("cuda", mask)


def dropout_backward(dout, cache):
    """dout * mask (cache None, from p = 0: dout itself, as in the reference)."""
    if cache is None or isinstance(cache, ReferenceCache):
        return ops.dropout_backward(dout, None if cache is None else cache.cache)
    return dout * cache[1]


# -- softmax cross-entropy ----------------------------------------------------------------

def softmax_cross_entropy_forward(scores, labels):
    """scores (N, K), labels (N,) integer class indices (one-hot (N, K): the reference)
    -> (mean loss over the batch (0-d, the scores' dtype), cache)."""
    integer_labels = (getattr(labels, "ndim", None) == 1 and labels.dtype.kind in "iu"
                      and launch.on_gpu(labels))
    if not (scores.ndim == 2 and integer_labels and labels.shape[0] == scores.shape[0]
            and scores.shape[0] > 0 and scores.shape[1] > 0 and launch.serves(scores)):
        return reference_call("softmax_cross_entropy_forward", scores, labels)
    check_targets(scores, labels)  # the reference's rule and errors, before any launch
    cp = launch.cupy()
    n, classes = scores.shape
    contiguous = cp.ascontiguousarray(scores)
    labels = cp.array(labels, order="C", copy=True)  # the cache's own copy, as the reference's
    probs = cp.empty_like(contiguous)
    row_loss = cp.empty(n, dtype=scores.dtype)
    done = launch.launch("softmax_xent_rows", contiguous, labels, classes, probs, row_loss)
    if done is None:
        return reference_call("softmax_cross_entropy_forward", scores, labels)
    return row_loss.sum() / n, ("cuda", labels, probs)


def softmax_cross_entropy_backward(cache, dout=1.0):
    """d loss / d scores (N, K) = (softmax(scores) - one_hot(labels)) * dout / N."""
    if isinstance(cache, ReferenceCache):
        return ops.softmax_cross_entropy_backward(cache.cache, dout)
    _, labels, probs = cache
    if isinstance(dout, numbers.Real):
        n, classes = probs.shape
        grad = launch.launch("softmax_xent_grad", probs, labels, classes, float(dout) / n,
                             launch.cupy().empty_like(probs))
        if grad is not None:
            return grad
    # An array dout (or a kernel that failed to compile): the reference's backward on the
    # kernel's softmax (the reference's cache is (softmax, labels) too). It copies probs.
    return ops.softmax_cross_entropy_backward((probs, labels), dout)
