"""MaxPool2D, AvgPool2D and GlobalAvgPool2D over NCHW maps (no parameters)."""
from .. import dispatch
from ..backend import device_of, xp_of
from ..ops import output_shape
from ..validation import check_float_input, int_pair
from .base import Layer, needs_cache


class _Pool2D(Layer):
    """``kernel_size`` and ``stride`` (default: the window) are ints >= 1, ``pad`` ints >= 0
    (an int or an (h, w) pair each); anything else is a ValueError naming the argument.
    ``forward`` takes float32 or float64 input only (ValueError naming the dtype otherwise)."""

    op = ""  # the dispatch op: "maxpool2d" or "avgpool2d"

    def __init__(self, kernel_size, stride=None, pad=0):
        super().__init__()
        owner = type(self).__name__
        self.kernel = int_pair(kernel_size, "kernel_size", owner)
        self.stride = self.kernel if stride is None else int_pair(stride, "stride", owner)
        self.pad = int_pair(pad, "pad", owner, minimum=0)
        self._impl = self._cache = None

    def forward(self, x, train=True):
        check_float_input(x, type(self).__name__)
        impl = dispatch.implementation(self.op, device_of(x))
        out, cache = getattr(impl, f"{self.op}_forward")(x, *self.kernel, self.stride, self.pad, train)
        if train:
            self._impl, self._cache = impl, cache
        return out

    def backward(self, dout):
        needs_cache(self, self._cache)
        return getattr(self._impl, f"{self.op}_backward")(dout, self._cache)

    def output_shape(self, sample_shape):
        return (sample_shape[0], *output_shape((1, *sample_shape), *self.kernel, self.stride, self.pad))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_size={self.kernel}, stride={self.stride}, pad={self.pad})"


class MaxPool2D(_Pool2D):
    """(N, C, H, W) -> (N, C, OH, OW): window maximum; padding is -inf."""

    op = "maxpool2d"


class AvgPool2D(_Pool2D):
    """(N, C, H, W) -> (N, C, OH, OW): window mean; zero padding counts."""

    op = "avgpool2d"


class GlobalAvgPool2D(Layer):
    """(N, C, H, W) -> (N, C): the mean of each channel's H x W map (no parameters).
    The backward spreads dout / (H*W) over every position of the map. ``forward`` takes
    float32 or float64 input of four axes with H*W >= 1 only (ValueError otherwise)."""

    def __init__(self):
        super().__init__()
        self._x_shape = None

    def forward(self, x, train=True):
        check_float_input(x, "GlobalAvgPool2D")
        if x.ndim != 4 or x.shape[2] * x.shape[3] == 0:
            raise ValueError(f"GlobalAvgPool2D expects (N, C, H, W) with H*W >= 1, got shape {tuple(x.shape)}")
        if train:
            self._x_shape = tuple(x.shape)
        return x.mean(axis=(2, 3))

    def backward(self, dout):
        needs_cache(self, self._x_shape)
        n, c, h, w = self._x_shape
        dx = xp_of(dout).empty(self._x_shape, dtype=dout.dtype)
        dx[...] = (dout / (h * w)).reshape(n, c, 1, 1)
        return dx

    def output_shape(self, sample_shape):
        return (sample_shape[0],)

    def forward_flops(self, sample_shape):
        """One add per input value (C*H*W)."""
        c, h, w = sample_shape
        return c * h * w

    def __repr__(self) -> str:
        return "GlobalAvgPool2D()"
