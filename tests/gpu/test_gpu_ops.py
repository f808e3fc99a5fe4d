"""Every op of the seam on the GPU, in both kernel modes, against the CPU reference.

The cases are op_cases.CASES (random shapes, strides, pads, both dtypes, NCHW / NHWC /
CNHW / strided memory orders, ties and NaN in max pooling, every label form of the loss),
the same cases the host run of the CUDA kernels uses (tests/test_kernels_cuda.py). The GPU
side runs ``dispatch.implementation(op, device)`` in the mode under test: the reference
ops on CuPy, or the accelerator; every output keeps its dtype and stays on the GPU. In
``auto`` on a real GPU, the forward caches show the CUDA kernels ran. The reference's
other functions (im2col, col2im, softmax, ...) get a parity case too, and
``test_every_reference_function_has_a_case`` fails when one is added without.
"""
import numpy as np
import pytest

from gpu_helpers import assert_close, host

import op_cases
from cnn_xp import backend, dispatch, ops

ALL_CASES = [(op, case) for op in dispatch.OPS for case in op_cases.CASES[op]]


@pytest.mark.parametrize("op, case", ALL_CASES, ids=[op_cases.case_id(o, c) for o, c in ALL_CASES])
def test_op_matches_the_cpu_reference(op, case, gpu, mode):
    impl = dispatch.implementation(op, gpu)
    if mode == "reference":
        assert impl is ops
    got, caches = op_cases.run(op, impl, lambda a: backend.to_device(a, gpu), case)
    want, _ = op_cases.run(op, ops, np.asarray, case)
    for key, value in got.items():
        if hasattr(value, "shape"):
            assert backend.device_of(value) == gpu, f"{key} left the {gpu}"
    op_cases.compare(got, want, case["dtype"], host, where=f"{op} ({mode})")
    if gpu == "gpu" and mode == "auto" and impl.__name__ == "cnn_xp.kernels.cuda":
        served = case.get("labels") != "one_hot" and case.get("p") != 0.0
        for cache in caches:
            assert (isinstance(cache, tuple) and cache[0] == "cuda") == served, (op, type(cache))


# -- the reference's other functions ------------------------------------------------------

X_SHAPE = (2, 3, 7, 6)


def _rand(shape, seed, dtype, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _im2col(device, dtype):
    x = backend.to_device(_rand(X_SHAPE, 1, dtype), device)
    return {"col": ops.im2col(x, 3, 2, stride=(2, 1), pad=(1, 0)),
            "col_3x3": ops.im2col(x, 3, 3, stride=1, pad=1),
            "col_neg_inf": ops.im2col(x, 2, 2, 2, 1, pad_value=float("-inf"))}


def _col2im(device, dtype):
    oh, ow = ops.output_shape(X_SHAPE, 3, 2, (2, 1), (1, 0))
    col = backend.to_device(_rand((X_SHAPE[0] * oh * ow, X_SHAPE[1] * 3 * 2), 2, dtype), device)
    return {"image": ops.col2im(col, X_SHAPE, 3, 2, stride=(2, 1), pad=(1, 0))}


def _pad(device, dtype):
    x = backend.to_device(_rand(X_SHAPE, 3, dtype), device)
    return {"padded": ops.pad_image(x, (1, 2), value=-1.0), "unpadded": ops.pad_image(x, 0)}


def _softmax(device, dtype):
    scores = backend.to_device(_rand((6, 10), 11, dtype, scale=30.0), device)  # large: stability
    return {"softmax": ops.softmax(scores), "log_softmax": ops.log_softmax(scores),
            "softmax_axis0": ops.softmax(scores, axis=0)}


def _cross_entropy(device, dtype):
    scores = backend.to_device(_rand((6, 10), 12, dtype, scale=3.0), device)
    labels = np.random.default_rng(13).integers(0, 10, 6)
    one_hot = backend.to_device(np.eye(10, dtype=dtype)[labels], device)
    labels = backend.to_device(labels, device)
    return {"loss_index": ops.cross_entropy(scores, labels),
            "loss_one_hot": ops.cross_entropy(scores, one_hot),
            "grad_index": ops.cross_entropy_backward(scores, labels),
            "grad_one_hot_half": ops.cross_entropy_backward(scores, one_hot, 0.5)}


HELPER_CASES = {  # case -> (function(device, dtype) -> outputs, the reference functions it runs)
    "im2col": (_im2col, {"im2col"}),
    "col2im": (_col2im, {"col2im"}),
    "pad": (_pad, {"pad_image"}),
    "softmax": (_softmax, {"softmax", "log_softmax"}),
    "cross_entropy": (_cross_entropy, {"cross_entropy", "cross_entropy_backward"}),
}
SHAPE_ARITHMETIC = {"pair", "output_shape"}  # Python ints: no arrays, no device


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", sorted(HELPER_CASES))
def test_reference_function_matches_the_cpu(case, dtype, gpu):
    fn, _ = HELPER_CASES[case]
    got, want = fn(gpu, dtype), fn("cpu", dtype)
    assert got.keys() == want.keys()
    for key in want:
        assert backend.device_of(got[key]) == gpu, key
        assert_close(got[key], want[key], dtype, f"{case}/{key}")


def test_every_reference_function_has_a_case():
    seam = {name for names in dispatch.OPS.values() for name in names}
    covered = set().union(*(names for _, names in HELPER_CASES.values()))
    missing = set(ops.__all__) - seam - covered - SHAPE_ARITHMETIC
    assert not missing, f"reference functions without a GPU parity case: {sorted(missing)}"
    assert set(dispatch.OPS) == set(op_cases.CASES), "an op without equivalence cases"
