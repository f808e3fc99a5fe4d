"""SoftmaxCrossEntropy: the loss layer closing every classifier."""
from .. import dispatch
from ..backend import device_of
from .base import Layer, needs_cache


class SoftmaxCrossEntropy(Layer):
    """``forward(scores (N, K), labels)`` -> mean loss (0-d); labels are class indices
    (N,) or one-hot (N, K). ``backward(dout=1.0)`` -> d scores (N, K)."""

    def __init__(self):
        super().__init__()
        self._impl = self._cache = None

    def forward(self, scores, labels, train=True):
        impl = dispatch.implementation("softmax_cross_entropy", device_of(scores))
        loss, cache = impl.softmax_cross_entropy_forward(scores, labels)
        if train:
            self._impl, self._cache = impl, cache
        return loss

    def backward(self, dout=1.0):
        needs_cache(self, self._cache)
        return self._impl.softmax_cross_entropy_backward(self._cache, dout)

    def __repr__(self) -> str:
        return "SoftmaxCrossEntropy()"
