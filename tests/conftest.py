"""Session-wide test settings."""
import os

import pytest

from cnn_xp.ops import cpu_kernels


@pytest.fixture(autouse=True, scope="session")
def _kernel_cache(tmp_path_factory):
    """The compiled CPU kernels are built once per test run into a temporary folder (and
    subprocesses started by the tests inherit it), not into the user's ~/.cache."""
    if not os.environ.get(cpu_kernels.ENV_CACHE):
        os.environ[cpu_kernels.ENV_CACHE] = str(tmp_path_factory.mktemp("kernels"))
    yield
