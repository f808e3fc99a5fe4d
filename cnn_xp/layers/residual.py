"""Residual: the basic residual block of He et al. (2016), one layer of a ``Sequential``."""
from __future__ import annotations

import copy
from collections.abc import MutableMapping

from .. import init
from ..validation import check_float_input, integer
from .activation import ReLU
from .base import Layer, needs_cache
from .batchnorm import BatchNorm
from .conv import Conv2D


class _Flat(MutableMapping):
    """One store (``"params"``, ``"grads"`` or ``"buffers"``) of named sublayers seen as one
    flat dict: ``"conv1.W"`` is ``parts["conv1"].params["W"]``. Reading, assigning and
    deleting go to the sublayer's own dict, so the block and its sublayers never disagree."""

    def __init__(self, parts: dict, store: str):
        self._parts, self._store = parts, store

    def _locate(self, key):
        prefix, _, inner = str(key).partition(".")
        if prefix not in self._parts or not inner:
            raise KeyError(key)
        return getattr(self._parts[prefix], self._store), inner

    def __getitem__(self, key):
        store, inner = self._locate(key)
        return store[inner]

    def __setitem__(self, key, value):
        store, inner = self._locate(key)
        store[inner] = value

    def __delitem__(self, key):
        store, inner = self._locate(key)
        del store[inner]

    def __iter__(self):
        for prefix, layer in self._parts.items():
            for inner in list(getattr(layer, self._store)):
                yield f"{prefix}.{inner}"

    def __len__(self):
        return sum(len(getattr(layer, self._store)) for layer in self._parts.values())

    def __repr__(self) -> str:
        return repr(dict(self))


class Residual(Layer):
    """x (N, C_in, H, W) -> (N, C_out, OH, OW), OH = ceil(H / stride) (likewise OW):
    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    conv1 is 3x3 with ``stride`` (1 or 2) and padding 1, conv2 3x3 with stride 1 and padding
    1, both without a bias (the BatchNorm after each has one). The shortcut is the identity
    when ``stride`` is 1 and the channel count is kept, else a 1x1 conv with ``stride`` (no
    bias) and a BatchNorm (``proj``, ``proj_bn``): the basic block of He et al. (2016) with
    projection shortcuts where the shape changes.

    One layer of a ``Sequential``: its sublayers' params, grads and buffers appear flattened,
    with keys ``"conv1.W"``, ``"bn1.gamma"``, ``"bn1.beta"``, ``"bn1.running_mean"``,
    ``"bn1.running_var"``, ``"conv2.W"``, ``"bn2.*"`` and, with a projection, ``"proj.W"``,
    ``"proj_bn.*"`` (so the model names them ``"3.conv1.W"`` and so on). BatchNorm makes it
    not batch-sliceable. ``weight_init`` (default He) and ``rng`` (an int seed or NumPy
    Generator) draw the conv weights; ``dtype`` is float32 or float64. Channels are ints
    >= 1 and ``stride`` 1 or 2 (ValueError naming the argument otherwise).
    """

    batch_sliceable = False  # BatchNorm: batch statistics

    def __init__(self, in_channels, out_channels, stride=1, *, weight_init=None, rng=None, dtype="float32"):
        in_channels = integer(in_channels, "in_channels", "Residual")
        out_channels = integer(out_channels, "out_channels", "Residual")
        stride = integer(stride, "stride", "Residual")
        if stride not in (1, 2):
            raise ValueError(f"Residual: stride must be 1 or 2, got {stride}")
        self.stride = stride
        # one stream for all the convs (conv1, conv2, proj in that order): an int seed would
        # otherwise give conv1 and conv2 the same draws
        conv = dict(weight_init=weight_init, rng=init.make_rng(rng), dtype=dtype)
        self.parts = {
            "conv1": Conv2D(in_channels, out_channels, 3, stride=stride, pad=1, bias=False, **conv),
            "bn1": BatchNorm(out_channels, dtype=dtype),
            "relu1": ReLU(),
            "conv2": Conv2D(out_channels, out_channels, 3, stride=1, pad=1, bias=False, **conv),
            "bn2": BatchNorm(out_channels, dtype=dtype),
        }
        if stride != 1 or in_channels != out_channels:
            self.parts["proj"] = Conv2D(in_channels, out_channels, 1, stride=stride, pad=0, bias=False, **conv)
            self.parts["proj_bn"] = BatchNorm(out_channels, dtype=dtype)
        self.parts["relu2"] = ReLU()
        super().__init__()
        self._bind()
        self._need_input_grad = True
        self.need_input_grad = True
        self._shape = None

    def _bind(self) -> None:
        self.params = _Flat(self.parts, "params")
        self.grads = _Flat(self.parts, "grads")
        self.buffers = _Flat(self.parts, "buffers")

    @property
    def projection(self) -> bool:
        """Whether the shortcut is a 1x1 conv + BatchNorm (else the identity)."""
        return "proj" in self.parts

    @property
    def need_input_grad(self) -> bool:
        return self._need_input_grad

    @need_input_grad.setter
    def need_input_grad(self, value) -> None:
        self._need_input_grad = bool(value)
        self.parts["conv1"].need_input_grad = self._need_input_grad
        if self.projection:
            self.parts["proj"].need_input_grad = self._need_input_grad

    def forward(self, x, train=True):
        check_float_input(x, "Residual")
        p = self.parts
        out = x
        for name in ("conv1", "bn1", "relu1", "conv2", "bn2"):
            out = p[name].forward(out, train)
        shortcut = p["proj_bn"].forward(p["proj"].forward(x, train), train) if self.projection else x
        out = p["relu2"].forward(out + shortcut, train)
        if train:
            self._shape = tuple(x.shape)
        return out

    def backward(self, dout):
        needs_cache(self, self._shape)
        p = self.parts
        dsum = p["relu2"].backward(dout)
        grad = dsum
        for name in ("bn2", "conv2", "relu1", "bn1", "conv1"):
            grad = p[name].backward(grad)
        dshort = p["proj"].backward(p["proj_bn"].backward(dsum)) if self.projection else dsum
        if not self.need_input_grad:
            return None
        return grad + dshort

    def output_shape(self, sample_shape):
        return self.parts["conv1"].output_shape(sample_shape)

    def forward_flops(self, sample_shape):
        """The convolutions' (a multiply-add counts 2); BatchNorm, ReLU and the sum are not counted."""
        mid = self.output_shape(sample_shape)
        flops = self.parts["conv1"].forward_flops(sample_shape) + self.parts["conv2"].forward_flops(mid)
        if self.projection:
            flops += self.parts["proj"].forward_flops(sample_shape)
        return flops

    def replica(self) -> "Residual":
        """A twin sharing the params and buffers (its sublayers' replicas), with its own grads
        and forward caches."""
        twin = copy.copy(self)
        twin.parts = {name: layer.replica() for name, layer in self.parts.items()}
        twin._bind()
        return twin

    def to(self, device: str) -> "Residual":
        for layer in self.parts.values():
            layer.to(device)
        return self

    def astype(self, dtype) -> "Residual":
        for layer in self.parts.values():
            layer.astype(dtype)
        return self

    def __repr__(self) -> str:
        oc, ic = (int(d) for d in self.parts["conv1"].params["W"].shape[:2])
        return f"Residual({ic}, {oc}, stride={self.stride}{', projection' if self.projection else ''})"
