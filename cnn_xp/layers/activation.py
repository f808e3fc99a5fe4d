"""Element-wise activations: ReLU, Sigmoid, Tanh (any shape, dtype preserved)."""
from ..backend import xp_of
from ..ops import cuda_kernels
from .base import Layer


class ReLU(Layer):
    """max(x, 0); the gradient passes where the output is positive."""

    def forward(self, x, train=True):
        xp = xp_of(x)
        self._out = xp.maximum(x, 0)
        return self._out

    def backward(self, dout):
        if cuda_kernels.applies(dout, self._out):
            fused = cuda_kernels.relu_backward(dout, self._out)
            if fused is not None:
                return fused
        return dout * (self._out > 0)


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), computed as (1 + tanh(x/2)) / 2 to stay finite for any x."""

    def forward(self, x, train=True):
        xp = xp_of(x)
        out = xp.tanh(x * 0.5)
        out += 1
        out *= 0.5
        self._out = out
        return out

    def backward(self, dout):
        return dout * self._out * (1 - self._out)


class Tanh(Layer):
    """tanh(x); the gradient is 1 - tanh(x)^2."""

    def forward(self, x, train=True):
        self._out = xp_of(x).tanh(x)
        return self._out

    def backward(self, dout):
        return dout * (1 - self._out * self._out)
