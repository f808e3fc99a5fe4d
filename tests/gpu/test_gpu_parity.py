"""CPU <-> GPU parity of every op and every layer, forward and backward, float32 and float64.

Each case builds its inputs on the host from a fixed seed, runs once on the CPU and once on
the GPU, and compares every output: same shape, same dtype (no silent upcast), the GPU result
still on the GPU, values within tolerance (float64 1e-10, float32 1e-4, relative to the
array's scale). Every case runs twice on the GPU: with the fused CUDA kernels of
``cnn_xp.ops.cuda_kernels`` ("fast") and with them switched off ("portable"), so both GPU
paths are held to the CPU. ``test_every_op_and_layer_has_a_case`` fails when an op or layer
is added without a parity case here.
"""
import numpy as np
import pytest

from cnn_xp import backend, layers, ops
from cnn_xp.ops import cuda_kernels

DTYPES = ["float32", "float64"]
TOL = {"float32": 1e-4, "float64": 1e-10}


def rand(shape, seed, dtype, scale=1.0):
    """Host array of standard normals (times ``scale``) from a fixed seed."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def labels(n, k, seed):
    return np.random.default_rng(seed).integers(0, k, size=n)


def put(array, device):
    return backend.to_device(array, device)


def assert_parity(got: dict, want: dict, dtype: str, device: str):
    """``got`` (computed on ``device``) matches ``want`` (computed on the CPU), key by key."""
    assert got.keys() == want.keys()
    tol = TOL[dtype]
    for key, w in want.items():
        g = got[key]
        if w is None:
            assert g is None, key
            continue
        assert backend.device_of(g) == device, f"{key} left the {device}"
        g, w = backend.to_numpy(g), backend.to_numpy(w)
        assert g.shape == w.shape, f"{key}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"{key}: dtype {g.dtype} != {w.dtype}"
        if np.issubdtype(w.dtype, np.floating):
            assert w.dtype == np.dtype(dtype), f"{key}: {w.dtype}, expected {dtype} (upcast?)"
            assert np.isfinite(g).all(), f"{key}: non-finite values on {device}"
        scale = max(1.0, float(np.abs(w).max())) if w.size else 1.0
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * scale, err_msg=key)


@pytest.fixture(params=["fast", "portable"])
def kernels(request, monkeypatch, gpu):
    """Run the GPU side with the fused kernels on ("fast") or off ("portable"); afterwards a
    "fast" run must not have fallen back silently (a kernel that failed to compile)."""
    if request.param == "portable":
        monkeypatch.setenv(cuda_kernels.ENV_DISABLE, "1")
    else:
        monkeypatch.delenv(cuda_kernels.ENV_DISABLE, raising=False)
    yield request.param
    if request.param == "fast" and gpu == "gpu":
        status = cuda_kernels.status()
        assert status["enabled"], f"fused kernels switched off: {status['reason']}"


# -- ops --------------------------------------------------------------------------------------

X_SHAPE = (2, 3, 7, 6)


def _im2col(device, dtype):
    x = put(rand(X_SHAPE, 1, dtype), device)
    return {"col": ops.im2col(x, 3, 2, stride=(2, 1), pad=(1, 0)),
            "col_3x3": ops.im2col(x, 3, 3, stride=1, pad=1)}


def _col2im(device, dtype):
    oh, ow = ops.output_shape(X_SHAPE, 3, 2, (2, 1), (1, 0))
    col = put(rand((X_SHAPE[0] * oh * ow, X_SHAPE[1] * 3 * 2), 2, dtype), device)
    return {"image": ops.col2im(col, X_SHAPE, 3, 2, stride=(2, 1), pad=(1, 0)),
            "image_t": ops.col2im_t(col.T.copy(), X_SHAPE, 3, 2, stride=(2, 1), pad=(1, 0))}


def _windows(device, dtype):
    x = put(rand(X_SHAPE, 3, dtype), device)
    return {"windows": ops.sliding_windows(x, 3, 3, stride=2, pad=1, pad_value=-2.0),
            "padded": ops.pad_image(x, (1, 2), value=-1.0),
            "unpadded": ops.pad_image(x, 0)}


def _fold(device, dtype):
    out = {}
    for name, (k, s, p, shape) in {"overlap": (3, 2, 1, (2, 3, 7, 6)),
                                   "tiled": (2, 2, 0, (2, 3, 8, 6)),
                                   "tiled_uneven": (2, 2, 0, (2, 3, 7, 7))}.items():
        oh, ow = ops.output_shape(shape, k, k, s, p)
        windows = put(rand((shape[0], shape[1], oh, ow, k, k), 4, dtype), device)
        out[name] = ops.fold_windows(windows, shape, stride=s, pad=p)
    return out


CONV_CONFIGS = {  # (C_out, kernel, stride, pad)
    "k3s1p0": (4, (3, 3), 1, 0),
    "k3s2p1": (5, (3, 3), 2, 1),
    "k3x2s21p10": (4, (3, 2), (2, 1), (1, 0)),
    "k1": (2, (1, 1), 1, 0),
}


def _conv(config):
    oc, (kh, kw), stride, pad = CONV_CONFIGS[config]

    def case(device, dtype):
        x = put(rand(X_SHAPE, 5, dtype), device)
        W = put(rand((oc, X_SHAPE[1], kh, kw), 6, dtype, 0.3), device)
        b = put(rand((oc,), 7, dtype), device)
        out, cache = ops.conv2d_forward(x, W, b, stride, pad)
        dout = put(rand(tuple(out.shape), 8, dtype), device)
        dx, dW, db = ops.conv2d_backward(dout, cache, need_dx=True)
        no_dx, dW2, db2 = ops.conv2d_backward(dout, cache, need_dx=False)
        return {"out": out, "dx": dx, "dW": dW, "db": db, "no_dx": no_dx, "dW2": dW2, "db2": db2}
    return case


POOL_CONFIGS = {  # (kernel, stride, pad, input shape)
    "k2": (2, None, 0, (2, 3, 8, 6)),
    "k2_uneven": (2, None, 0, (2, 3, 7, 7)),
    "k3s2p1": (3, 2, 1, (2, 3, 7, 6)),
    "k3s1": (3, 1, 0, (2, 3, 6, 6)),
}


def _pool(kind, config):
    k, stride, pad, shape = POOL_CONFIGS[config]
    forward = ops.maxpool2d_forward if kind == "max" else ops.avgpool2d_forward
    backward = ops.maxpool2d_backward if kind == "max" else ops.avgpool2d_backward

    def case(device, dtype):
        x = put(rand(shape, 9, dtype), device)
        out, cache = forward(x, k, k, stride, pad)
        dout = put(rand(tuple(out.shape), 10, dtype), device)
        return {"out": out, "dx": backward(dout, cache)}
    return case


def _softmax(device, dtype):
    scores = put(rand((6, 10), 11, dtype, scale=30.0), device)  # large: tests stability
    return {"softmax": ops.softmax(scores), "log_softmax": ops.log_softmax(scores),
            "softmax_axis0": ops.softmax(scores, axis=0)}


def _cross_entropy(device, dtype):
    scores = put(rand((6, 10), 12, dtype, scale=3.0), device)
    host_t = labels(6, 10, 13)
    t = put(host_t, device)
    one_hot = put(np.eye(10, dtype=dtype)[host_t], device)
    return {"loss_index": ops.cross_entropy(scores, t),
            "loss_one_hot": ops.cross_entropy(scores, one_hot),
            "grad_index": ops.cross_entropy_backward(scores, t),
            "grad_one_hot_half": ops.cross_entropy_backward(scores, one_hot, 0.5),
            **dict(zip(("fused_loss", "fused_probs"), ops.softmax_cross_entropy(scores, t)))}


OP_CASES = {  # case id -> (function(device, dtype) -> outputs, the ops it exercises)
    "im2col": (_im2col, {"im2col"}),
    "col2im": (_col2im, {"col2im", "col2im_t"}),
    "windows": (_windows, {"sliding_windows", "pad_image"}),
    "fold": (_fold, {"fold_windows"}),
    **{f"conv_{c}": (_conv(c), {"conv2d_forward", "conv2d_backward"}) for c in CONV_CONFIGS},
    **{f"maxpool_{c}": (_pool("max", c), {"maxpool2d_forward", "maxpool2d_backward"})
       for c in POOL_CONFIGS},
    **{f"avgpool_{c}": (_pool("avg", c), {"avgpool2d_forward", "avgpool2d_backward"})
       for c in POOL_CONFIGS},
    "softmax": (_softmax, {"softmax", "log_softmax"}),
    "cross_entropy": (_cross_entropy, {"cross_entropy", "cross_entropy_backward",
                                       "softmax_cross_entropy"}),
}
OP_HELPERS = {"pair", "output_shape"}  # shape arithmetic on Python ints: no arrays, no device


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_parity(case, dtype, gpu, kernels):
    fn, _ = OP_CASES[case]
    assert_parity(fn(gpu, dtype), fn("cpu", dtype), dtype, gpu)


# -- layers -----------------------------------------------------------------------------------

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
}
# Covered by their own tests below: Dropout (device-specific masks), SoftmaxCrossEntropy (two inputs).
LAYERS_WITH_OWN_TESTS = {"Dropout", "SoftmaxCrossEntropy"}


def run_layer(factory, shape, scale, device, dtype, train=True):
    layer = factory(dtype).to(device)
    x = put(rand(shape, 20, dtype, scale), device)
    out = layer.forward(x, train=train)
    dout = put(rand(tuple(out.shape), 21, dtype), device)
    dx = layer.backward(dout)
    result = {"out": out, "dx": dx}
    result.update({f"grad/{k}": v for k, v in layer.grads.items()})
    result.update({f"param/{k}": v for k, v in layer.params.items()})
    result.update({f"buffer/{k}": v for k, v in layer.buffers.items()})
    return result


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_parity(case, dtype, gpu, kernels):
    factory, shape, scale = LAYER_CASES[case]
    got = run_layer(factory, shape, scale, gpu, dtype)
    want = run_layer(factory, shape, scale, "cpu", dtype)
    if case == "Conv2D_first":
        assert want["dx"] is None
    assert_parity(got, want, dtype, gpu)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_inference_parity(dtype, gpu):
    """Running statistics from two training batches, then an inference forward/backward."""
    def run(device):
        layer = layers.BatchNorm(3, momentum=0.8, dtype=dtype).to(device)
        for seed in (30, 31):
            layer.forward(put(rand(X_SHAPE, seed, dtype, 2.0) + 1.0, device), train=True)
        out = layer.forward(put(rand(X_SHAPE, 32, dtype), device), train=False)
        dx = layer.backward(put(rand(tuple(out.shape), 33, dtype), device))
        return {"out": out, "dx": dx, **{f"buffer/{k}": v for k, v in layer.buffers.items()}}
    assert_parity(run(gpu), run("cpu"), dtype, gpu)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_layer_parity(dtype, gpu):
    def run(device):
        layer = layers.SoftmaxCrossEntropy()
        scores = put(rand((8, 10), 40, dtype, 4.0), device)
        loss = layer.forward(scores, put(labels(8, 10, 41), device))
        return {"loss": loss, "d_scores": layer.backward(), "d_scores_2": layer.backward(2.0)}
    assert_parity(run(gpu), run("cpu"), dtype, gpu)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_on_gpu(dtype, gpu):
    """Masks come from each device's own RNG, so compare behaviour, not masks."""
    p = 0.3
    layer = layers.Dropout(p, seed=5).to(gpu)
    x_host = rand((64, 50), 50, dtype)
    x = put(x_host, gpu)
    out = layer.forward(x, train=True)
    assert backend.device_of(out) == gpu and out.dtype == np.dtype(dtype)
    out_h = backend.to_numpy(out)
    kept = out_h != 0
    assert abs(kept.mean() - (1 - p)) < 0.05  # 3,200 units
    np.testing.assert_allclose(out_h[kept], x_host[kept] / (1 - p), rtol=TOL[dtype] * 10)
    dout_host = rand((64, 50), 51, dtype)
    dx = backend.to_numpy(layer.backward(put(dout_host, gpu)))
    np.testing.assert_allclose(dx, np.where(kept, dout_host / (1 - p), 0.0).astype(dtype),
                               rtol=TOL[dtype] * 10, atol=TOL[dtype])
    # Same seed, same masks on the GPU; inference is the identity.
    again = layers.Dropout(p, seed=5).to(gpu).forward(x, train=True)
    np.testing.assert_array_equal(backend.to_numpy(again), out_h)
    ident = layer.forward(x, train=False)
    np.testing.assert_array_equal(backend.to_numpy(ident), x_host)
    np.testing.assert_array_equal(backend.to_numpy(layer.backward(put(dout_host, gpu))), dout_host)


def test_every_op_and_layer_has_a_case():
    covered_ops = set().union(*(names for _, names in OP_CASES.values()))
    missing_ops = set(ops.__all__) - OP_HELPERS - covered_ops
    assert not missing_ops, f"ops without a GPU parity case: {sorted(missing_ops)}"
    covered_layers = {case.split("_")[0] for case in LAYER_CASES} | LAYERS_WITH_OWN_TESTS
    missing_layers = set(layers.__all__) - {"Layer"} - covered_layers
    assert not missing_layers, f"layers without a GPU parity case: {sorted(missing_layers)}"
