"""Backend semantics: device names, array-module dispatch, host copies, and the one clear
error for "gpu" without a usable GPU (each reason simulated without a GPU)."""
import platform
import subprocess
import sys
import types

import numpy as np
import pytest

from cnn_xp import backend


@pytest.fixture
def fresh_probe():
    """Forget the cached GPU probe before and after a test that fakes the GPU story."""
    backend.reset_gpu_probe()
    yield
    backend.reset_gpu_probe()


def _fake_cupy(get_device_count):
    """A stand-in cupy module whose runtime answers getDeviceCount with ``get_device_count``."""
    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    return types.SimpleNamespace(__name__="cupy", cuda=types.SimpleNamespace(runtime=runtime))


def _cuda_error(status):
    """A real cupy CUDARuntimeError for a cudaError_t status code (needs cupy importable)."""
    cp = pytest.importorskip("cupy")
    return cp.cuda.runtime.CUDARuntimeError(status)


# -- CPU semantics ----------------------------------------------------------------------------

def test_get_xp_cpu_is_numpy():
    assert backend.get_xp("cpu") is np
    assert backend.get_xp() is np


@pytest.mark.parametrize("bad", ["cuda", "GPU", "", "tpu"])
def test_unknown_device_is_a_value_error_naming_choices(bad):
    with pytest.raises(ValueError, match="cpu, gpu"):
        backend.get_xp(bad)
    with pytest.raises(ValueError):
        backend.to_device(np.zeros(2, dtype=np.float32), bad)


def test_xp_of_and_device_of_host_values():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert backend.xp_of(x) is np
    assert backend.device_of(x) == "cpu"
    # Python scalars and lists are host values too.
    assert backend.xp_of(1.5) is np
    assert backend.device_of([1, 2]) == "cpu"


def test_to_device_cpu_and_to_numpy_keep_values_and_dtype():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = backend.to_device(x, "cpu")
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_array_equal(y, x)
    z = backend.to_numpy([[1, 2], [3, 4]])
    assert isinstance(z, np.ndarray) and z.shape == (2, 2)
    s = backend.to_numpy(np.float32(2.5))
    assert isinstance(s, np.ndarray) and s.dtype == np.float32 and float(s) == 2.5


def test_synchronize_cpu_is_a_noop_without_cupy():
    backend.synchronize("cpu")  # must not probe or raise


# -- "gpu" without a usable GPU: each reason ---------------------------------------------------

def _assert_gpu_refused(fragment):
    ok, reason = backend.gpu_status()
    assert ok is False
    assert fragment in reason
    assert backend.gpu_available() is False
    for call in (lambda: backend.get_xp("gpu"), backend.cupy,
                 lambda: backend.to_device(np.zeros(3, np.float32), "gpu")):
        with pytest.raises(backend.GPUUnavailableError) as info:
            call()
        message = str(info.value)
        assert fragment in message
        assert "\n" not in message  # one clear line


def test_gpu_error_when_cupy_not_installed(monkeypatch, fresh_probe):
    def no_cupy():
        raise ModuleNotFoundError("No module named 'cupy'")

    monkeypatch.setattr(backend, "_import_cupy", no_cupy)
    _assert_gpu_refused("cupy is not installed")
    _, reason = backend.gpu_status()
    assert "cnn_xp[gpu]" in reason  # tells the user how to fix it


def test_gpu_error_when_cupy_is_blocked_in_a_fresh_interpreter():
    """The real import machinery: sys.modules['cupy'] = None makes `import cupy` fail."""
    code = (
        "import sys; sys.modules['cupy'] = None\n"
        "from cnn_xp import backend\n"
        "ok, reason = backend.gpu_status()\n"
        "assert ok is False, reason\n"
        "assert 'cupy is not installed' in reason, reason\n"
        "try:\n"
        "    backend.get_xp('gpu')\n"
        "except backend.GPUUnavailableError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "REFUSED GPU requested but unavailable: cupy is not installed" in proc.stdout


def test_gpu_error_when_cuda_driver_is_insufficient(monkeypatch, fresh_probe):
    err = _cuda_error(35)  # cudaErrorInsufficientDriver

    def count():
        raise err

    monkeypatch.setattr(backend, "_import_cupy", lambda: _fake_cupy(count))
    _assert_gpu_refused("no usable CUDA driver")
    assert "cudaErrorInsufficientDriver" in backend.gpu_status()[1]


def test_gpu_error_when_driver_library_is_missing(monkeypatch, fresh_probe):
    def count():
        raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(backend, "_import_cupy", lambda: _fake_cupy(count))
    _assert_gpu_refused("no usable CUDA driver")


def test_gpu_error_when_no_device(monkeypatch, fresh_probe):
    err = _cuda_error(100)  # cudaErrorNoDevice

    def count():
        raise err

    monkeypatch.setattr(backend, "_import_cupy", lambda: _fake_cupy(count))
    _assert_gpu_refused("no CUDA device found")


def test_gpu_error_when_driver_reports_zero_devices(monkeypatch, fresh_probe):
    monkeypatch.setattr(backend, "_import_cupy", lambda: _fake_cupy(lambda: 0))
    _assert_gpu_refused("no CUDA device found")


def test_gpu_probe_is_cached_until_reset(monkeypatch, fresh_probe):
    calls = []

    def count():
        calls.append(1)
        return 0

    monkeypatch.setattr(backend, "_import_cupy", lambda: _fake_cupy(count))
    backend.gpu_status()
    backend.gpu_status()
    backend.gpu_available()
    assert len(calls) == 1
    backend.reset_gpu_probe()
    backend.gpu_status()
    assert len(calls) == 2


def test_gpu_usable_when_runtime_reports_a_device(monkeypatch, fresh_probe):
    fake = _fake_cupy(lambda: 1)
    monkeypatch.setattr(backend, "_import_cupy", lambda: fake)
    assert backend.gpu_status() == (True, "")
    assert backend.get_xp("gpu") is fake
    assert backend.cupy() is fake


def test_real_probe_on_this_machine_is_consistent(fresh_probe):
    """Whatever this machine has, the probe answers (bool, reason) and get_xp agrees with it."""
    ok, reason = backend.gpu_status()
    if ok:
        assert reason == ""
        assert backend.get_xp("gpu").__name__ == "cupy"
    else:
        assert reason
        with pytest.raises(backend.GPUUnavailableError, match="GPU requested but unavailable"):
            backend.get_xp("gpu")


_FAULTS_CHILD = """
import resource, sys, numpy as np
from cnn_xp import backend
if sys.argv[1] == "retain":
    assert backend.retain_host_memory()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # two 4.4 MB temporaries per "step", as a training step makes
    a = np.ones(1_100_000, np.float32); b = np.ones(1_100_000, np.float32); del a, b
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_retain_host_memory_reuses_freed_pages():
    """Without it each step's temporaries come back as fresh pages (one fault per 4 KiB);
    with it the freed blocks are reused."""
    def faults(mode):
        done = subprocess.run([sys.executable, "-c", _FAULTS_CHILD, mode], capture_output=True, text=True, check=True)
        return int(done.stdout)

    default, retained = faults("default"), faults("retain")
    pages_per_step = 2 * 1_100_000 * 4 // 4096
    if default < 4 * pages_per_step:  # 12,000-22,000 seen here, by numpy version
        pytest.skip(f"this allocator already reuses freed pages ({default} faults in 20 steps)")
    assert retained < 2 * pages_per_step      # only the first step faults (~1,100 here)
