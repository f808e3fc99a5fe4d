"""Every layer on the GPU, in both kernel modes, against the CPU reference: forward in
training and inference, backward, gradients, parameters and buffers; float32 and float64.
``test_every_layer_has_a_case`` fails when a layer is added without one here."""
import numpy as np
import pytest

from gpu_helpers import assert_close, on_cpu_reference

from cnn_xp import backend, layers

DTYPES = ["float32", "float64"]
X_SHAPE = (2, 3, 7, 6)


def rand(shape, seed, dtype, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _first_conv(dtype):
    layer = layers.Conv2D(3, 4, 3, pad=1, rng=2, dtype=dtype)
    layer.need_input_grad = False  # as the first layer of a model: dx is None on both
    return layer


LAYER_CASES = {  # case id -> (factory(dtype) -> layer, input shape, input scale)
    "Conv2D": (lambda d: layers.Conv2D(3, 4, 3, rng=1, dtype=d), X_SHAPE, 1.0),
    "Conv2D_strided": (lambda d: layers.Conv2D(3, 5, (3, 2), stride=(2, 1), pad=(1, 0),
                                               weight_init="xavier", rng=1, dtype=d), X_SHAPE, 1.0),
    "Conv2D_first": (_first_conv, X_SHAPE, 1.0),
    "MaxPool2D": (lambda d: layers.MaxPool2D(2), (2, 3, 8, 6), 1.0),
    "MaxPool2D_overlap": (lambda d: layers.MaxPool2D(3, stride=2, pad=1), X_SHAPE, 1.0),
    "AvgPool2D": (lambda d: layers.AvgPool2D(2), (2, 3, 8, 6), 1.0),
    "AvgPool2D_overlap": (lambda d: layers.AvgPool2D(3, stride=2, pad=1), X_SHAPE, 1.0),
    "Affine": (lambda d: layers.Affine(12, 7, rng=3, dtype=d), (5, 12), 1.0),
    "Affine_4d": (lambda d: layers.Affine(3 * 7 * 6, 4, rng=3, dtype=d), X_SHAPE, 1.0),
    "Flatten": (lambda d: layers.Flatten(), X_SHAPE, 1.0),
    "ReLU": (lambda d: layers.ReLU(), X_SHAPE, 1.0),
    "Sigmoid": (lambda d: layers.Sigmoid(), (4, 9), 10.0),
    "Tanh": (lambda d: layers.Tanh(), (4, 9), 3.0),
    "BatchNorm_2d": (lambda d: layers.BatchNorm(9, dtype=d), (8, 9), 2.0),
    "BatchNorm_4d": (lambda d: layers.BatchNorm(3, dtype=d), X_SHAPE, 2.0),
    "GlobalAvgPool2D": (lambda d: layers.GlobalAvgPool2D(), X_SHAPE, 1.0),
    "Residual": (lambda d: layers.Residual(3, 3, rng=4, dtype=d), X_SHAPE, 1.0),
    "Residual_projection": (lambda d: layers.Residual(3, 5, stride=2, rng=4, dtype=d), X_SHAPE, 1.0),
}
# Covered by their own tests below: Dropout (device-specific masks), SoftmaxCrossEntropy (two inputs).
LAYERS_WITH_OWN_TESTS = {"Dropout", "SoftmaxCrossEntropy"}


def run_layer(factory, shape, scale, device, dtype):
    layer = factory(dtype).to(device)
    x = backend.to_device(rand(shape, 20, dtype, scale), device)
    out = layer.forward(x, train=True)
    infer = layer.forward(x, train=False)  # stores nothing: the backward below uses the training cache
    dout = backend.to_device(rand(tuple(out.shape), 21, dtype), device)
    dx = layer.backward(dout)
    result = {"out": out, "infer": infer, "dx": dx}
    result.update({f"grad/{k}": v for k, v in layer.grads.items()})
    result.update({f"param/{k}": v for k, v in layer.params.items()})
    result.update({f"buffer/{k}": v for k, v in layer.buffers.items()})
    return result


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_matches_the_cpu_reference(case, dtype, gpu, mode):
    factory, shape, scale = LAYER_CASES[case]
    got = run_layer(factory, shape, scale, gpu, dtype)
    want = on_cpu_reference(run_layer, factory, shape, scale, "cpu", dtype)
    assert got.keys() == want.keys()
    for key, w in want.items():
        if w is None:
            assert got[key] is None, key
            continue
        assert backend.device_of(got[key]) == gpu, f"{key} left the {gpu}"
        assert_close(got[key], w, dtype, f"{case} {key}")
    if case == "Conv2D_first":
        assert want["dx"] is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_inference_matches_the_cpu_reference(dtype, gpu, mode):
    """Running statistics from two training batches, then an inference forward."""
    def run(device):
        layer = layers.BatchNorm(3, momentum=0.8, dtype=dtype).to(device)
        for seed in (30, 31):
            layer.forward(backend.to_device(rand(X_SHAPE, seed, dtype, 2.0) + 1.0, device), train=True)
        out = layer.forward(backend.to_device(rand(X_SHAPE, 32, dtype), device), train=False)
        return {"out": out, **{f"buffer/{k}": v for k, v in layer.buffers.items()}}
    got, want = run(gpu), on_cpu_reference(run, "cpu")
    for key in want:
        assert_close(got[key], want[key], dtype, key)


@pytest.mark.parametrize("labels", ["index", "one_hot"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_layer_matches_the_cpu_reference(dtype, labels, gpu, mode):
    def run(device):
        layer = layers.SoftmaxCrossEntropy()
        scores = backend.to_device(rand((8, 10), 40, dtype, 4.0), device)
        t = np.random.default_rng(41).integers(0, 10, 8)
        if labels == "one_hot":
            t = np.eye(10, dtype=dtype)[t]
        loss = layer.forward(scores, backend.to_device(t, device))
        return {"loss": loss, "d_scores": layer.backward(), "d_scores_2": layer.backward(2.0)}
    got, want = run(gpu), on_cpu_reference(run, "cpu")
    for key in want:
        assert backend.device_of(got[key]) == gpu, key
        assert_close(got[key], want[key], dtype, key)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_on_the_device(dtype, gpu, mode):
    """Masks come from each device's own random stream, so compare behaviour, not masks."""
    p = 0.3
    layer = layers.Dropout(p, seed=5).to(gpu)
    x_host = rand((64, 50), 50, dtype)
    x = backend.to_device(x_host, gpu)
    out = layer.forward(x, train=True)
    assert backend.device_of(out) == gpu and out.dtype == np.dtype(dtype)
    out_h = backend.to_numpy(out)
    kept = out_h != 0
    assert abs(kept.mean() - (1 - p)) < 0.05  # 3,200 units
    np.testing.assert_allclose(out_h[kept], x_host[kept] / (1 - p), rtol=1e-6 if dtype == "float32" else 1e-12)
    dout_host = rand((64, 50), 51, dtype)
    dx = backend.to_numpy(layer.backward(backend.to_device(dout_host, gpu)))
    np.testing.assert_allclose(dx, np.where(kept, dout_host / (1 - p), 0.0).astype(dtype),
                               rtol=1e-6, atol=1e-7)
    # Same seed, same masks on the device; inference is the identity and stores nothing.
    again = layers.Dropout(p, seed=5).to(gpu).forward(x, train=True)
    np.testing.assert_array_equal(backend.to_numpy(again), out_h)
    ident = layer.forward(x, train=False)
    np.testing.assert_array_equal(backend.to_numpy(ident), x_host)
    dx_after = backend.to_numpy(layer.backward(backend.to_device(dout_host, gpu)))
    np.testing.assert_array_equal(dx_after, dx)  # still the training forward's mask


def test_every_layer_has_a_case():
    covered = {case.split("_")[0] for case in LAYER_CASES} | LAYERS_WITH_OWN_TESTS
    missing = set(layers.__all__) - {"Layer"} - covered
    assert not missing, f"layers without a GPU case: {sorted(missing)}"
