"""The CUDA accelerator against the reference on the GPU, on tests/test_equivalence.py's
random cases: every op it implements (random shapes, strides, pads, both dtypes, every memory
order; max pooling's ties and NaN exactly), and the caches' semantics (overwriting a forward's
input before its backward changes nothing). The ``check_*`` functions of test_equivalence
run with the GPU and ``cnn_xp.kernels.cuda``, which must implement every op and stay on.

In a dry run (the CPU standing in) the device side is the CPU accelerator where it implements
the op, else the reference: the test code runs either way."""
import pytest

import op_cases
import test_equivalence as eq
from cnn_xp import dispatch, ops
from gpu_helpers import cuda_failure

DTYPES = ["float64", "float32"]
MUTATE_CASES = eq.MUTATE_CASES


@pytest.fixture
def accelerated(gpu):
    """op -> the module under test on ``gpu`` (see the module docstring); after the test,
    on a real GPU, the CUDA kernels must still be on."""
    dispatch.reset()
    module, reason = dispatch.accelerator(gpu)

    def of(op):
        if gpu == "gpu":
            assert module is not None, f"no CUDA accelerator: {reason}"
            assert op in module.OPS, f"{dispatch.implementation_name(module)} does not implement {op}"
            return module
        return module if module is not None and op in module.OPS else ops

    yield of
    if gpu == "gpu":
        assert cuda_failure() is None, f"the CUDA kernels switched off: {cuda_failure()}"
    dispatch.reset()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", eq.CONV_SEEDS)
def test_conv2d(gpu, accelerated, dtype, seed):
    eq.check_conv2d(gpu, accelerated("conv2d"), dtype, seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(16))
def test_maxpool2d(gpu, accelerated, dtype, seed):
    eq.check_maxpool2d(gpu, accelerated("maxpool2d"), dtype, seed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu(gpu, accelerated, dtype):
    eq.check_relu(gpu, accelerated("relu"), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout(gpu, accelerated, dtype):
    eq.check_dropout(gpu, accelerated("dropout"), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("one_hot", [False, True], ids=["indices", "one_hot"])
def test_softmax_cross_entropy(gpu, accelerated, dtype, one_hot):
    eq.check_softmax_cross_entropy(gpu, accelerated("softmax_cross_entropy"), dtype, one_hot)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(eq.UPDATES))
def test_optimizer_updates(gpu, accelerated, dtype, op):
    eq.check_optimizer_updates(gpu, accelerated(op), dtype, op)


@pytest.mark.parametrize("op, case", MUTATE_CASES, ids=[op_cases.case_id(o, c) for o, c in MUTATE_CASES])
def test_changing_the_input_after_the_forward_changes_no_backward(gpu, accelerated, op, case):
    accel = accelerated(op)
    eq.check_input_change(gpu, None if accel is ops else accel, op, case)
