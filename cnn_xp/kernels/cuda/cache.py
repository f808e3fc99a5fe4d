"""How a forward records which implementation ran it.

A cache this accelerator makes is a tuple whose first item is ``"cuda"``. A call the
kernels cannot serve (another dtype, an array too large for 32-bit indexing, one-hot
labels, a CPU array, a kernel that failed to compile) runs the reference, and its cache is
then a ``ReferenceCache`` wrapping the reference's own cache: each backward checks for it
first and hands it to the reference's backward. Backward never guesses.
"""
from __future__ import annotations

from ... import ops


class ReferenceCache:
    """The reference's cache of a forward this accelerator handed to the reference."""

    __slots__ = ("cache",)

    def __init__(self, cache):
        self.cache = cache

    def __repr__(self) -> str:
        return "ReferenceCache(...)"


def reference_call(forward: str, *args, **kwargs):
    """``cnn_xp.ops.<forward>(*args, **kwargs)`` -> (out, its cache wrapped in a
    ``ReferenceCache``; None stays None)."""
    out, cache = getattr(ops, forward)(*args, **kwargs)
    return out, (None if cache is None else ReferenceCache(cache))
