"""Every accelerator op against the reference, on the same random cases.

For the CPU accelerator (``cnn_xp.kernels.cpu``, where the extension is built) and each op it
implements, the same inputs go through the accelerator's functions and the reference's
(``cnn_xp.ops``): random shapes, strides, pads, both dtypes and every memory order of the
inputs. Results
agree to float rounding; max pooling's argmax routing (ties, NaN) agrees exactly. And the
caches keep the reference's semantics: overwriting a forward's input before its backward
changes nothing (op_cases' ``mutate``, on every case of every cached op).

The ``check_*`` functions take the device and the accelerator; tests/gpu/test_gpu_equivalence.py
runs them with the GPU and ``cnn_xp.kernels.cuda``.
"""
import numpy as np
import op_cases
import pytest

from cnn_xp import backend, dispatch, ops

TOL = {"float64": dict(rtol=1e-10, atol=1e-10), "float32": dict(rtol=2e-4, atol=2e-5)}


def accelerator_or_skip(device, op):
    """The accelerator of ``device`` that implements ``op``; skips the test where there is none."""
    module, reason = dispatch.accelerator(device)
    if module is None:
        pytest.skip(f"no {device} accelerator here: {reason}")
    if op not in module.OPS:
        pytest.skip(f"{dispatch.implementation_name(module)} does not implement {op}")
    return module


def in_memory_order(a, order):
    """``a`` (N, C, H, W) as an NCHW-shaped view of NCHW, NHWC or CNHW memory."""
    if order == "nhwc":
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if order == "cnhw":
        return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    return np.ascontiguousarray(a)


def on(device, *arrays):
    if device == "cpu":
        return arrays
    return tuple(backend.to_device(a, device) for a in arrays)


def host(a):
    return None if a is None else backend.to_numpy(a)


def close(got, want, dtype):
    np.testing.assert_allclose(host(got), host(want), **TOL[dtype])


def conv_case(seed):
    """A random conv geometry: channel counts around the vector widths, kernels 1-5,
    strides 1-3, pads 0..kernel-1, H != W."""
    rng = np.random.default_rng(seed)
    kh, kw = rng.integers(1, 6, 2)
    stride = tuple(int(s) for s in rng.integers(1, 4, 2))
    pad = (int(rng.integers(0, kh)), int(rng.integers(0, kw)))
    c = int(rng.choice([1, 3, 6, 8, 16, 17, 32]))
    oc = int(rng.choice([1, 4, 6, 16, 20, 33]))
    h, w = int(rng.integers(kh, kh + 12)), int(rng.integers(kw, kw + 12))
    n = int(rng.integers(1, 5))
    return rng, n, c, h, w, oc, (int(kh), int(kw)), stride, pad


CONV_SEEDS = range(24)


def check_conv2d(device, accel, dtype, seed):
    rng, n, c, h, w, oc, (kh, kw), stride, pad = conv_case(seed)
    order_x, order_d = ["nchw", "nhwc", "cnhw"][seed % 3], ["nchw", "nhwc", "cnhw"][(seed // 3) % 3]
    x = in_memory_order(rng.standard_normal((n, c, h, w)).astype(dtype), order_x)
    W = rng.standard_normal((oc, c, kh, kw)).astype(dtype)
    b = rng.standard_normal(oc).astype(dtype)
    x, W, b = on(device, x, W, b)
    out, cache = accel.conv2d_forward(x, W, b, stride, pad)
    ref, ref_cache = ops.conv2d_forward(x, W, b, stride, pad)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    close(out, ref, dtype)
    infer, none = accel.conv2d_forward(x, W, b, stride, pad, train=False)
    assert none is None
    close(infer, ref, dtype)
    dout = in_memory_order(rng.standard_normal(ref.shape).astype(dtype), order_d)
    (dout,) = on(device, dout)
    need_dx = seed % 5 != 0
    got = accel.conv2d_backward(dout, cache, need_dx)
    want = ops.conv2d_backward(dout, ref_cache, need_dx)
    for g, r in zip(got, want):
        if r is None:
            assert g is None
        else:
            assert g.shape == r.shape and g.dtype == r.dtype
            close(g, r, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", CONV_SEEDS)
def test_conv2d(dtype, seed):
    check_conv2d("cpu", accelerator_or_skip("cpu", "conv2d"), dtype, seed)


def pool_case(seed):
    rng = np.random.default_rng(1000 + seed)
    kh, kw = (int(k) for k in rng.integers(1, 5, 2))
    stride = tuple(int(s) for s in rng.integers(1, 4, 2))
    pad = (int(rng.integers(0, (kh + 1) // 2)), int(rng.integers(0, (kw + 1) // 2)))
    c = int(rng.choice([1, 3, 6, 16, 17, 30]))
    return rng, int(rng.integers(1, 4)), c, int(rng.integers(kh, kh + 9)), int(rng.integers(kw, kw + 9)), (kh, kw), stride, pad


def check_maxpool2d(device, accel, dtype, seed):
    """Integer-valued inputs (ties in most windows) and a few NaNs: the gradient goes to
    the same (first) maximum in both."""
    rng, n, c, h, w, (kh, kw), stride, pad = pool_case(seed)
    x = rng.integers(-2, 3, (n, c, h, w)).astype(dtype)
    if seed % 4 == 1:
        x.flat[rng.integers(0, x.size, 3)] = np.nan
    x = in_memory_order(x, ["nchw", "nhwc", "cnhw"][seed % 3])
    (x,) = on(device, x)
    out, cache = accel.maxpool2d_forward(x, kh, kw, stride, pad)
    ref, ref_cache = ops.maxpool2d_forward(x, kh, kw, stride, pad)
    np.testing.assert_array_equal(host(out), host(ref))
    infer, none = accel.maxpool2d_forward(x, kh, kw, stride, pad, train=False)
    assert none is None
    np.testing.assert_array_equal(host(infer), host(ref))
    dout = in_memory_order(rng.standard_normal(ref.shape).astype(dtype), ["nchw", "nhwc"][seed % 2])
    (dout,) = on(device, dout)
    close(accel.maxpool2d_backward(dout, cache), ops.maxpool2d_backward(dout, ref_cache), dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", range(16))
def test_maxpool2d(dtype, seed):
    check_maxpool2d("cpu", accelerator_or_skip("cpu", "maxpool2d"), dtype, seed)


def check_relu(device, accel, dtype):
    rng = np.random.default_rng(3)
    x = in_memory_order(rng.standard_normal((3, 5, 7, 6)).astype(dtype), "nhwc")
    dout = rng.standard_normal((3, 5, 7, 6)).astype(dtype)
    x, dout = on(device, x, dout)
    out, cache = accel.relu_forward(x)
    ref, ref_cache = ops.relu_forward(x)
    np.testing.assert_array_equal(host(out), host(ref))
    np.testing.assert_array_equal(host(accel.relu_backward(dout, cache)), host(ops.relu_backward(dout, ref_cache)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_relu(dtype):
    check_relu("cpu", accelerator_or_skip("cpu", "relu"), dtype)


def check_dropout(device, accel, dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 40)).astype(dtype)
    draws = rng.random((6, 40)).astype(dtype)
    dout = rng.standard_normal((6, 40)).astype(dtype)
    x, draws, dout = on(device, x, draws, dout)
    out, cache = accel.dropout_forward(x, draws, 0.3)
    ref, ref_cache = ops.dropout_forward(x, draws, 0.3)
    close(out, ref, dtype)
    close(accel.dropout_backward(dout, cache), ops.dropout_backward(dout, ref_cache), dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dropout(dtype):
    check_dropout("cpu", accelerator_or_skip("cpu", "dropout"), dtype)


def check_softmax_cross_entropy(device, accel, dtype, one_hot):
    rng = np.random.default_rng(5)
    scores = (rng.standard_normal((37, 10)) * 4).astype(dtype)
    labels = rng.integers(0, 10, 37)
    if one_hot:
        labels = np.eye(10, dtype=dtype)[labels]
    scores, labels = on(device, scores, labels)
    loss, cache = accel.softmax_cross_entropy_forward(scores, labels)
    ref, ref_cache = ops.softmax_cross_entropy_forward(scores, labels)
    close(loss, ref, dtype)
    close(accel.softmax_cross_entropy_backward(cache, 0.7), ops.softmax_cross_entropy_backward(ref_cache, 0.7), dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("one_hot", [False, True], ids=["indices", "one_hot"])
def test_softmax_cross_entropy(dtype, one_hot):
    check_softmax_cross_entropy("cpu", accelerator_or_skip("cpu", "softmax_cross_entropy"), dtype, one_hot)


UPDATES = {
    "sgd": (lambda p, g, s: (p, g, 0.1), 0),
    "momentum": (lambda p, g, s: (p, g, s[0], 0.1, 0.9), 1),
    "nesterov": (lambda p, g, s: (p, g, s[0], 0.1, 0.9), 1),
    "adagrad": (lambda p, g, s: (p, g, s[0], 0.01, 1e-7), 1),
    "rmsprop": (lambda p, g, s: (p, g, s[0], 0.01, 0.99, 1e-7), 1),
    "adam": (lambda p, g, s: (p, g, s[0], s[1], 1e-3 / (1 - 0.9 ** 3), 0.9, 0.999, 1 / np.sqrt(1 - 0.999 ** 3), 1e-8), 2),
}


def check_optimizer_updates(device, accel, dtype, op):
    arguments, slots = UPDATES[op]
    rng = np.random.default_rng(6)
    start = [rng.standard_normal((7, 13)).astype(dtype) for _ in range(2)]
    states = [np.abs(rng.standard_normal((7, 13))).astype(dtype) for _ in range(slots)]
    results = []
    for module in (accel, ops):
        p, g = on(device, start[0].copy(), start[1].copy())
        s = list(on(device, *[a.copy() for a in states]))
        for _ in range(3):
            getattr(module, f"{op}_update")(*arguments(p, g, s))
        results.append([host(p)] + [host(a) for a in s])
    for got, want in zip(*results):
        close(got, want, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("op", sorted(UPDATES))
def test_optimizer_updates(dtype, op):
    check_optimizer_updates("cpu", accelerator_or_skip("cpu", op), dtype, op)


# -- caches: a backward never reads the caller's input ----------------------------------------

MUTATE_CASES = [(op, case) for op in op_cases.CACHED_OPS for case in op_cases.CASES[op]]


def check_input_change(device, accel, op, case):
    """The reference's caches hold their own copy of what the backward needs (im2col's
    columns, argmax, the softmax and the labels), so overwriting the forward's inputs in
    place (x, draws, scores, labels: op_cases' ``mutate``) before the backward changes
    nothing; the accelerator ``accel`` (None: none here) must keep those semantics, even where
    its kernels read the input in place (an unpadded conv on NHWC memory). Compared with the
    reference run on untouched inputs, for the accelerator and for the reference itself."""
    modules = [ops] + ([accel] if accel is not None and op in accel.OPS else [])
    put = np.asarray if device == "cpu" else (lambda a: backend.to_device(a, device))
    want, _ = op_cases.run(op, ops, put, case)
    for module in modules:
        got, _ = op_cases.run(op, module, put, case, mutate=True)
        op_cases.compare(got, want, case["dtype"], backend.to_numpy,
                         where=f"{op} ({dispatch.implementation_name(module)}, input changed after the forward)")


@pytest.mark.parametrize("op, case", MUTATE_CASES, ids=[op_cases.case_id(o, c) for o, c in MUTATE_CASES])
def test_changing_the_input_after_the_forward_changes_no_backward(op, case):
    check_input_change("cpu", dispatch.accelerator("cpu")[0], op, case)
