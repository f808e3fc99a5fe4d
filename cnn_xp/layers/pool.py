"""MaxPool2D and AvgPool2D over NCHW maps (no parameters)."""
from ..ops import avgpool2d_backward, avgpool2d_forward, maxpool2d_backward, maxpool2d_forward, pair
from .base import Layer


class _Pool2D(Layer):
    def __init__(self, kernel_size, stride=None, pad=0):
        super().__init__()
        self.kernel = pair(kernel_size)
        self.stride = self.kernel if stride is None else pair(stride)
        self.pad = pair(pad)
        self._cache = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_size={self.kernel}, stride={self.stride}, pad={self.pad})"


class MaxPool2D(_Pool2D):
    """(N, C, H, W) -> (N, C, OH, OW): window maximum; padding is -inf."""

    def forward(self, x, train=True):
        out, self._cache = maxpool2d_forward(x, *self.kernel, self.stride, self.pad, with_argmax=train)
        return out

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError("MaxPool2D.backward needs a forward pass with train=True first")
        return maxpool2d_backward(dout, self._cache)


class AvgPool2D(_Pool2D):
    """(N, C, H, W) -> (N, C, OH, OW): window mean; zero padding counts."""

    def forward(self, x, train=True):
        out, self._cache = avgpool2d_forward(x, *self.kernel, self.stride, self.pad)
        return out

    def backward(self, dout):
        return avgpool2d_backward(dout, self._cache)
