"""The layer protocol: ``forward(x, train=True) -> out`` and ``backward(dout) -> dx``."""
import copy

from ..backend import to_device


class Layer:
    """Base class. Learnable layers fill ``params`` and, after ``backward``, ``grads``
    (same keys). ``buffers`` hold saved non-learnable state (BatchNorm running stats).
    ``need_input_grad = False`` lets ``backward`` skip dx and return None (first layer).

    A training forward (``train=True``) keeps what its backward needs; an inference
    forward (``train=False``) stores nothing on the layer, so several threads may run
    inference through the same layer objects.

    Shapes per sample (without the batch axis): ``output_shape(sample_shape)`` and
    ``forward_flops(sample_shape)`` (a multiply-add counts 2) say what one sample costs.
    """

    need_input_grad = True
    # Training on slices of a batch, one slice per thread (cnn_xp.parallel), gives this
    # layer's outputs and gradients on the whole batch: no batch statistics, no random draws.
    batch_sliceable = True

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}

    def forward(self, x, train=True):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def output_shape(self, sample_shape) -> tuple:
        """The output's shape for one sample of ``sample_shape`` (default: unchanged)."""
        return tuple(sample_shape)

    def forward_flops(self, sample_shape) -> int:
        """Floating-point operations of the forward pass for one sample (default 0:
        element-wise layers are not counted)."""
        return 0

    def replica(self) -> "Layer":
        """A twin for another slice of the batch: the same params and buffers (shared
        arrays), its own grads and forward caches."""
        twin = copy.copy(self)
        twin.grads = {}
        return twin

    def to(self, device: str) -> "Layer":
        """Move params, grads and buffers to ``device`` ("cpu" or "gpu")."""
        for store in (self.params, self.grads, self.buffers):
            for key, value in store.items():
                store[key] = to_device(value, device)
        return self

    def astype(self, dtype) -> "Layer":
        """Cast params and buffers to ``dtype`` (float32 / float64)."""
        for store in (self.params, self.buffers):
            for key, value in store.items():
                store[key] = value.astype(dtype, copy=False)
        self.grads.clear()
        return self

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.params.items())
        return f"{type(self).__name__}({shapes})"


class NoForwardCache(RuntimeError):
    """``backward`` was called without a training forward before it."""


def needs_cache(layer: Layer, cache) -> None:
    """Raise NoForwardCache when ``cache`` (what the training forward kept) is missing."""
    if cache is None:
        raise NoForwardCache(f"{type(layer).__name__}.backward needs a forward pass with train=True first")
