"""On a real GPU only: what is particular to the CUDA kernels (cnn_xp.kernels.cuda) beyond
op equivalence (test_gpu_ops.py): they are chosen and really run, they are deterministic,
every im2col launch geometry is right, and the calls they cannot serve (float16, more than
2^31 elements, a kernel that fails to compile in CuPy's own compiler) run the reference."""
import warnings

import numpy as np
import pytest

from gpu_helpers import DRY_RUN, kernel_mode

from cnn_xp import backend, dispatch, ops
from cnn_xp.kernels import cuda
from cnn_xp.kernels.cuda import conv as cuda_conv
from cnn_xp.kernels.cuda import launch
from cnn_xp.kernels.cuda.cache import ReferenceCache

pytestmark = pytest.mark.skipif(DRY_RUN, reason="the CUDA kernels need a real GPU")

DTYPES = ["float32", "float64"]


@pytest.fixture
def cp():
    launch.reset()
    dispatch.reset()
    yield backend.cupy()
    launch.reset()
    dispatch.reset()


def nhwc(cp, rng, shape, dtype):
    n, c, h, w = shape
    return cp.asarray(rng.standard_normal((n, h, w, c)).astype(dtype)).transpose(0, 3, 1, 2)


def test_the_accelerator_is_chosen_and_its_kernels_run(cp):
    assert cuda.status() == (True, "")
    with kernel_mode("auto"):
        table = dispatch.table("gpu")
    assert {op for op, name in table.items() if name == "cuda"} == set(cuda.OPS)
    x = cp.ones((2, 3, 6, 6), dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out, cache = cuda.conv2d_forward(x, cp.ones((4, 3, 3, 3), "float32"), cp.zeros(4, "float32"))
        cuda.conv2d_backward(cp.ones_like(out), cache)
    assert cache[0] == "cuda" and launch.built() and launch.failure() is None
    info = cuda.details()
    assert info["usable"] and info["built"] and info["cupy"] == cp.__version__


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, oc, k, stride, pad", [
    ((100, 1, 28, 28), 30, 5, 1, 0),    # simple_convnet's conv at batch 100
    ((50, 16, 28, 28), 16, 3, 1, 1),    # a deep_convnet conv at batch 50: 8 im2col rows a thread
    ((64, 32, 14, 14), 64, 3, 2, 1),
])
def test_large_convolutions_match_the_gpu_reference_and_repeat_bit_for_bit(cp, x_shape, oc, k, stride, pad, dtype):
    rng = np.random.default_rng(0)
    x = nhwc(cp, rng, x_shape, dtype)
    W = cp.asarray(rng.standard_normal((oc, x_shape[1], k, k)).astype(dtype) * 0.1)
    b = cp.asarray(rng.standard_normal(oc).astype(dtype))
    out, cache = cuda.conv2d_forward(x, W, b, stride, pad)
    assert cache[0] == "cuda"
    ref, ref_cache = ops.conv2d_forward(x, W, b, stride, pad)
    tol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(out.get(), ref.get(), rtol=tol, atol=tol * 10)
    dout = cp.asarray(rng.standard_normal(out.shape).astype(dtype))
    got = cuda.conv2d_backward(dout, cache)
    for g, r in zip(got, ops.conv2d_backward(dout, ref_cache)):
        scale = max(1.0, float(abs(r).max()))
        np.testing.assert_allclose(g.get(), r.get(), rtol=tol, atol=tol * scale)
    # a gather, no atomics: the same bits again
    again = cuda.conv2d_backward(dout, cuda.conv2d_forward(x, W, b, stride, pad)[1])
    for g, h in zip(got, again):
        np.testing.assert_array_equal(g.get(), h.get())


@pytest.mark.parametrize("per_thread", [1, 2, 3, 8])
def test_every_im2col_launch_geometry_builds_the_reference_columns(cp, monkeypatch, per_thread):
    monkeypatch.setattr(cuda_conv, "rows_per_thread", lambda size: per_thread)
    rng = np.random.default_rng(1)
    for shape, k, stride, pad in [((3, 4, 9, 11), 3, (2, 1), (1, 2)), ((2, 5, 8, 8), 2, 2, 0)]:
        x = nhwc(cp, rng, shape, "float32")
        col, _ = cuda_conv.im2col(x, k, k, stride, pad)
        np.testing.assert_array_equal(col[:, :-1].get(), ops.im2col(x, k, k, stride, pad).get())
        assert (col[:, -1] == 1).all()


def test_float16_and_oversized_calls_run_the_reference(cp, monkeypatch):
    rng = np.random.default_rng(2)
    x16 = cp.asarray(rng.standard_normal((2, 3, 6, 6)).astype("float16"))
    out, cache = cuda.maxpool2d_forward(x16, 2, 2)
    assert isinstance(cache, ReferenceCache)
    np.testing.assert_array_equal(out.get(), ops.maxpool2d_forward(x16, 2, 2)[0].get())
    monkeypatch.setattr(launch, "INDEX_LIMIT", 100)
    x = cp.asarray(rng.standard_normal((2, 3, 6, 6)).astype("float32"))  # 216 elements
    out, cache = cuda.relu_forward(x)
    assert isinstance(cache, ReferenceCache)
    np.testing.assert_array_equal(out.get(), ops.relu_forward(x)[0].get())


def test_out_of_range_labels_are_refused_before_the_kernels(cp):
    """The reference's rule on the GPU: a ValueError naming the label; the kernels, given
    such a label directly, read nothing through it and flag its row with NaN."""
    scores = cp.asarray(np.random.default_rng(3).standard_normal((4, 5)))
    for labels, text in (([7, 0, 4, 1], "label 7 at index 0 is outside 0..4"),
                         ([0, 1, 4, -12], "label -12 at index 3 is outside 0..4")):
        with pytest.raises(ValueError, match=text):
            cuda.softmax_cross_entropy_forward(scores, cp.asarray(labels))
    labels = cp.asarray([7, -1, 4, 0])
    probs, grad, row_loss = cp.empty_like(scores), cp.empty_like(scores), cp.empty(4)
    launch.launch("softmax_xent_step", scores, labels, 5, 4, 0.25, 0, probs, grad, cp.empty_like(labels), row_loss,
                  cp.empty(4, dtype="int32"), cp.empty(1), cp.zeros(2), cp.zeros(1, dtype="int32"), size=4)
    assert np.isnan(row_loss.get()[:2]).all() and np.isfinite(row_loss.get()[2:]).all()


def test_a_kernel_that_fails_in_cupys_compiler_switches_the_kernels_off(cp):
    launch._kernels = launch.build_kernels(cp)
    launch._kernels["relu_backward"] = cp.ElementwiseKernel(
        "T dout, T out", "T dx", "dx = dout * this_is_not_cuda;", "cnn_xp_broken_relu_backward")
    x = cp.asarray(np.random.default_rng(4).standard_normal((3, 4)).astype("float32"))
    out, cache = cuda.relu_forward(x)
    with pytest.warns(RuntimeWarning, match="relu_backward failed to compile"):
        dx = cuda.relu_backward(cp.ones_like(x), cache)
    np.testing.assert_array_equal(dx.get(), ops.relu_backward(cp.ones_like(x), ops.relu_forward(x)[1]).get())
    assert "relu_backward" in launch.failure()
    assert cuda.status()[0] is False
    assert isinstance(cuda.conv2d_forward(x.reshape(1, 1, 3, 4), cp.ones((1, 1, 2, 2), "float32"),
                                          cp.zeros(1, "float32"))[1], ReferenceCache)
