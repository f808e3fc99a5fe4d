"""SoftmaxCrossEntropy: the loss layer closing every classifier."""
from ..ops import cross_entropy, cross_entropy_backward


class SoftmaxCrossEntropy:
    """``forward(scores (N, K), labels)`` -> mean loss (0-d array); labels are class
    indices (N,) or one-hot (N, K). ``backward(dout=1.0)`` -> d scores (N, K)."""

    def __init__(self):
        self.params, self.grads, self.buffers = {}, {}, {}
        self._scores = self._labels = None

    def forward(self, scores, labels, train=True):
        self._scores, self._labels = scores, labels
        return cross_entropy(scores, labels)

    def backward(self, dout=1.0):
        return cross_entropy_backward(self._scores, self._labels, dout)

    def __repr__(self) -> str:
        return "SoftmaxCrossEntropy()"
