"""`cnn-xp doctor`: versions, device verdicts with reasons, and a real tiny training check."""
import io
import platform
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from cnn_xp import backend

from cnn_xp.app import doctor


@pytest.fixture
def fresh_probe():
    backend.reset_gpu_probe()
    yield
    backend.reset_gpu_probe()


def _run():
    buf = io.StringIO()
    code = doctor.run_doctor(out=buf)
    return code, buf.getvalue()


def _fake_cupy(runtime_version, driver_version, get_device_count):
    runtime = types.SimpleNamespace(runtimeGetVersion=lambda: runtime_version,
                                    driverGetVersion=lambda: driver_version,
                                    getDeviceCount=get_device_count)
    return types.SimpleNamespace(__name__="cupy", cuda=types.SimpleNamespace(runtime=runtime))


def test_report_on_this_machine(fresh_probe):
    code, text = _run()
    assert code == 0, text
    assert f"python {platform.python_version()}" in text
    assert f"numpy {np.__version__}" in text
    assert "cpu: usable" in text
    match = re.search(r"cpu: ok, loss ([\d.]+) -> ([\d.]+)", text)
    assert match, text
    assert float(match.group(2)) < float(match.group(1))
    ok, reason = backend.gpu_status()
    if not ok:
        assert f"gpu: not usable: {reason}" in text
        assert "gpu: ok" not in text


def test_cupy_missing_is_reported_and_cpu_still_passes(monkeypatch, fresh_probe):
    def no_cupy():
        raise ModuleNotFoundError("No module named 'cupy'")

    monkeypatch.setattr(backend, "_import_cupy", no_cupy)
    monkeypatch.setattr(doctor, "_cupy_wheels", lambda: [])
    code, text = _run()
    assert code == 0, text
    assert "cupy: not installed" in text
    assert "cuda: unknown (cupy cannot be imported" in text
    assert "gpu: not usable: cupy is not installed" in text


def test_old_driver_gets_versions_and_a_hint(monkeypatch, fresh_probe):
    cp = pytest.importorskip("cupy")
    err = cp.cuda.runtime.CUDARuntimeError(35)  # cudaErrorInsufficientDriver

    def count():
        raise err

    monkeypatch.setattr(backend, "_import_cupy", lambda: _fake_cupy(12090, 11080, count))
    code, text = _run()
    assert code == 0, text
    assert "cuda runtime (cupy built for): 12.9" in text
    assert "cuda driver: 11.8" in text
    assert "install cupy-cuda11x" in text
    assert "gpu: not usable: no usable CUDA driver" in text


def test_no_device_reason(monkeypatch, fresh_probe):
    monkeypatch.setattr(backend, "_import_cupy", lambda: _fake_cupy(12090, 12090, lambda: 0))
    code, text = _run()
    assert code == 0
    assert "cuda driver: 12.9" in text and "hint" not in text
    assert "gpu: not usable: no CUDA device found" in text


def test_several_cupy_wheels_warn(monkeypatch):
    monkeypatch.setattr(doctor, "_cupy_wheels", lambda: ["cupy-cuda11x 13.0.0", "cupy-cuda12x 14.2.0"])
    _, text = _run()
    assert "more than one CuPy wheel" in text


def test_non_finite_numbers_fail_the_cpu_check(monkeypatch):
    def nan_batch():
        x = np.full((doctor.CHECK_BATCH, 1, 12, 12), np.nan, dtype=np.float32)
        return x, np.zeros(doctor.CHECK_BATCH, dtype=np.int64)

    monkeypatch.setattr(doctor, "_check_batch", nan_batch)
    code, text = _run()
    assert code == 1
    assert re.search(r"cpu: FAILED: RuntimeError: non-finite", text), text


def test_a_loss_that_does_not_fall_fails_the_cpu_check(monkeypatch):
    class Frozen:
        def __init__(self, model, lr):
            pass

        def step(self):
            pass

    monkeypatch.setattr(doctor, "Adam", Frozen)
    code, text = _run()
    assert code == 1
    assert "cpu: FAILED: RuntimeError: loss did not fall" in text


def test_check_is_deterministic_and_float32():
    a = doctor.check_device("cpu")
    b = doctor.check_device("cpu")
    assert a["first_loss"] == b["first_loss"] and a["last_loss"] == b["last_loss"]
    assert a["step_ms"] > 0.0
    model = doctor._check_model("cpu")
    assert all(layer.params[key].dtype == np.float32 for _, layer, key in model.params_and_grads())


def test_module_entry_point_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "cnn_xp.app.doctor"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cpu: ok" in proc.stdout


def test_a_broken_gpu_is_reported_but_cpu_decides_the_exit_code(monkeypatch, fresh_probe, kernel_mode):
    """A "usable" GPU whose cupy cannot allocate: the GPU check fails, loudly, exit stays 0."""
    kernel_mode("auto")
    monkeypatch.setattr(backend, "_import_cupy", lambda: _fake_cupy(12090, 12090, lambda: 1))
    code, text = _run()
    assert code == 0, text
    assert "gpu: usable (cupy)" in text
    assert "gpu properties: unknown" in text
    assert re.search(r"  gpu: FAILED: \w+", text), text
    assert "gpu accelerator: cuda" in text and "gpu ops: conv2d cuda" in text
    assert "cpu: ok" in text and "cpu and gpu" not in text
