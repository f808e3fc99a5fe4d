"""Dropout (inverted): in training each unit is kept with probability 1-p and scaled by
1/(1-p), so inference is the identity and needs no rescaling."""
from .. import dispatch
from ..backend import RandomSource, device_of
from ..validation import check_float_input, fraction, integer
from .base import Layer


class Dropout(Layer):
    """Any shape in, same shape out. ``seed`` fixes the mask stream; its state is saved
    in checkpoints (``rng_state`` / ``set_rng_state``) so a resumed run draws the same masks.
    ``p`` is a number in [0, 1) and ``seed`` an int >= 0 (ValueError naming the argument
    otherwise); ``forward`` takes float32 or float64 input only."""

    batch_sliceable = False  # one mask stream, drawn in batch order

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        self.p = fraction(p, "p (the dropout probability)", "Dropout")
        self.rng = RandomSource(integer(seed, "seed", "Dropout", minimum=0), "cpu")
        self._impl = self._cache = None

    def forward(self, x, train=True):
        check_float_input(x, "Dropout")
        if not train or self.p == 0.0:
            if train:
                self._impl, self._cache = None, None
            return x
        device = device_of(x)
        if self.rng.device != device:
            self.rng.to(device)
        impl = dispatch.implementation("dropout", device)
        out, self._cache = impl.dropout_forward(x, self.rng.uniform(x.shape, x.dtype), self.p, train)
        self._impl = impl
        return out

    def backward(self, dout):
        if self._impl is None:  # p == 0: the identity
            return dout
        return self._impl.dropout_backward(dout, self._cache)

    def to(self, device):
        super().to(device)
        self.rng.to(device)
        return self

    def rng_state(self) -> dict:
        return self.rng.state()

    def set_rng_state(self, state: dict) -> None:
        self.rng.set_state(state)

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
