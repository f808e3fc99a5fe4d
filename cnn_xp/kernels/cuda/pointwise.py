"""ReLU, dropout and the softmax-cross-entropy loss on the GPU, one launch per pass.

- ReLU: forward ``maximum(x, 0)``; backward the ``relu_backward`` kernel, dout * (out > 0),
  in one pass instead of a comparison, a cast and a product.
- Dropout (inverted): the ``dropout_forward`` kernel makes the output and the mask
  (1 / (1 - p) where draws >= p, else 0) in one pass; ``dropout_philox`` also makes the
  draws, in-kernel (what the Dropout layer uses: one launch, no draws array); backward is
  dout * mask.
- Softmax cross-entropy with integer labels (N,): ``softmax_xent_step`` computes, in one
  launch, each row's softmax, loss and gradient (for dout = 1), the cache's copy of the
  labels, the mean loss, and -- given ``totals`` -- adds the summed loss and the hits to
  them. The backward hands out that gradient (no launch) at its first call with dout = 1;
  any other call runs the reference's backward on the cached softmax and labels. Labels
  follow the reference's rule (``ops.softmax.check_targets``: integer, in 0..K-1, a
  non-empty batch), checked before the launch by one min/max reduction (skipped with
  ``checked=True``), with the reference's ValueError. The kernel reads nothing through a
  label outside 0..K-1 and gives its row NaN, should one reach it. One-hot labels run the
  reference.
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


def dropout_forward_philox(x, seed, counter, p, train=True):
    """Inverted dropout with the draws of the counter-based stream ``seed`` at block
    ``counter`` (``cnn_xp.ops.random``) made inside the ``dropout_philox`` kernel: output
    and mask in one launch, the reference's mask bit for bit. -> (out, cache)."""
    if not train or p == 0.0 or not (launch.serves(x) and 0.0 < p < 1.0 and launch.fits(x.size)):
        return reference_call("dropout_forward_philox", x, seed, counter, p, train=train)
    cp = launch.cupy()
    out, mask = cp.empty_like(x), cp.empty_like(x)
    seed, counter = int(seed), int(counter)
    done = launch.launch("dropout_philox", x, seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, counter, float(p),
                         1.0 / (1.0 - float(p)), out, mask)
    if done is None:
        return reference_call("dropout_forward_philox", x, seed, counter, p, train=train)
    return out, ("cuda", mask)


def dropout_backward(dout, cache):
    """dout * mask (cache None, from p = 0: dout itself, as in the reference)."""
    if cache is None or isinstance(cache, ReferenceCache):
        return ops.dropout_backward(dout, None if cache is None else cache.cache)
    return dout * cache[1]


# -- softmax cross-entropy ----------------------------------------------------------------

def softmax_cross_entropy_forward(scores, labels, totals=None, checked=False):
    """scores (N, K), labels (N,) integer class indices (one-hot (N, K): the reference)
    -> (mean loss over the batch (0-d, the scores' dtype), cache); ``totals`` (float64
    (2,)): += [summed loss, rows whose first highest score is at the label]. One launch."""
    integer_labels = (getattr(labels, "ndim", None) == 1 and labels.dtype.kind in "iu"
                      and launch.on_gpu(labels))
    totals_ok = totals is None or (launch.on_gpu(totals) and totals.shape == (2,)
                                   and totals.dtype.name == "float64" and totals.flags.c_contiguous)
    if not (scores.ndim == 2 and integer_labels and labels.shape[0] == scores.shape[0]
            and scores.shape[0] > 0 and scores.shape[1] > 0 and totals_ok and launch.serves(scores)
            and launch.fits(scores.size)):
        return reference_call("softmax_cross_entropy_forward", scores, labels, totals, checked)
    check_targets(scores, labels, checked)  # the reference's rule and errors, before any launch
    cp = launch.cupy()
    n, classes = scores.shape
    contiguous = cp.ascontiguousarray(scores)
    labels_in = cp.ascontiguousarray(labels)
    probs, grad = cp.empty_like(contiguous), cp.empty_like(contiguous)
    labels_copy = cp.empty_like(labels_in)  # the cache's own copy, as the reference's
    row_loss = cp.empty(n, dtype=scores.dtype)
    row_hit = cp.empty(n, dtype="int32")
    loss = cp.empty(1, dtype=scores.dtype)
    sums = totals if totals is not None else launch.constant("unused_totals", 2, "float64")
    done = launch.launch("softmax_xent_step", contiguous, labels_in, classes, n, 1.0 / n,
                         int(totals is not None), probs, grad, labels_copy, row_loss, row_hit, loss,
                         sums, launch.constant("xent_ticket", 1, "int32"), size=n)
    if done is None:
        return reference_call("softmax_cross_entropy_forward", scores, labels, totals, checked)
    return loss.reshape(()), ("cuda", labels_copy, probs, grad, [False])


def softmax_cross_entropy_backward(cache, dout=1.0):
    """d loss / d scores (N, K) = (softmax(scores) - one_hot(labels)) * dout / N: the
    forward's gradient itself at the first call with dout = 1 (no launch); the reference's
    backward on the cached softmax and labels otherwise."""
    if isinstance(cache, ReferenceCache):
        return ops.softmax_cross_entropy_backward(cache.cache, dout)
    _, labels, probs, grad, handed_out = cache
    if isinstance(dout, numbers.Real) and float(dout) == 1.0 and not handed_out[0]:
        handed_out[0] = True  # a caller may change it in place: later calls recompute
        return grad
    # The reference's backward on the kernel's softmax (the reference's cache is
    # (softmax, labels) too). It copies probs.
    return ops.softmax_cross_entropy_backward((probs, labels), dout)
