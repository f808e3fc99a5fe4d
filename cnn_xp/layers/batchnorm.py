"""Batch normalisation over the batch (and spatial) axes, per channel/feature."""
from .. import init
from ..backend import xp_of
from ..validation import check_float_input, fraction, integer, positive
from .base import Layer, needs_cache


class BatchNorm(Layer):
    """(N, C) or (N, C, H, W) -> same shape. gamma, beta (C,).

    Training normalises with the batch mean and (biased) variance and updates
    ``buffers["running_mean"/"running_var"]`` as ``m * running + (1 - m) * batch``;
    inference uses the running statistics.

    ``num_features`` is an int >= 1, ``momentum`` in [0, 1], ``eps`` > 0 (ValueError naming
    the argument otherwise). ``forward`` takes float32 or float64 input only. A training
    forward of an empty batch (no values per channel: N = 0, or H*W = 0) is a ValueError and
    changes nothing: its statistics are undefined, and a NaN running mean would make every
    later inference NaN. Inference on an empty batch returns an empty result.
    """

    batch_sliceable = False  # batch statistics

    def __init__(self, num_features, momentum=0.9, eps=1e-5, dtype="float32"):
        super().__init__()
        num_features = integer(num_features, "num_features", "BatchNorm")
        self.momentum = fraction(momentum, "momentum", "BatchNorm", closed=True)
        self.eps = positive(eps, "eps", "BatchNorm")
        self.params["gamma"] = init.draw("ones", (num_features,), None, dtype)
        self.params["beta"] = init.draw("zeros", (num_features,), None, dtype)
        self.buffers["running_mean"] = init.draw("zeros", (num_features,), None, dtype)
        self.buffers["running_var"] = init.draw("ones", (num_features,), None, dtype)
        self._cache = None

    @staticmethod
    def _axes_and_shape(x):
        if x.ndim == 2:
            return (0,), (1, x.shape[1])
        if x.ndim == 4:
            return (0, 2, 3), (1, x.shape[1], 1, 1)
        raise ValueError(f"BatchNorm expects (N, C) or (N, C, H, W), got shape {tuple(x.shape)}")

    def forward(self, x, train=True):
        check_float_input(x, "BatchNorm")
        xp = xp_of(x)
        axes, bshape = self._axes_and_shape(x)
        if train:
            if x.size == 0:
                raise ValueError(f"BatchNorm: a training batch of shape {tuple(x.shape)} holds no values, so it "
                                 f"has no mean or variance; pass at least one sample (the running statistics "
                                 f"are unchanged)")
            mean = x.mean(axis=axes, keepdims=True)
            centred = x - mean
            var = (centred * centred).mean(axis=axes, keepdims=True)
            m = self.momentum
            self.buffers["running_mean"] = m * self.buffers["running_mean"] + (1 - m) * mean.reshape(-1)
            self.buffers["running_var"] = m * self.buffers["running_var"] + (1 - m) * var.reshape(-1)
        else:
            centred = x - self.buffers["running_mean"].reshape(bshape)
            var = self.buffers["running_var"].reshape(bshape)
        std = xp.sqrt(var + self.eps)
        normed = centred / std
        if train:
            self._cache = (axes, bshape, std, normed)
        return self.params["gamma"].reshape(bshape) * normed + self.params["beta"].reshape(bshape)

    def backward(self, dout):
        needs_cache(self, self._cache)
        axes, bshape, std, normed = self._cache
        self.grads["beta"] = dout.sum(axis=axes)
        self.grads["gamma"] = (dout * normed).sum(axis=axes)
        dnormed = dout * self.params["gamma"].reshape(bshape)
        return (dnormed - dnormed.mean(axis=axes, keepdims=True)
                - normed * (dnormed * normed).mean(axis=axes, keepdims=True)) / std

    def __repr__(self) -> str:
        return f"BatchNorm({self.params['gamma'].shape[0]})"
