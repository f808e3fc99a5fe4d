"""The CUDA accelerator (cnn_xp.kernels.cuda) as a module, without a GPU.

- its contract with the seam: NAME, OPS, every function of its ops with exactly the
  reference's signature, status() and details() cheap and honest on a machine without a
  GPU, and dispatch choosing it only where it is usable and the mode is ``auto``;
- the whole module run on the host: ``launch.cupy`` and ``launch.on_gpu`` point at
  ``cuda_host.HostCuPy``, whose ElementwiseKernel runs each kernel body compiled as host
  C++ with CuPy's calling rules, and whose other names are NumPy's. Every op then runs the
  equivalence cases of op_cases.py (shapes, strides, pads, dtypes, memory orders) against
  the reference (cnn_xp.ops), and its caches show that the kernels ran. This checks the
  Python half of every kernel call -- argument order, strides, contiguity, dtypes, the
  output and cache layouts -- which the source tests (test_kernels_cuda_source.py) do not;
- the calls the kernels cannot serve (float16, mixed dtypes, more than 2^31 elements,
  one-hot labels, an array dout, a kernel that fails to compile, before or after the
  forward) run the reference, with a cache that says so;
- the reference's semantics beyond the values: a backward reads no input changed after its
  forward (on the kernels and on their reference paths), and bad labels are the
  reference's ValueError before any launch.

On a real GPU the same cases run through tests/gpu/test_gpu_ops.py.
"""
import inspect
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cuda_host  # noqa: E402
import op_cases  # noqa: E402

from cnn_xp import backend, dispatch, ops  # noqa: E402
from cnn_xp.kernels import cuda  # noqa: E402
from cnn_xp.kernels.cuda import launch  # noqa: E402
from cnn_xp.kernels.cuda.cache import ReferenceCache  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# -- the contract ---------------------------------------------------------------------------

def test_name_and_ops():
    assert cuda.NAME == "cuda"
    assert set(cuda.OPS) <= set(dispatch.OPS)
    assert {"conv2d", "maxpool2d", "relu", "dropout", "softmax_cross_entropy", "sgd", "momentum",
            "nesterov", "adagrad", "rmsprop", "adam"} <= set(cuda.OPS)


@pytest.mark.parametrize("op", sorted(cuda.OPS))
def test_every_function_has_the_reference_signature(op):
    for name in dispatch.OPS[op]:
        mine, reference = getattr(cuda, name), getattr(ops, name)
        assert inspect.signature(mine) == inspect.signature(reference), name
        assert mine.__doc__, f"{name} has no docstring"


def test_status_and_details_without_a_gpu_build_nothing():
    launch.reset()
    usable, reason = cuda.status()
    assert (usable, reason) == backend.gpu_status()
    info = cuda.details()
    assert info["name"] == "cuda" and info["usable"] is usable and info["reason"] == reason
    assert info["ops"] == list(cuda.OPS) and info["dtypes"] == ["float32", "float64"]
    assert info["index_limit"] == 2**31 - 1 and info["failure"] is None
    assert set(info["kernels"]) == set(cuda_host.KERNEL_SPECS)
    assert not launch.built()


def test_importing_the_accelerator_imports_no_cupy():
    code = ("import sys, cnn_xp.kernels.cuda as c; "
            "assert 'cupy' not in sys.modules, 'cupy imported'; print(c.NAME)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "cuda", proc.stderr


def test_dispatch_chooses_cuda_only_where_usable_and_in_auto_mode(monkeypatch):
    dispatch.reset()
    try:
        if not backend.gpu_available():
            assert dispatch.accelerator("gpu")[0] is None
            assert set(dispatch.table("gpu").values()) == {"reference"}
        monkeypatch.setattr(cuda, "status", lambda: (True, ""))
        dispatch.reset()
        dispatch.set_mode("auto")
        table = dispatch.table("gpu")
        assert {op for op, name in table.items() if name == "cuda"} == set(cuda.OPS)
        assert {op for op, name in table.items() if name == "reference"} == set(dispatch.OPS) - set(cuda.OPS)
        assert dispatch.implementation("conv2d", "gpu") is cuda
        dispatch.set_mode("reference")
        assert set(dispatch.table("gpu").values()) == {"reference"}
        assert dispatch.implementation("conv2d", "gpu") is ops
    finally:
        dispatch.set_mode(None)
        dispatch.reset()


# -- the module on the host ----------------------------------------------------------------

@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    return cuda_host.host_library(tmp_path_factory.mktemp("cuda_module_host"))


@pytest.fixture
def host(host_lib, monkeypatch):
    """cnn_xp.kernels.cuda running on host-compiled kernels over NumPy arrays."""
    cp = cuda_host.HostCuPy(host_lib)
    launch.reset()
    monkeypatch.setattr(launch, "cupy", lambda: cp)
    monkeypatch.setattr(launch, "on_gpu", lambda a: isinstance(a, np.ndarray))
    yield cp
    launch.reset()


def _np(a):
    return np.asarray(a)


ALL_CASES = [(op, case) for op in cuda.OPS for case in op_cases.CASES[op]]


@pytest.mark.parametrize("op, case", ALL_CASES, ids=[op_cases.case_id(o, c) for o, c in ALL_CASES])
def test_every_op_matches_the_reference(host, op, case):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no compile fallback, no NumPy warning
        got, caches = op_cases.run(op, cuda, np.asarray, case)
    want, _ = op_cases.run(op, ops, np.asarray, case)
    op_cases.compare(got, want, case["dtype"], _np, where=op)
    reference_by_design = (case.get("labels") == "one_hot" or case.get("p") == 0.0)
    for cache in caches:
        if reference_by_design:
            assert cache is None or isinstance(cache, ReferenceCache)
        else:
            assert isinstance(cache, tuple) and cache[0] == "cuda", f"{op}: the kernels did not run"
    if not reference_by_design:
        assert host.launches(), f"{op}: no kernel launched"
    assert launch.failure() is None


MUTATE_CASES = [(op, case) for op in op_cases.CACHED_OPS if op in cuda.OPS for case in op_cases.CASES[op]]


@pytest.mark.parametrize("op, case", MUTATE_CASES, ids=[op_cases.case_id(o, c) for o, c in MUTATE_CASES])
def test_changing_the_input_after_the_forward_changes_no_backward(host, op, case):
    """The reference's cache semantics (see test_equivalence.py): the forward's inputs
    overwritten in place before the backward (op_cases' ``mutate``) change nothing."""
    got, _ = op_cases.run(op, cuda, np.asarray, case, mutate=True)
    want, _ = op_cases.run(op, ops, np.asarray, case)
    op_cases.compare(got, want, case["dtype"], _np, where=f"{op} (input changed after the forward)")


def test_the_backwards_reference_paths_read_no_input_changed_after_the_forward(host):
    """Where a backward hands over to the reference (a dout of another dtype or of an array
    type, a kernel that failed since the forward), it works from the forward's own
    col / argmax / softmax and labels, never from the caller's input."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    out, cache = cuda.conv2d_forward(x, W, b, 1, 1)
    _, ref_cache = ops.conv2d_forward(x, W, b, 1, 1)
    dout64 = rng.standard_normal(out.shape)  # float64: the reference's backward
    want = ops.conv2d_backward(dout64, ref_cache)
    x[...] = np.nan
    for got, w in zip(cuda.conv2d_backward(dout64, cache), want):
        np.testing.assert_array_equal(got, w)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    for kind in ("max", "avg"):
        forward, backward = getattr(cuda, f"{kind}pool2d_forward"), getattr(cuda, f"{kind}pool2d_backward")
        out, cache = forward(x, 3, 3, 2, 1)
        ref_fwd, ref_bwd = getattr(ops, f"{kind}pool2d_forward"), getattr(ops, f"{kind}pool2d_backward")
        dout = rng.standard_normal(out.shape).astype(np.float32)
        want = ref_bwd(dout, ref_fwd(x, 3, 3, 2, 1)[1])
        saved = x.copy()
        x[...] = np.nan
        host.fail = frozenset({"maxpool_backward", "fold_windows"})  # the kernels fail from now on
        for kernel in host.kernels.values():
            kernel.fail = host.fail
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            np.testing.assert_allclose(backward(dout, cache), want, rtol=1e-6, err_msg=kind)
        host.fail = frozenset()
        for kernel in host.kernels.values():
            kernel.fail = host.fail
        launch.reset()
        x = saved
    scores, labels = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    _, cache = cuda.softmax_cross_entropy_forward(scores, labels)
    assert cache[0] == "cuda"
    want = ops.softmax_cross_entropy_backward(ops.softmax_cross_entropy_forward(scores, labels)[1], np.array(0.5))
    scores[...], labels[...] = np.nan, 0
    np.testing.assert_allclose(cuda.softmax_cross_entropy_backward(cache, np.array(0.5)), want, rtol=1e-12)


BAD_LABELS = [(np.array([0, 1, 2, -1, 3]), "label -1 at index 3 is outside 0..9"),
              (np.array([0, 1, 12, 9, 3], np.int32), "label 12 at index 2 is outside 0..9"),
              (np.array([0, 1, 2, 3, 255], np.uint8), "label 255 at index 4 is outside 0..9"),
              (np.array([0.0, 1, 2, 3, 4], np.float32), "must be of an integer dtype, got float32")]


@pytest.mark.parametrize("labels, message", BAD_LABELS, ids=["minus-one", "int32-large", "uint8", "float"])
def test_bad_labels_are_the_references_value_error_before_any_launch(host, labels, message):
    scores = np.random.default_rng(9).standard_normal((5, 10)).astype(np.float32)
    for impl in (cuda, ops):
        with pytest.raises(ValueError, match=message):
            impl.softmax_cross_entropy_forward(scores, labels)
    with pytest.raises(ValueError, match=r"the batch is empty \(0 samples\)"):
        cuda.softmax_cross_entropy_forward(scores[:0], labels[:0].astype(np.int64))
    assert not host.launches()  # refused before the kernels ran


def test_conv_outputs_are_views_of_nhwc_memory_and_backward_reads_them_for_free(host):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    W = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    out, cache = cuda.conv2d_forward(x, W, np.zeros(5, np.float32), 1, 1)
    assert out.shape == (2, 5, 8, 8) and out.transpose(0, 2, 3, 1).flags.c_contiguous
    col = cache[4]  # the book's col and a column of ones (the bias in the product)
    assert col.shape == (2 * 8 * 8, 3 * 3 * 3 + 1) and col.flags.c_contiguous
    np.testing.assert_array_equal(col[:, :-1], ops.im2col(x, 3, 3, 1, 1))
    assert (col[:, -1] == 1).all()


def test_index_limit_sends_large_calls_to_the_reference(host, monkeypatch):
    monkeypatch.setattr(launch, "INDEX_LIMIT", 100)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)  # 216 elements
    W = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    b = np.zeros(2, np.float32)
    out, cache = cuda.conv2d_forward(x, W, b)
    assert isinstance(cache, ReferenceCache)
    np.testing.assert_array_equal(out, ops.conv2d_forward(x, W, b)[0])
    small = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)  # 32 in; columns 2*2*(2*9 + 1) = 76,
    _, cache = cuda.conv2d_forward(small, W[:1, :2], b[:1])  # packed weights 19: 95 threads
    assert cache[0] == "cuda"
    p, g = rng.standard_normal(150).astype(np.float32), rng.standard_normal(150).astype(np.float32)
    want = p - np.float32(0.1) * g
    cuda.sgd_update(p, g, 0.1)
    np.testing.assert_allclose(p, want, rtol=1e-6)
    assert not host.launches().get("sgd_update")  # the reference ran


@pytest.mark.parametrize("op", ["conv2d", "maxpool2d", "avgpool2d", "relu", "dropout"])
def test_float16_runs_the_reference(host, op):
    case = dict(op_cases.CASES[op][0], dtype="float16")
    got, caches = op_cases.run(op, cuda, np.asarray, case)
    want, _ = op_cases.run(op, ops, np.asarray, case)
    assert all(isinstance(c, ReferenceCache) for c in caches)
    assert not host.launches()
    for key, value in want.items():
        if value is not None and key != "infer_cache":
            np.testing.assert_array_equal(_np(got[key]), _np(value), err_msg=key)


def test_mixed_dtypes_and_cpu_labels_run_the_reference(host, monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    W = rng.standard_normal((3, 2, 3, 3))  # float64
    _, cache = cuda.conv2d_forward(x, W, np.zeros(3))
    assert isinstance(cache, ReferenceCache)
    p, g = np.ones(4, np.float32), np.ones(4)  # float64 gradient
    cuda.sgd_update(p, g, 0.5)
    np.testing.assert_array_equal(p, 0.5)
    # labels not on the device (on_gpu False for them): the reference
    monkeypatch.setattr(launch, "on_gpu", lambda a: isinstance(a, np.ndarray) and a.dtype.kind == "f")
    scores = rng.standard_normal((3, 4)).astype(np.float32)
    loss, cache = cuda.softmax_cross_entropy_forward(scores, np.array([0, 1, 3]))
    assert isinstance(cache, ReferenceCache)
    assert not host.launches()


def test_an_array_dout_of_the_loss_runs_the_reference_backward(host):
    rng = np.random.default_rng(3)
    scores, labels = rng.standard_normal((5, 4)), np.array([0, 3, 1, 1, 2])
    _, cache = cuda.softmax_cross_entropy_forward(scores, labels)
    assert cache[0] == "cuda"
    dout = np.array(0.25)
    want = ops.softmax_cross_entropy_backward(ops.softmax_cross_entropy_forward(scores, labels)[1], dout)
    np.testing.assert_allclose(cuda.softmax_cross_entropy_backward(cache, dout), want, rtol=1e-12)


def test_a_backward_with_another_dtype_or_shape_runs_the_reference(host):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = np.zeros(4, np.float32)
    out, cache = cuda.conv2d_forward(x, W, b)
    _, ref_cache = ops.conv2d_forward(x, W, b)
    dout64 = rng.standard_normal(out.shape)  # float64
    for got, want in zip(cuda.conv2d_backward(dout64, cache), ops.conv2d_backward(dout64, ref_cache)):
        np.testing.assert_array_equal(got, want)
    pooled, pcache = cuda.maxpool2d_forward(x, 2, 2)
    with pytest.raises(ValueError):  # a dout of the wrong shape: the reference's error
        cuda.maxpool2d_backward(np.zeros((2, 3, 2, 2), np.float32), pcache)
    with pytest.raises(ValueError):
        ops.maxpool2d_backward(np.zeros((2, 3, 2, 2), np.float32), ops.maxpool2d_forward(x, 2, 2)[1])


@pytest.mark.parametrize("failing", ["im2col", "maxpool_forward", "softmax_xent_step", "adam_update"])
def test_a_kernel_that_fails_to_compile_switches_the_kernels_off_with_one_warning(host_lib, monkeypatch, failing):
    cp = cuda_host.HostCuPy(host_lib, fail={failing})
    launch.reset()
    monkeypatch.setattr(launch, "cupy", lambda: cp)
    monkeypatch.setattr(launch, "on_gpu", lambda a: isinstance(a, np.ndarray))
    op = {"im2col": "conv2d", "maxpool_forward": "maxpool2d", "softmax_xent_step": "softmax_cross_entropy",
          "adam_update": "adam"}[failing]
    case = op_cases.CASES[op][0]
    try:
        with pytest.warns(RuntimeWarning, match=f"CUDA kernel {failing} failed to compile") as record:
            got, caches = op_cases.run(op, cuda, np.asarray, case)
        assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
        want, _ = op_cases.run(op, ops, np.asarray, case)
        op_cases.compare(got, want, case["dtype"], _np, where=op)
        assert all(isinstance(c, ReferenceCache) for c in caches)
        assert failing in launch.failure() and cuda.details()["failure"] == launch.failure()
        assert not launch.serves(np.zeros(3, np.float32))  # off for the rest of the process
    finally:
        launch.reset()


@pytest.mark.parametrize("op, failing", [("conv2d", "fold_windows"), ("maxpool2d", "maxpool_backward"),
                                         ("avgpool2d", "fold_windows"), ("relu", "relu_backward")])
def test_a_backward_kernel_that_fails_after_its_forward_ran_gives_the_reference(host, op, failing):
    case = op_cases.CASES[op][1]
    host.fail = frozenset({failing})
    for kernel in host.kernels.values():  # kernels made before: fail from now on too
        kernel.fail = host.fail
    with pytest.warns(RuntimeWarning, match=failing):
        got, caches = op_cases.run(op, cuda, np.asarray, case)
    assert caches[0][0] == "cuda"  # the forward ran on the kernels
    want, _ = op_cases.run(op, ops, np.asarray, case)
    op_cases.compare(got, want, case["dtype"], _np, where=op)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("checked", [False, True])
def test_the_loss_adds_the_references_totals_in_one_launch(host, dtype, checked):
    """``totals`` (float64 (2,)) gains the summed loss and the hits, as the reference's; the
    whole forward is one kernel launch (and no min/max check with ``checked``), and the
    first backward with dout = 1 hands out the forward's gradient without a launch."""
    rng = np.random.default_rng(8)
    scores = (rng.standard_normal((9, 6)) * 4).astype(dtype)
    scores[2, 4] = scores[2, 1] = scores[2].max() + 1  # a tie: the first maximum counts
    labels = rng.integers(0, 6, 9)
    labels[2] = 4
    got_totals, want_totals = np.array([0.5, 1.0]), np.array([0.5, 1.0])
    before = sum(host.launches().values())
    loss, cache = cuda.softmax_cross_entropy_forward(scores, labels, got_totals, checked)
    assert sum(host.launches().values()) - before == 1 and cache[0] == "cuda"
    want_loss, want_cache = ops.softmax_cross_entropy_forward(scores, labels, want_totals, checked)
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert loss.dtype == np.dtype(dtype) and loss.shape == ()
    np.testing.assert_allclose(loss, want_loss, rtol=tol)
    np.testing.assert_allclose(got_totals, want_totals, rtol=tol)
    before = sum(host.launches().values())
    grad = cuda.softmax_cross_entropy_backward(cache)
    assert sum(host.launches().values()) == before
    want_grad = ops.softmax_cross_entropy_backward(want_cache)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol)
    grad *= 7  # the caller's to change: a second backward recomputes
    np.testing.assert_allclose(cuda.softmax_cross_entropy_backward(cache), want_grad, rtol=tol, atol=tol)
    np.testing.assert_allclose(cuda.softmax_cross_entropy_backward(cache, 0.5), want_grad * 0.5, rtol=tol, atol=tol)


def test_a_bad_totals_array_runs_the_reference(host):
    scores, labels = np.zeros((3, 4)), np.array([0, 1, 2])
    totals = np.zeros(2, dtype="float32")  # not float64
    loss, cache = cuda.softmax_cross_entropy_forward(scores, labels, totals)
    assert isinstance(cache, ReferenceCache) and totals[1] == 1.0  # the reference's hits: row 0 only


def test_update_all_takes_one_launch_per_32_parameters(host):
    rng = np.random.default_rng(9)
    shapes = [(int(rng.integers(1, 9)), 3) for _ in range(70)]
    params = [rng.standard_normal(s).astype("float32") for s in shapes]
    want = [p.copy() for p in params]
    grads = [rng.standard_normal(s).astype("float32") for s in shapes]
    states = [(np.zeros(s, "float32"),) for s in shapes]
    want_states = [(np.zeros(s, "float32"),) for s in shapes]
    lrs = list(rng.uniform(0.01, 0.1, 70))
    cuda.update_all("momentum", params, grads, states, lrs, (0.9,), 0.001)
    assert host.launches() == {"momentum_update_all": 3}
    ops.update_all("momentum", want, grads, want_states, lrs, (0.9,), 0.001)
    for got, ref, s, ref_s in zip(params, want, states, want_states):
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(s[0], ref_s[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("problem", ["strided", "repeated", "shape", "dtype"])
def test_update_all_that_the_kernel_cannot_serve_runs_the_reference(host, problem):
    rng = np.random.default_rng(10)
    params = [rng.standard_normal((4, 6)).astype("float32") for _ in range(2)]
    grads = [rng.standard_normal((4, 6)).astype("float32") for _ in range(2)]
    if problem == "strided":
        params[1] = rng.standard_normal((4, 12)).astype("float32")[:, ::2]
    elif problem == "repeated":
        params[1] = params[0]
    elif problem == "shape":
        grads[1] = grads[1].reshape(6, 4)
    else:
        grads[1] = grads[1].astype("float64")
    want = [p.copy() for p in params]
    if problem == "repeated":
        want[1] = want[0]
    if problem != "shape":
        ops.update_all("sgd", want, grads, [(), ()], [0.1, 0.2], ())
    try:
        cuda.update_all("sgd", params, grads, [(), ()], [0.1, 0.2], ())
    except ValueError:
        assert problem == "shape"  # the reference's own error
    else:
        for got, ref in zip(params, want):
            np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert not host.launches()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_dropout_kernel_draws_the_references_mask_bit_for_bit(host, dtype):
    x = np.random.default_rng(11).standard_normal((7, 33)).astype(dtype)
    seed, counter = 2**35 + 12345, 2**32 + 7
    out, cache = cuda.dropout_forward_philox(x, seed, counter, 0.3)
    assert host.launches() == {"dropout_philox": 1} and cache[0] == "cuda"
    want, want_mask = ops.dropout_forward_philox(x, seed, counter, 0.3)
    np.testing.assert_array_equal(cache[1], want_mask)
    np.testing.assert_array_equal(out, want)
