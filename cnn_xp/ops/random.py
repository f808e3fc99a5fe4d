"""Counter-based uniform draws (Philox4x32-10, Salmon et al. 2011), written against ``xp``.

Draw k of a stream is a pure function of (seed, k): the 64-bit ``seed`` is Philox's key, and
block b = k // 4 (a 64-bit counter) gives four 32-bit words, draw k taking word k % 4. So a
stream can start anywhere (``counter``: the first block), needs no state but that counter
(resumable exactly), and gives the same numbers on every device and in every kernel --
the CUDA dropout kernel computes the same words in-kernel. Words become floats exactly:
float32 ``(word >> 8) * 2^-24``, float64 ``word * 2^-32``, both in [0, 1).
"""
from __future__ import annotations

MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
WEYL = (0x9E3779B9, 0xBB67AE85)  # the key's increments between rounds
ROUNDS = 10
MASK32 = 0xFFFFFFFF


def blocks(size: int) -> int:
    """Counter blocks a draw of ``size`` numbers uses (4 numbers a block)."""
    return -(-int(size) // 4)


def philox_words(xp, seed: int, counters):
    """The four 32-bit words (each a uint64 array of ``counters``' shape) of Philox4x32-10
    with key ``seed`` (0 <= seed < 2^64) at counter blocks ``counters`` (a uint64 array)."""
    c0, c1 = counters & MASK32, counters >> 32
    c2 = xp.zeros_like(counters)
    c3 = xp.zeros_like(counters)
    k0, k1 = int(seed) & MASK32, (int(seed) >> 32) & MASK32
    m0, m1 = xp.uint64(MULTIPLIERS[0]), xp.uint64(MULTIPLIERS[1])
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + WEYL[0]) & MASK32, (k1 + WEYL[1]) & MASK32
        p0, p1 = m0 * c0, m1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ xp.uint64(k0), p1 & MASK32, (p0 >> 32) ^ c3 ^ xp.uint64(k1), p0 & MASK32
    return c0, c1, c2, c3


def philox_uniform(xp, seed: int, counter: int, shape, dtype="float32"):
    """Uniform [0, 1) draws of ``shape`` in ``dtype`` (float32 / float64): draws
    4 * counter, 4 * counter + 1, ... of the stream ``seed``, in C order."""
    size = 1
    for extent in shape:
        size *= int(extent)
    count = blocks(size)
    words = xp.stack(philox_words(xp, seed, xp.arange(count, dtype=xp.uint64) + xp.uint64(counter)), axis=1)
    words = words.reshape(-1)[:size]
    if xp.dtype(dtype) == xp.float32:
        return ((words >> 8).astype(xp.float32) * xp.float32(2.0 ** -24)).reshape(shape)
    return (words.astype(xp.float64) * (2.0 ** -32)).reshape(shape).astype(dtype)
