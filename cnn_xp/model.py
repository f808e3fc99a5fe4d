"""Sequential: a stack of layers closed by a loss layer, on one device and dtype."""
from __future__ import annotations

from math import prod

from . import parallel
from .backend import as_dtype, check_device, get_xp, to_device, to_numpy
from .layers import Affine, Conv2D, MaxPool2D, ReLU, SoftmaxCrossEntropy


def execution_order(layers) -> list[int]:
    """Indices of ``layers`` in the order the forward pass runs them.

    ReLU followed by an unpadded MaxPool2D runs as pool-then-ReLU: max and ReLU commute
    (max(relu(x)) == relu(max(x)), and both route the gradient to the window's first maximum
    when it is positive, nowhere otherwise), so the ReLU and its backward touch a map
    KH*KW times smaller. Values and gradients are exactly those of the declared order.
    """
    order = list(range(len(layers)))
    i = 0
    while i + 1 < len(layers):
        relu, pool = layers[i], layers[i + 1]
        if type(relu) is ReLU and type(pool) is MaxPool2D and pool.pad == (0, 0):
            order[i], order[i + 1] = i + 1, i
            i += 2
        else:
            i += 1
    return order


class Sequential:
    """``layers`` applied in order to NCHW (or (N, D)) input; ``loss`` defaults to
    SoftmaxCrossEntropy. The first layer skips its input gradient unless ``input_grad``.

    Parameter names are ``"<layer index>.<key>"`` (e.g. ``"0.W"``), used by optimizers,
    ``state_dict`` and checkpoints.
    """

    def __init__(self, layers, loss=None, device: str = "cpu", dtype=None, input_grad: bool = False):
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("Sequential needs at least one layer")
        self.loss_layer = loss if loss is not None else SoftmaxCrossEntropy()
        self.layers[0].need_input_grad = bool(input_grad)
        self.device = "cpu"
        if dtype is not None:
            self.astype(dtype)
        self.dtype = self._param_dtype() or str(as_dtype(dtype or "float32"))
        self.to(device)

    def _param_dtype(self):
        for layer in self.layers:
            for value in layer.params.values():
                return str(value.dtype)
        return None

    # -- device and dtype -------------------------------------------------------------
    def to(self, device: str) -> "Sequential":
        self.device = check_device(device)
        for layer in self.layers:
            layer.to(device)
        return self

    def astype(self, dtype) -> "Sequential":
        """Cast every parameter and buffer (float32 / float64)."""
        for layer in self.layers:
            layer.astype(as_dtype(dtype))
        self.dtype = str(as_dtype(dtype))
        return self

    def _as_input(self, x):
        x = to_device(x, self.device)
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        return x

    # -- forward / backward -----------------------------------------------------------
    def predict(self, x, train: bool = False):
        """Class scores (N, K) for input x (moved to the model's device and dtype).

        CPU inference of a large enough net and batch runs in slices on every core
        (``cnn_xp.parallel``); the scores agree with a one-thread run up to float rounding."""
        x = self._as_input(x)
        if train:
            self._sliced_batch = False
        if not train and self.device == "cpu" and x.ndim > 1:
            slices = parallel.inference_slices(len(x), *self._work_per_image(x, self.layers))
            if slices > 1:
                return parallel.map_slices(self._forward, x, slices)
        return self._forward(x, train)

    def _forward(self, x, train: bool = False):
        for index in execution_order(self.layers):
            x = self.layers[index].forward(x, train=train)
        return x

    def layer_flops(self, sample_shape) -> list[int]:
        """FLOPs (a multiply-add counts 2) of each layer's forward pass for one sample of
        ``sample_shape`` (e.g. (1, 28, 28)): conv and affine layers, 0 for the others.
        Found by one forward pass of a zero sample; remembered per shape."""
        cache = self.__dict__.setdefault("_layer_flops", {})
        key = tuple(int(d) for d in sample_shape)
        if key not in cache:
            x = get_xp(self.device).zeros((1, *key), dtype=self.dtype)
            flops = [0] * len(self.layers)
            for index in execution_order(self.layers):
                layer = self.layers[index]
                out = layer.forward(x, train=False)
                if isinstance(layer, Conv2D):
                    oc, c, kh, kw = layer.params["W"].shape
                    flops[index] = 2 * int(prod(out.shape[1:])) * c * kh * kw
                elif isinstance(layer, Affine):
                    fan_in, fan_out = layer.params["W"].shape
                    flops[index] = 2 * fan_in * fan_out
                x = out
            cache[key] = flops
        return list(cache[key])

    def loss(self, x, t, train: bool = True):
        """Forward pass and mean loss (a 0-d array on the model's device).

        On the CPU a training batch of at least 32 runs its leading batch-sliceable layers
        (all but Dropout / BatchNorm and what follows them) in slices on every core
        (``cnn_xp.parallel.SlicedLayers``); the loss is always taken over the whole batch."""
        return self.scores_and_loss(x, t, train)[1]

    def scores_and_loss(self, x, t, train: bool = True):
        """(scores (N, K), mean loss): ``loss`` that also hands back the class scores (for
        a trainer's running accuracy); ``backward`` may follow either."""
        x = self._as_input(x)
        sliced, slices = self._training_slices(x) if train and self.device == "cpu" else (None, 1)
        if slices == 1:
            scores = self.predict(x, train=train)
        else:
            scores = sliced.forward(x, slices)
            for index in execution_order(self.layers)[len(sliced.layers):]:
                scores = self.layers[index].forward(scores, train=True)
            self._sliced_batch = True
        return scores, self.loss_layer.forward(scores, to_device(t, self.device))

    def _training_slices(self, x):
        """(SlicedLayers or None, slices) for training batch ``x``; 1 slice: run it whole."""
        sliced = self._sliced_layers() if x.ndim > 1 else None
        if sliced is None:
            return None, 1
        return sliced, parallel.training_slices(len(x), *self._work_per_image(x, sliced.layers))

    def _work_per_image(self, x, layers) -> tuple[int, int]:
        """Forward FLOPs per sample of ``x`` in ``layers`` (some of self.layers): all, and
        those of the fully connected layers among them."""
        flops = dict(zip(map(id, self.layers), self.layer_flops(x.shape[1:])))
        return (sum(flops[id(layer)] for layer in layers),
                sum(flops[id(layer)] for layer in layers if isinstance(layer, Affine)))

    def _sliced_layers(self):
        """The SlicedLayers of the leading batch-sliceable layers (in execution order),
        made once per layer list; None when the first layer is not sliceable."""
        order = execution_order(self.layers)
        count = 0
        while count < len(order) and self.layers[order[count]].batch_sliceable:
            count += 1
        lead = [self.layers[index] for index in order[:count]]
        sliced = getattr(self, "_sliced", None)
        if sliced is None or [id(layer) for layer in sliced.layers] != [id(layer) for layer in lead]:
            sliced = self._sliced = parallel.SlicedLayers(lead) if lead else None
        return sliced

    def backward(self, dout=1.0):
        """Backpropagate from the last ``loss``; fills every layer's grads. Returns dx or None."""
        grad = self.loss_layer.backward(dout)
        order = execution_order(self.layers)
        sliced = self._sliced if getattr(self, "_sliced_batch", False) else None
        for index in reversed(order[len(sliced.layers):] if sliced else order):
            grad = self.layers[index].backward(grad)
            if grad is None:
                return None
        return sliced.backward(grad) if sliced else grad

    def accuracy(self, x, t, batch_size: int = 1000) -> float:
        """Fraction of correctly classified samples (t: indices or one-hot)."""
        n = x.shape[0]
        correct = None
        for start in range(0, n, batch_size):
            scores = self.predict(x[start:start + batch_size], train=False)
            labels = to_device(t[start:start + batch_size], self.device)
            if labels.ndim == 2:
                labels = labels.argmax(axis=1)
            hits = (scores.argmax(axis=1) == labels).sum()
            correct = hits if correct is None else correct + hits
        return float(correct) / n if n else 0.0

    # -- parameters and state ---------------------------------------------------------
    def params_and_grads(self):
        """Yield (name, layer, key) for every learnable parameter."""
        for index, layer in enumerate(self.layers):
            for key in layer.params:
                yield f"{index}.{key}", layer, key

    def state_dict(self) -> dict:
        """name -> NumPy array for every parameter and buffer."""
        state = {}
        for index, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for key, value in store.items():
                    state[f"{index}.{key}"] = to_numpy(value).copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Load arrays saved by ``state_dict`` (shapes must match; dtype follows the model)."""
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"state does not match the model: missing {missing}, unexpected {unexpected}")
        for index, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for key in store:
                    value = state[f"{index}.{key}"]
                    if tuple(value.shape) != tuple(store[key].shape):
                        raise ValueError(f"{index}.{key}: shape {tuple(value.shape)} != {tuple(store[key].shape)}")
                    # always a copy: in-place training must not write into the caller's dict
                    store[key] = to_device(value, self.device).astype(store[key].dtype, copy=True)

    def random_state(self) -> dict:
        """Layer index -> RNG state of every random layer (Dropout)."""
        return {str(i): layer.rng_state() for i, layer in enumerate(self.layers) if hasattr(layer, "rng_state")}

    def set_random_state(self, state: dict) -> None:
        for key, value in state.items():
            self.layers[int(key)].set_rng_state(value)

    def num_params(self) -> int:
        return sum(int(layer.params[key].size) for _, layer, key in self.params_and_grads())

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(device={self.device}, dtype={self.dtype}\n{inner}\n  loss: {self.loss_layer!r}\n)"
