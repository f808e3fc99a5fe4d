"""SoftmaxCrossEntropy: the loss layer closing every classifier."""
from ..ops import cross_entropy_backward, softmax_cross_entropy
from .base import Layer


class SoftmaxCrossEntropy(Layer):
    """``forward(scores (N, K), labels)`` -> mean loss (0-d array); labels are class
    indices (N,) or one-hot (N, K). ``backward(dout=1.0)`` -> d scores (N, K)."""

    def __init__(self):
        super().__init__()
        self._scores = self._labels = self._probs = None

    def forward(self, scores, labels, train=True):
        self._scores, self._labels = scores, labels
        loss, self._probs = softmax_cross_entropy(scores, labels)
        return loss

    def backward(self, dout=1.0):
        # The forward's probabilities become the gradient in place (recomputed if reused).
        probs, self._probs = self._probs, None
        return cross_entropy_backward(self._scores, self._labels, dout, probs=probs)

    def __repr__(self) -> str:
        return "SoftmaxCrossEntropy()"
