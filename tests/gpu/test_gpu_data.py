"""Data on the GPU: BatchIterator's batches and RandomCropFlip's crops are the CPU's."""
import numpy as np

from cnn_xp import backend
from cnn_xp.augment import RandomCropFlip
from cnn_xp.data import BatchIterator


def _epoch(it):
    return [(backend.to_numpy(xb), backend.to_numpy(tb)) for xb, tb in it]


def test_batches_match_the_cpu(gpu):
    x = np.arange(23, dtype=np.float32).repeat(3).reshape(23, 3)
    t = np.arange(23, dtype=np.int64)
    cpu = _epoch(BatchIterator(x, t, 6, seed=5))
    gpu_it = BatchIterator(x, t, 6, seed=5, device=gpu)
    assert backend.device_of(gpu_it.x) == gpu
    on_gpu = _epoch(gpu_it)
    assert len(on_gpu) == len(cpu)
    for (cx, ct), (gx, gt) in zip(cpu, on_gpu):
        np.testing.assert_array_equal(cx, gx)
        np.testing.assert_array_equal(ct, gt)


def test_crop_flip_draws_the_cpu_crops(gpu):
    x = (np.random.default_rng(0).random((8, 3, 8, 7)) + 0.5).astype(np.float32)  # no zeros
    host = RandomCropFlip(pad=3, seed=5)(x)
    out = RandomCropFlip(pad=3, seed=5)(backend.to_device(x, gpu))
    assert backend.device_of(out) == gpu and out.dtype == x.dtype
    np.testing.assert_array_equal(backend.to_numpy(out), host)  # host draws: the same crops
