"""The counter-based stream behind Dropout (cnn_xp.ops.random: Philox4x32-10) and the layer
that uses it: the published known answers, draws as a pure function of (seed, position),
exact floats in [0, 1), and a Dropout whose (seed, counter) state replays its masks."""
import numpy as np
import pytest

from cnn_xp.layers import Dropout
from cnn_xp.ops import random as stream


def words(seed, counter):
    return [int(w[0]) for w in stream.philox_words(np, seed, np.array([counter], dtype=np.uint64))]


def test_philox_gives_the_published_known_answers():
    # Random123's kat_vectors for philox4x32-10 with counter and key all zero
    assert words(0, 0) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    # the high halves of the 64-bit seed and counter count
    assert words(2**40, 0) != words(0, 0) and words(0, 2**40) != words(0, 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_draws_depend_only_on_seed_and_position(dtype):
    whole = stream.philox_uniform(np, 7, 10, (40,), dtype)
    assert whole.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(stream.philox_uniform(np, 7, 11, (36,), dtype), whole[4:])
    np.testing.assert_array_equal(stream.philox_uniform(np, 7, 10, (5, 3), dtype).reshape(-1), whole[:15])
    assert not np.array_equal(stream.philox_uniform(np, 8, 10, (40,), dtype), whole)
    assert stream.blocks(15) == 4 and stream.blocks(16) == 4 and stream.blocks(0) == 0


@pytest.mark.parametrize("dtype, bits", [("float32", 24), ("float64", 32)])
def test_draws_are_exact_binary_fractions_in_the_unit_interval(dtype, bits):
    u = stream.philox_uniform(np, 123, 0, (200_000,), dtype)
    assert u.min() >= 0.0 and u.max() < 1.0
    scaled = u.astype(np.float64) * 2.0 ** bits
    np.testing.assert_array_equal(scaled, np.floor(scaled))
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    # neighbouring draws are not correlated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01


def test_a_dropout_layer_replays_its_masks_from_its_state():
    x = np.ones((6, 50), dtype=np.float32)
    layer = Dropout(0.5, seed=3)
    first = layer.forward(x)
    state = layer.rng_state()
    assert state == {"seed": 3, "counter": stream.blocks(x.size)}
    second = layer.forward(x)
    assert not np.array_equal(first, second)  # the stream moved on
    again = Dropout(0.5, seed=99)
    again.set_rng_state(state)
    np.testing.assert_array_equal(again.forward(x), second)
    kept = (first != 0).mean()
    assert 0.35 < kept < 0.65 and set(np.unique(first)) <= {0.0, 2.0}


def test_a_state_saved_before_the_counter_stream_still_loads():
    layer = Dropout(0.5, seed=1)
    layer.set_rng_state({"seed": 4, "draws": 3, "device": "cpu"})
    assert layer.rng_state() == {"seed": 4, "counter": 3 << 40}
