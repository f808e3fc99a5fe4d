"""Affine (fully connected) and Flatten."""
from math import prod

from .. import dispatch, init
from ..backend import device_of
from ..validation import check_float_input, integer
from .base import Layer, needs_cache


class Affine(Layer):
    """x (N, ...) flattened to (N, in_features) -> x @ W + b, (N, out_features).
    W (in_features, out_features), b (out_features,). Both sizes are ints >= 1 (ValueError
    naming the argument otherwise); ``forward`` takes float32 or float64 input only. The
    op runs through ``cnn_xp.dispatch``."""

    def __init__(self, in_features, out_features, *, weight_init=None, rng=None, dtype="float32"):
        super().__init__()
        in_features = integer(in_features, "in_features", "Affine")
        out_features = integer(out_features, "out_features", "Affine")
        self.params["W"] = init.draw(weight_init, (in_features, out_features), rng, dtype)
        self.params["b"] = init.draw("zeros", (out_features,), rng, dtype)
        self._impl = self._cache = None

    def forward(self, x, train=True):
        check_float_input(x, "Affine")
        impl = dispatch.implementation("affine", device_of(x))
        out, cache = impl.affine_forward(x, self.params["W"], self.params["b"], train)
        if train:
            self._impl, self._cache = impl, cache
        return out

    def backward(self, dout):
        needs_cache(self, self._cache)
        dx, self.grads["W"], self.grads["b"] = self._impl.affine_backward(dout, self._cache, self.need_input_grad)
        return dx

    def output_shape(self, sample_shape):
        return (self.params["W"].shape[1],)

    def forward_flops(self, sample_shape):
        fan_in, fan_out = self.params["W"].shape
        return 2 * fan_in * fan_out

    def __repr__(self) -> str:
        return "Affine({}, {})".format(*self.params["W"].shape)


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)) in C order; float32 or float64 input only."""

    def __init__(self):
        super().__init__()
        self._x_shape = None

    def forward(self, x, train=True):
        check_float_input(x, "Flatten")
        if train:
            self._x_shape = x.shape
        return x.reshape(x.shape[0], prod(x.shape[1:]))  # -1 fails for N = 0

    def backward(self, dout):
        needs_cache(self, self._x_shape)
        return dout.reshape(self._x_shape)

    def output_shape(self, sample_shape):
        return (prod(sample_shape),)
