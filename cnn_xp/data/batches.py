"""Shuffled mini-batches that live on the compute device.

The whole data set is copied to the device once; each epoch a permutation is drawn on the
host from a seeded NumPy Generator (same order on CPU and GPU) and copied once. On the CPU
each batch is gathered by fancy indexing; on the GPU the whole set is gathered once per
epoch (a second copy of the data while the epoch runs) and batches are slices of it, so a
training step launches no gather.
"""
from __future__ import annotations

import numpy as np

from .. import backend


class BatchIterator:
    """Iterate ``(x_batch, t_batch)`` over one epoch per ``iter()``.

    x: (N, ...) and t: (N, ...) host (or device) arrays with equal N.
    Last-batch policy: with ``drop_last=False`` (default) the final batch is smaller when
    ``batch_size`` does not divide N; with ``drop_last=True`` it is skipped.
    ``state_dict()`` / ``load_state_dict()`` save and restore the shuffling RNG (JSON-able):
    taken at an epoch boundary, a restored iterator yields the same next epochs bit for bit.
    """

    def __init__(self, x, t, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, device: str = "cpu"):
        if x.shape[0] != t.shape[0]:
            raise ValueError(f"{x.shape[0]} inputs but {t.shape[0]} targets")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.device = backend.check_device(device)
        self.x = backend.to_device(x, self.device)
        self.t = backend.to_device(t, self.device)
        self.seed = int(seed)
        self.epochs_drawn = 0
        self._rng = np.random.Generator(np.random.PCG64(self.seed))

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        n, b = self.num_samples, self.batch_size
        stop = (n // b) * b if self.drop_last else n
        if not self.shuffle:
            for start in range(0, stop, b):
                yield self.x[start:start + b], self.t[start:start + b]
            return
        order = backend.to_device(self._rng.permutation(n), self.device)
        self.epochs_drawn += 1
        if self.device == "gpu":
            # One gather of the whole set per epoch, then batches are slices (views): no
            # launch per step. The permuted copy lives while the epoch runs.
            x, t = self.x[order], self.t[order]
            for start in range(0, stop, b):
                yield x[start:start + b], t[start:start + b]
            return
        for start in range(0, stop, b):
            idx = order[start:start + b]
            yield self.x[idx], self.t[idx]

    def state_dict(self) -> dict:
        """JSON-able shuffling state (big integers as decimal strings)."""
        bg = self._rng.bit_generator.state
        return {
            "seed": self.seed,
            "epochs_drawn": self.epochs_drawn,
            "bit_generator": bg["bit_generator"],
            "state": str(bg["state"]["state"]),
            "inc": str(bg["state"]["inc"]),
            "has_uint32": int(bg["has_uint32"]),
            "uinteger": int(bg["uinteger"]),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``; the next ``iter()`` continues that stream."""
        if state.get("bit_generator") != "PCG64":
            raise ValueError(f"unsupported RNG state {state.get('bit_generator')!r}, expected PCG64")
        self.seed = int(state["seed"])
        self.epochs_drawn = int(state["epochs_drawn"])
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(state["state"]), "inc": int(state["inc"])},
            "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"]),
        }
