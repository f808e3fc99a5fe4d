"""Sequential: a stack of layers closed by a loss layer, on one device and dtype."""
from __future__ import annotations

from .backend import as_dtype, check_device, to_device, to_numpy
from .layers import SoftmaxCrossEntropy


class Sequential:
    """``layers`` applied in order to NCHW (or (N, D)) input; ``loss`` defaults to
    SoftmaxCrossEntropy. The first layer skips its input gradient unless ``input_grad``.

    A plain loop: the forward runs the layers in the order given, the backward in reverse.
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

    def as_input(self, x):
        """``x`` on the model's device, in its dtype."""
        x = to_device(x, self.device)
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        return x

    # -- forward / backward -----------------------------------------------------------
    def predict(self, x, train: bool = False):
        """Class scores (N, K) for input x (moved to the model's device and dtype)."""
        x = self.as_input(x)
        for layer in self.layers:
            x = layer.forward(x, train=train)
        return x

    def scores_and_loss(self, x, t, train: bool = True, totals=None, checked: bool = False):
        """(scores (N, K), mean loss (0-d, on the model's device)); ``backward`` may follow.
        ``totals`` / ``checked``: see ``SoftmaxCrossEntropy.forward`` (what ``fit`` uses)."""
        scores = self.predict(x, train=train)
        labels = to_device(t, self.device)
        if totals is None and not checked:
            return scores, self.loss_layer.forward(scores, labels, train=train)
        return scores, self.loss_layer.forward(scores, labels, train=train, totals=totals, checked=checked)

    def loss(self, x, t, train: bool = True):
        """Forward pass and mean loss (a 0-d array on the model's device)."""
        return self.scores_and_loss(x, t, train)[1]

    def backward(self, dout=1.0):
        """Backpropagate from the last training ``loss``; fills every layer's grads.
        Returns dx, or None when the first layer skips it."""
        grad = self.loss_layer.backward(dout)
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
            if grad is None:
                return None
        return grad

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

    def layer_flops(self, sample_shape) -> list[int]:
        """Forward FLOPs (a multiply-add counts 2) of each layer for one sample of
        ``sample_shape`` (e.g. (1, 28, 28)), as each layer reports them."""
        flops, shape = [], tuple(int(d) for d in sample_shape)
        for layer in self.layers:
            flops.append(layer.forward_flops(shape))
            shape = layer.output_shape(shape)
        return flops

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

    # -- inspection and files ---------------------------------------------------------
    def summary(self, input_shape=None) -> str:
        """A table, as Keras's: each layer's index and type, output shape (for one sample of
        ``input_shape`` (C, H, W), default the model's ``input_shape`` when it has one;
        ``?`` when unknown) and parameter count, then the totals."""
        shape = input_shape if input_shape is not None else getattr(self, "input_shape", None)
        shape = None if shape is None else tuple(int(d) for d in shape)
        rows = [("#", "layer", "output shape", "parameters")]
        if shape is not None:
            rows.append(("", "input", "x".join(map(str, shape)), ""))
        for index, layer in enumerate(self.layers):
            if shape is not None:
                shape = tuple(int(d) for d in layer.output_shape(shape))
            count = sum(int(v.size) for v in layer.params.values())
            rows.append((str(index), repr(layer) if len(repr(layer)) <= 40 else type(layer).__name__,
                         "?" if shape is None else "x".join(map(str, shape)), f"{count:,}"))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        rule = "-" * (sum(widths) + 6)
        lines = [f"{getattr(self, 'name', None) or 'Sequential'} ({self.device}, {self.dtype})", rule]
        for i, row in enumerate(rows):
            lines.append(f"{row[0]:>{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]:>{widths[3]}}")
            if i == 0:
                lines.append(rule)
        lines += [rule, f"total parameters: {self.num_params():,}",
                  f"loss: {type(self.loss_layer).__name__}"]
        return "\n".join(lines)

    def save(self, path, **meta) -> None:
        """Write the architecture, weights and ``meta`` (JSON-able; e.g. ``class_names``) to
        ``path`` (a no-pickle ``.npz``); ``cnn_xp.load(path)`` rebuilds the model."""
        from .saving import save

        save(self, path, meta=meta)

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(device={self.device}, dtype={self.dtype}\n{inner}\n  loss: {self.loss_layer!r}\n)"
