"""Conv2D: a learnable 2-D convolution layer over NCHW maps."""
from .. import dispatch, init
from ..backend import device_of, xp_of
from ..ops import output_shape
from ..validation import check_float_input, int_pair, integer
from .base import Layer, needs_cache


class Conv2D(Layer):
    """x (N, C_in, H, W) -> (N, C_out, OH, OW). W (C_out, C_in, KH, KW), b (C_out,).

    ``weight_init``: an initialiser from ``cnn_xp.init`` (default He); ``rng``: an int
    seed or NumPy Generator. Biases start at zero. The op runs through ``cnn_xp.dispatch``.

    Channels and kernel sizes are ints >= 1, ``stride`` ints >= 1, ``pad`` ints >= 0 (an int
    or an (h, w) pair each); anything else is a ValueError naming the argument. ``forward``
    takes float32 or float64 input only (ValueError naming the dtype otherwise).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad=0, *,
                 weight_init=None, rng=None, dtype="float32", bias: bool = True):
        super().__init__()
        in_channels = integer(in_channels, "in_channels", "Conv2D")
        out_channels = integer(out_channels, "out_channels", "Conv2D")
        kh, kw = int_pair(kernel_size, "kernel_size", "Conv2D")
        self.stride = int_pair(stride, "stride", "Conv2D")
        self.pad = int_pair(pad, "pad", "Conv2D", minimum=0)
        self.params["W"] = init.draw(weight_init, (out_channels, in_channels, kh, kw), rng, dtype)
        self.bias = bool(bias)
        if self.bias:  # without one (a BatchNorm follows), the op gets zeros and db is dropped
            self.params["b"] = init.draw("zeros", (out_channels,), rng, dtype)
        self._impl = self._cache = None

    def forward(self, x, train=True):
        check_float_input(x, "Conv2D")
        impl = dispatch.implementation("conv2d", device_of(x))
        w = self.params["W"]
        b = self.params["b"] if self.bias else xp_of(w).zeros(w.shape[0], dtype=w.dtype)
        out, cache = impl.conv2d_forward(x, w, b, self.stride, self.pad, train)
        if train:
            self._impl, self._cache = impl, cache
        return out

    def backward(self, dout):
        needs_cache(self, self._cache)
        dx, self.grads["W"], db = self._impl.conv2d_backward(dout, self._cache, self.need_input_grad)
        if self.bias:
            self.grads["b"] = db
        return dx

    def output_shape(self, sample_shape):
        oc, _, kh, kw = self.params["W"].shape
        return (oc, *output_shape((1, *sample_shape), kh, kw, self.stride, self.pad))

    def forward_flops(self, sample_shape):
        oc, c, kh, kw = self.params["W"].shape
        _, oh, ow = self.output_shape(sample_shape)
        return 2 * oc * oh * ow * c * kh * kw

    def __repr__(self) -> str:
        oc, ic, kh, kw = self.params["W"].shape
        bias = "" if self.bias else ", bias=False"
        return f"Conv2D({ic}, {oc}, kernel_size={(kh, kw)}, stride={self.stride}, pad={self.pad}{bias})"
