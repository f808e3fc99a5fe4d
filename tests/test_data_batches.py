"""BatchIterator: one copy to the device, seeded epochs, last-batch policy, state restore."""
import json

import numpy as np
import pytest

from cnn_xp import backend
from cnn_xp.data import BatchIterator


def _data(n=10):
    x = np.arange(n, dtype=np.float32).repeat(3).reshape(n, 3)
    t = np.arange(n, dtype=np.int64)
    return x, t


def _epoch(it):
    return [(xb.copy(), tb.copy()) for xb, tb in it]


def test_epoch_covers_each_sample_once_in_seeded_order():
    x, t = _data(10)
    it = BatchIterator(x, t, 4, seed=3)
    batches = _epoch(it)
    assert [len(tb) for _, tb in batches] == [4, 4, 2] and len(it) == 3
    order = np.concatenate([tb for _, tb in batches])
    np.testing.assert_array_equal(order, np.random.Generator(np.random.PCG64(3)).permutation(10))
    for xb, tb in batches:
        np.testing.assert_array_equal(xb[:, 0], tb.astype(np.float32))  # pairs stay together
        assert xb.dtype == np.float32


def test_drop_last():
    x, t = _data(10)
    it = BatchIterator(x, t, 4, seed=0, drop_last=True)
    assert len(it) == 2 and [len(tb) for _, tb in it] == [4, 4]
    assert len(BatchIterator(x, t, 5, drop_last=True)) == 2


def test_no_shuffle_in_order():
    x, t = _data(7)
    it = BatchIterator(x, t, 3, shuffle=False)
    assert [tb.tolist() for _, tb in it] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [tb.tolist() for _, tb in it] == [[0, 1, 2], [3, 4, 5], [6]]


def test_deterministic_and_epochs_differ():
    x, t = _data(50)
    a, b = BatchIterator(x, t, 8, seed=11), BatchIterator(x, t, 8, seed=11)
    a1, a2 = _epoch(a), _epoch(a)
    b1, b2 = _epoch(b), _epoch(b)
    for u, v in zip(a1 + a2, b1 + b2):
        np.testing.assert_array_equal(u[0], v[0])
        np.testing.assert_array_equal(u[1], v[1])
    assert not np.array_equal(np.concatenate([tb for _, tb in a1]),
                              np.concatenate([tb for _, tb in a2]))
    c1 = _epoch(BatchIterator(x, t, 8, seed=12))
    assert not np.array_equal(np.concatenate([tb for _, tb in a1]),
                              np.concatenate([tb for _, tb in c1]))


def test_state_restore_is_bit_identical():
    x, t = _data(33)
    it = BatchIterator(x, t, 5, seed=4)
    _epoch(it)
    saved = json.loads(json.dumps(it.state_dict()))
    expected = [_epoch(it) for _ in range(2)]
    fresh = BatchIterator(x, t, 5, seed=999)
    fresh.load_state_dict(saved)
    assert fresh.epochs_drawn == 1 and fresh.seed == 4
    for want in expected:
        got = _epoch(fresh)
        assert len(got) == len(want)
        for (gx, gt), (wx, wt) in zip(got, want):
            np.testing.assert_array_equal(gx, wx)
            np.testing.assert_array_equal(gt, wt)
    assert fresh.state_dict() == it.state_dict()


def test_bad_state_rejected():
    x, t = _data(4)
    it = BatchIterator(x, t, 2)
    state = it.state_dict()
    state["bit_generator"] = "MT19937"
    with pytest.raises(ValueError, match="PCG64"):
        it.load_state_dict(state)


def test_copies_to_device_once_and_index_once_per_epoch(monkeypatch):
    calls = []
    real = backend.to_device

    def counting(array, device):
        calls.append(np.asarray(array).shape)
        return real(array, device)

    monkeypatch.setattr(backend, "to_device", counting)
    x, t = _data(12)
    it = BatchIterator(x, t, 5, seed=0)
    assert calls == [(12, 3), (12,)]
    _epoch(it)
    _epoch(it)
    assert calls == [(12, 3), (12,), (12,), (12,)]


def test_bad_arguments():
    x, t = _data(4)
    with pytest.raises(ValueError, match="4 inputs but 3 targets"):
        BatchIterator(x, t[:3], 2)
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(x, t, 0)
    with pytest.raises(ValueError, match="unknown device"):
        BatchIterator(x, t, 2, device="tpu")
