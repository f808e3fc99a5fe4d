"""Dropout (inverted): in training each unit is kept with probability 1-p and scaled by
1/(1-p), so inference is the identity and needs no rescaling."""
from ..backend import RandomSource, device_of
from ..ops import cuda_kernels
from .base import Layer


class Dropout(Layer):
    """Any shape in, same shape out. ``seed`` fixes the mask stream; its state is saved
    in checkpoints (``rng_state`` / ``set_rng_state``) so a resumed run draws the same masks."""

    batch_sliceable = False  # one mask stream, drawn in batch order

    def __init__(self, p=0.5, seed=0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = RandomSource(seed, "cpu")
        self._mask = None

    def forward(self, x, train=True):
        if not train or self.p == 0.0:
            self._mask = None
            return x
        device = device_of(x)
        if self.rng.device != device:
            self.rng.to(device)
        draws = self.rng.uniform(x.shape, x.dtype)
        scale = 1.0 / (1.0 - self.p)
        if cuda_kernels.applies(x, draws):
            fused = cuda_kernels.dropout_forward(x, draws, self.p, scale)
            if fused is not None:
                out, self._mask = fused
                return out
        self._mask = (draws >= self.p).astype(x.dtype)
        self._mask *= scale
        return x * self._mask

    def backward(self, dout):
        if self._mask is None:
            return dout
        return dout * self._mask

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
