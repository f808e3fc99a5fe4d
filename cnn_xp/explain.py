"""What a trained ``Sequential`` looks at: feature maps, saliency and Grad-CAM.

Everything runs through the layers' own ``forward`` and ``backward``, on the model's device
(NumPy or CuPy, through ``xp``), and comes back as host NumPy arrays. The model is explained
as it predicts, in inference mode:

- :func:`feature_maps` is an inference forward (``train=False``), keeping each layer's output.
- :func:`saliency` and :func:`grad_cam` need gradients, which need a forward that keeps its
  caches (``train=True``). It runs on an *inference twin* of the model rather than on the
  model: each layer's ``replica()`` (the same parameter and buffer arrays, its own caches and
  grads), with every ``BatchNorm`` (also inside ``Residual`` blocks) replaced by its inference
  form, the fixed per-channel affine map ``gamma * (x - running_mean) / sqrt(running_var + eps)
  + beta`` (whose backward is ``dout * gamma / sqrt(running_var + eps)``), and every
  ``Dropout`` by the identity. So the gradients are those of the very function
  ``model.predict(x, train=False)`` computes, and the model is left exactly as it was: its
  parameters, running statistics, dropout random state, ``need_input_grad``, forward caches
  and grads are never touched. Every other layer computes the same function in both modes.

The score explained is the class's logit (the last layer's output, before the softmax).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy

from .backend import to_device, to_numpy, xp_of
from .layers import BatchNorm, Dropout, Layer, Residual

__all__ = ["FeatureMap", "feature_maps", "saliency", "grad_cam", "cam_layer", "upsample_bilinear"]


class FeatureMap(NamedTuple):
    """One layer's output for the batch: its index in ``model.layers``, its type name and the
    activation (host NumPy array, (N, C, H, W) or (N, D))."""

    index: int
    layer: str
    activation: numpy.ndarray


# -- the inference twin ----------------------------------------------------------------------
class _FrozenBatchNorm(Layer):
    """BatchNorm's inference form as a layer with a backward (running statistics, fixed)."""

    def __init__(self, bn: BatchNorm):
        super().__init__()
        self.bn = bn
        self._scale = None

    def forward(self, x, train=True):
        bn = self.bn
        _, bshape = bn._axes_and_shape(x)
        xp = xp_of(x)
        # the same operations, in the same order, as BatchNorm.forward(x, train=False)
        centred = x - bn.buffers["running_mean"].reshape(bshape)
        std = xp.sqrt(bn.buffers["running_var"].reshape(bshape) + bn.eps)
        gamma = bn.params["gamma"].reshape(bshape)
        if train:
            self._scale = gamma / std
        return gamma * (centred / std) + bn.params["beta"].reshape(bshape)

    def backward(self, dout):
        return dout * self._scale


class _Identity(Layer):
    """Dropout in inference: the identity, drawing nothing."""

    def forward(self, x, train=True):
        return x

    def backward(self, dout):
        return dout


def _twin(layer: Layer) -> Layer:
    """``layer``'s inference twin (see the module docstring); it shares the arrays, never the
    caches, grads or random state."""
    if isinstance(layer, BatchNorm):
        return _FrozenBatchNorm(layer)
    if isinstance(layer, Dropout):
        return _Identity()
    twin = layer.replica()
    if isinstance(twin, Residual):
        twin.parts = {name: _twin(part) for name, part in twin.parts.items()}
        twin._bind()
    twin.need_input_grad = True
    return twin


def _prepare(model, x):
    x = model.as_input(x)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (N, C, H, W) or (N, D), got shape {tuple(x.shape)}")
    return x


def _targets(target, n: int, k: int):
    """(N,) int class indices from an int or a sequence of N ints (ValueError otherwise)."""
    t = numpy.asarray(to_numpy(target))
    if t.ndim == 0:
        t = numpy.full(n, t)
    if t.shape != (n,) or t.dtype.kind not in "iu":
        raise ValueError(f"target must be an int or {n} ints (one per sample), got {target!r}")
    if n and (t.min() < 0 or t.max() >= k):
        raise ValueError(f"target must be a class index in 0..{k - 1}, got {t.tolist()}")
    return t.astype(numpy.int64)


def _score_gradients(model, x, target, stop: int = -1):
    """Run the inference twin on x, then backpropagate d(sum_n score[n, target[n]]) down to
    the output of layer ``stop`` (-1: to the input). Returns (activations, gradient) where
    activations[i] is layer i's output (device arrays) and gradient is d/d(that output)."""
    twins = [_twin(layer) for layer in model.layers]
    outputs = []
    out = x
    for twin in twins:
        out = twin.forward(out, train=True)
        outputs.append(out)
    if out.ndim != 2:
        raise ValueError(f"the model's output must be (N, classes) scores, got shape {tuple(out.shape)}")
    n, k = out.shape
    t = _targets(target, n, k)
    xp = xp_of(out)
    grad = xp.zeros_like(out)
    grad[xp.arange(n), to_device(t, model.device)] = 1
    for index in range(len(twins) - 1, stop, -1):
        grad = twins[index].backward(grad)
    return outputs, grad


# -- the three explanations ------------------------------------------------------------------
def feature_maps(model, x) -> list[FeatureMap]:
    """Each layer's output for input ``x`` (N, C, H, W), by an inference forward: one
    :class:`FeatureMap` (index, layer type, host array) per layer of ``model.layers``."""
    out = _prepare(model, x)
    maps = []
    for index, layer in enumerate(model.layers):
        out = layer.forward(out, train=False)
        maps.append(FeatureMap(index, type(layer).__name__, to_numpy(out)))
    return maps


def saliency(model, x, target) -> numpy.ndarray:
    """The gradient of class ``target``'s score (logit) with respect to the input, x's shape,
    as a host array in the model's dtype (Simonyan et al. 2014 show ``|grad|``, max over
    channels). ``target``: one class index for every sample, or (N,) indices."""
    x = _prepare(model, x)
    return to_numpy(_score_gradients(model, x, target)[1])


def cam_layer(model, input_shape=None) -> int:
    """The layer whose output :func:`grad_cam` uses by default: the last one whose output is
    4-D (N, C, H, W), i.e. the output of the network's last convolutional block (a conv, its
    ReLU, a pooling or a residual block: the last spatial feature maps, where the maps are
    both most semantic and still localised; a Dropout, the identity in inference, is not
    counted: the layer before it gives the same maps). ``input_shape`` (C, H, W) defaults to the
    model's own; ValueError when no layer's output is spatial."""
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError("cam_layer needs the input shape (C, H, W): the model does not say")
    shape, last = tuple(int(d) for d in shape), None
    for index, layer in enumerate(model.layers):
        shape = tuple(layer.output_shape(shape))
        if len(shape) == 3 and not isinstance(layer, Dropout):  # Dropout: the identity here
            last = index
    if last is None:
        raise ValueError("no layer of the model has a spatial (C, H, W) output for Grad-CAM")
    return last


def grad_cam(model, x, target, layer: int | None = None, upsample: bool = False) -> numpy.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of class ``target`` for input x (N, C, H, W).

    With A the output of layer ``layer`` (default :func:`cam_layer`: the last 4-D output),
    w_k = the spatial mean of d score / d A_k, and cam = ReLU(sum_k w_k A_k): (N, H', W').
    ``upsample=True`` resizes it to the input's H x W (bilinear, as ``upsample_bilinear``) and
    scales each map to [0, 1] (by its maximum; an all-zero map stays zero). Host arrays."""
    x = _prepare(model, x)
    if x.ndim != 4:
        raise ValueError(f"grad_cam takes images (N, C, H, W), got shape {tuple(x.shape)}")
    count = len(model.layers)
    if layer is None:
        layer = cam_layer(model, tuple(x.shape[1:]))
    elif not isinstance(layer, (int, numpy.integer)) or not -count <= layer < count:
        raise ValueError(f"layer must be a layer index in 0..{count - 1}, got {layer!r}")
    layer = int(layer) % count
    outputs, grad = _score_gradients(model, x, target, stop=layer)
    acts = outputs[layer]
    if acts.ndim != 4:
        raise ValueError(f"layer {layer} ({type(model.layers[layer]).__name__}) has output shape "
                         f"{tuple(acts.shape)}; Grad-CAM needs (N, C, H, W) feature maps")
    xp = xp_of(acts)
    weights = grad.mean(axis=(2, 3), keepdims=True)
    cam = to_numpy(xp.maximum((weights * acts).sum(axis=1), 0))
    if not upsample:
        return cam
    cam = upsample_bilinear(cam, x.shape[2], x.shape[3])
    peak = cam.max(axis=(1, 2), keepdims=True)
    return numpy.divide(cam, peak, out=numpy.zeros_like(cam), where=peak > 0)


def upsample_bilinear(maps: numpy.ndarray, height: int, width: int) -> numpy.ndarray:
    """(N, h, w) maps resized to (N, height, width) by bilinear interpolation with pixel
    centres aligned (as PIL, or PyTorch's ``align_corners=False``; edges clamped)."""
    maps = numpy.asarray(maps)

    def axis(src: int, dst: int):
        pos = numpy.clip((numpy.arange(dst) + 0.5) * (src / dst) - 0.5, 0, src - 1)
        lo = numpy.floor(pos).astype(numpy.int64)
        hi = numpy.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype(maps.dtype)

    y0, y1, fy = axis(maps.shape[1], height)
    x0, x1, fx = axis(maps.shape[2], width)
    rows = maps[:, y0] * (1 - fy)[None, :, None] + maps[:, y1] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx
