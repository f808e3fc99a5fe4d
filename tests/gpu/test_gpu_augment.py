"""Random crops and flips on the device: the same images as on the host for the same seed
(the draws are made on the host), dtype and device kept."""
import numpy as np
import pytest

from gpu_helpers import on_cpu_reference

from cnn_xp import backend
from cnn_xp.augment import RandomCropFlip
from cnn_xp.training import build_augmenter


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_crop_flip_on_the_device_equals_the_host(dtype, gpu):
    x = np.random.default_rng(0).random((9, 3, 10, 8)).astype(dtype)

    def run(device):
        aug = RandomCropFlip(pad=3, seed=4)
        out = aug(backend.to_device(x, device))
        assert backend.device_of(out) == device and out.dtype == x.dtype and out.shape == x.shape
        chained = build_augmenter({"crop": 2.0, "flip": 1.0, "rotate": 10.0}, seed=1)
        return backend.to_numpy(out), backend.to_numpy(chained(backend.to_device(x, device)))

    got = run(gpu)
    want = on_cpu_reference(run, "cpu")
    np.testing.assert_array_equal(got[0], want[0])
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got[1], want[1], rtol=tol, atol=tol)
