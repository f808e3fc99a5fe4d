"""Conv2D: a learnable 2-D convolution layer over NCHW maps."""
import threading

from .. import init
from ..ops import conv2d_backward, conv2d_forward, pair
from .base import Layer


class Conv2D(Layer):
    """x (N, C_in, H, W) -> (N, C_out, OH, OW). W (C_out, C_in, KH, KW), b (C_out,).

    ``weight_init``: an initialiser from ``cnn_xp.init`` (default He); ``rng``: an int
    seed or NumPy Generator. Biases start at zero.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad=0, *,
                 weight_init=None, rng=None, dtype="float32"):
        super().__init__()
        kh, kw = pair(kernel_size)
        self.stride, self.pad = pair(stride), pair(pad)
        self.params["W"] = init.draw(weight_init, (out_channels, in_channels, kh, kw), rng, dtype)
        self.params["b"] = init.draw("zeros", (out_channels,), rng, dtype)
        self._cache = None
        # Reused CPU temporaries of the conv ops (not saved): "train" for training forwards
        # (the cache refers to them until the backward), and one per thread for inference,
        # which may run slices of a batch side by side.
        self._workspaces = {}

    def forward(self, x, train=True):
        workspace = self._workspaces.setdefault("train" if train else threading.get_ident(), {})
        out, self._cache = conv2d_forward(x, self.params["W"], self.params["b"], self.stride, self.pad,
                                          workspace, need_cache=train)
        return out

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError("Conv2D.backward needs a forward pass with train=True first")
        dx, self.grads["W"], self.grads["b"] = conv2d_backward(dout, self._cache, self.need_input_grad)
        return dx

    def replica(self):
        twin = super().replica()
        twin._workspaces = {}  # its training columns must not be another slice's
        return twin

    def __repr__(self) -> str:
        oc, ic, kh, kw = self.params["W"].shape
        return f"Conv2D({ic}, {oc}, kernel_size={(kh, kw)}, stride={self.stride}, pad={self.pad})"
