"""Element-wise activations: ReLU, Sigmoid, Tanh (any shape, dtype preserved; float32 or
float64 input only, a ValueError naming the dtype otherwise)."""
from .. import dispatch
from ..backend import device_of, xp_of
from ..validation import check_float_input
from .base import Layer, needs_cache


class ReLU(Layer):
    """max(x, 0); the gradient passes where the output is positive."""

    def __init__(self):
        super().__init__()
        self._impl = self._cache = None

    def forward(self, x, train=True):
        check_float_input(x, "ReLU")
        impl = dispatch.implementation("relu", device_of(x))
        out, cache = impl.relu_forward(x, train)
        if train:
            self._impl, self._cache = impl, cache
        return out

    def backward(self, dout):
        needs_cache(self, self._cache)
        return self._impl.relu_backward(dout, self._cache)


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), computed as (1 + tanh(x/2)) / 2 to stay finite for any x."""

    def __init__(self):
        super().__init__()
        self._out = None

    def forward(self, x, train=True):
        check_float_input(x, "Sigmoid")
        out = xp_of(x).tanh(x * 0.5)
        out += 1
        out *= 0.5
        if train:
            self._out = out
        return out

    def backward(self, dout):
        needs_cache(self, self._out)
        return dout * self._out * (1 - self._out)


class Tanh(Layer):
    """tanh(x); the gradient is 1 - tanh(x)^2."""

    def __init__(self):
        super().__init__()
        self._out = None

    def forward(self, x, train=True):
        check_float_input(x, "Tanh")
        out = xp_of(x).tanh(x)
        if train:
            self._out = out
        return out

    def backward(self, dout):
        needs_cache(self, self._out)
        return dout * (1 - self._out * self._out)
