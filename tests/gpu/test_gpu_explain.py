"""cnn_xp.explain on the GPU against the CPU reference: feature maps, saliency and Grad-CAM
of a small net with BatchNorm, Dropout and a residual block, in float64 and float32; the
model on the GPU is left as it was."""
import numpy as np
import pytest

from gpu_helpers import on_cpu_reference

from cnn_xp import Sequential, backend, explain
from cnn_xp.layers import Affine, BatchNorm, Conv2D, Dropout, GlobalAvgPool2D, MaxPool2D, ReLU, Residual


def net(dtype, device):
    model = Sequential([Conv2D(3, 4, 3, pad=1, rng=1), BatchNorm(4), ReLU(), MaxPool2D(2), Residual(4, 6, 2, rng=2),
                        Dropout(0.5, seed=3), GlobalAvgPool2D(), Affine(6, 5, rng=4)], dtype=dtype)
    bn = model.layers[1]
    bn.buffers["running_mean"][...] = [0.1, -0.2, 0.3, 0.0]
    bn.buffers["running_var"][...] = [1.5, 0.5, 2.0, 1.0]
    return model.to(device)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_explain_on_the_gpu_matches_the_cpu(gpu, mode, dtype):
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(dtype)
    target = [0, 3, 4]
    want = on_cpu_reference(lambda: (explain.feature_maps(net(dtype, "cpu"), x),
                                     explain.saliency(net(dtype, "cpu"), x, target),
                                     explain.grad_cam(net(dtype, "cpu"), x, target, upsample=True)))
    model = net(dtype, gpu)
    before = backend.to_numpy(model.predict(x))
    maps, sal, cam = (explain.feature_maps(model, x), explain.saliency(model, x, target),
                      explain.grad_cam(model, x, target, upsample=True))
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == "float64" else dict(rtol=1e-3, atol=1e-4)
    for got, ref in zip(maps, want[0]):
        assert isinstance(got.activation, np.ndarray)
        np.testing.assert_allclose(got.activation, ref.activation, **tol)
    scale = np.abs(want[1]).max()
    np.testing.assert_allclose(sal / scale, want[1] / scale, **tol)
    np.testing.assert_allclose(cam, want[2], **tol)
    np.testing.assert_array_equal(backend.to_numpy(model.predict(x)), before)
    assert model.random_state()["5"]["counter"] == 0  # explaining draws no dropout mask
