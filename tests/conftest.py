"""Session-wide test settings and shared fixtures."""
import pytest

from cnn_xp import dispatch


@pytest.fixture
def kernel_mode():
    """``kernel_mode("auto")`` sets the kernel mode for one test (accelerators probed
    afresh); the environment's mode is back afterwards."""
    def use(mode):
        dispatch.reset()
        dispatch.set_mode(mode)
    yield use
    dispatch.set_mode(None)
    dispatch.reset()
