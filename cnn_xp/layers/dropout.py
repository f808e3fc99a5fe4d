"""Dropout (inverted): in training each unit is kept with probability 1-p and scaled by
1/(1-p), so inference is the identity and needs no rescaling."""
from .. import dispatch
from ..backend import device_of
from ..ops.random import blocks
from ..validation import check_float_input, fraction, integer
from .base import Layer


class Dropout(Layer):
    """Any shape in, same shape out. ``seed`` fixes the mask stream: a counter-based one
    (Philox, ``cnn_xp.ops.random``), so the masks are the same on every device and the
    state is (seed, counter), saved in checkpoints (``rng_state`` / ``set_rng_state``) so a
    resumed run draws the same masks. On the GPU the draws are made inside the kernel.
    ``p`` is a number in [0, 1) and ``seed`` an int >= 0 (ValueError naming the argument
    otherwise); ``forward`` takes float32 or float64 input only."""

    batch_sliceable = False  # one mask stream, drawn in batch order

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        self.p = fraction(p, "p (the dropout probability)", "Dropout")
        self.seed = integer(seed, "seed", "Dropout", minimum=0)
        self.counter = 0  # the stream's next block (4 draws a block)
        self._impl = self._cache = None

    def forward(self, x, train=True):
        check_float_input(x, "Dropout")
        if not train or self.p == 0.0:
            if train:
                self._impl, self._cache = None, None
            return x
        impl = dispatch.implementation("dropout", device_of(x))
        out, self._cache = impl.dropout_forward_philox(x, self.seed, self.counter, self.p, train)
        self.counter += blocks(x.size)
        self._impl = impl
        return out

    def backward(self, dout):
        if self._impl is None:  # p == 0: the identity
            return dout
        return self._impl.dropout_backward(dout, self._cache)

    def rng_state(self) -> dict:
        return {"seed": self.seed, "counter": self.counter}

    def set_rng_state(self, state: dict) -> None:
        """Continue the stream ``state`` describes. A state saved before the counter-based
        stream (seed, draws, ...) continues at a block of its own for each draw count."""
        self.seed = int(state["seed"])
        self.counter = int(state["counter"]) if "counter" in state else int(state.get("draws", 0)) << 40

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
