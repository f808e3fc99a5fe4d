"""SoftmaxCrossEntropy: the loss layer closing every classifier."""
from .. import dispatch
from ..backend import device_of
from ..validation import check_float_input
from .base import Layer, needs_cache


class SoftmaxCrossEntropy(Layer):
    """``forward(scores (N, K), labels)`` -> mean loss (0-d); scores float32 or float64,
    labels class indices (N,) of an integer dtype, each in 0..K-1, or one-hot rows (N, K).
    ``backward(dout=1.0)`` -> d scores (N, K).

    The same rule on every device and kernel (``cnn_xp.ops.softmax.check_targets``): a
    ValueError for an empty batch (N = 0: the mean over no samples is undefined), float
    class indices, or a label outside 0..K-1 (named with its index, e.g. "label -1 at
    index 3 is outside 0..9"); the layer then keeps no cache, so a backward raises NoForwardCache."""

    def __init__(self):
        super().__init__()
        self._impl = self._cache = None

    def forward(self, scores, labels, train=True, totals=None, checked=False):
        """The mean loss; ``totals`` and ``checked`` as ``ops.softmax_cross_entropy_forward``
        (a training loop's running metrics, and labels it has checked once)."""
        if train:
            self._impl = self._cache = None  # a forward that raises leaves no stale cache
        check_float_input(scores, "SoftmaxCrossEntropy")
        impl = dispatch.implementation("softmax_cross_entropy", device_of(scores))
        loss, cache = impl.softmax_cross_entropy_forward(scores, labels, totals, checked)
        if train:
            self._impl, self._cache = impl, cache
        return loss

    def backward(self, dout=1.0):
        needs_cache(self, self._cache)
        return self._impl.softmax_cross_entropy_backward(self._cache, dout)

    def __repr__(self) -> str:
        return "SoftmaxCrossEntropy()"
