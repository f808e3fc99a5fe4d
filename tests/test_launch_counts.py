"""Device operations per training step on the GPU path, counted on the host emulation.

A GPU step at batch 100 is bound by its launches, so the CUDA accelerator fuses: the loss
(softmax, loss, gradient, running totals) in one launch, every parameter's update in one,
the bias inside the GEMMs, a batch's augmentation in one kernel, no layout copies between
layers and no per-step gather. ``host_device.HostDevice`` runs a model built for
``device="gpu"`` through the very code a GPU runs (kernel bodies compiled as host C++) and
counts each launch and host<->device copy. This file holds each zoo model's steady-state
training step (``fit`` with its zoo recipe, batch 100: one step between two others) to its
bound, prints the table (auto against reference mode), and checks that the emulated GPU
trains as the CPU reference does.
"""
import contextlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cuda_host  # noqa: E402
import host_device  # noqa: E402

from cnn_xp import callbacks, dispatch, training  # noqa: E402
from cnn_xp.recipe import Recipe  # noqa: E402

# device operations per training step at batch 100 (launches + host<->device copies)
BOUNDS = {"simple_convnet": 22, "fast_mnist": 28, "one_conv": 35, "lenet5": 40, "deep_convnet": 65}
BATCH, STEPS = 100, 5


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    return host_device.HostDevice(cuda_host.host_library(tmp_path_factory.mktemp("host_device")))


class _Snapshots(callbacks.Callback):
    def __init__(self, device):
        super().__init__()
        self.device, self.counts = device, []

    def on_batch_end(self, step, logs):
        self.counts.append((self.device.totals()["ops"], dict(self.device.counts)))


def _data(recipe, model):
    rng = np.random.default_rng(0)
    x = rng.random((BATCH * STEPS, *model.input_shape), dtype=np.float32)
    return x, rng.integers(0, 10, BATCH * STEPS)


def step_operations(device, name, mode):
    """(device operations of step 3 of a zoo recipe's fit on the emulated GPU, by kind)."""
    recipe = Recipe.create(name)
    with host_device.installed(device):
        dispatch.set_mode(mode)
        try:
            model = recipe.build_model("gpu")
            snapshots = _Snapshots(device)
            training.fit(model, recipe.build_optimizer(model), _data(recipe, model), epochs=1, batch_size=BATCH,
                         augment=recipe.augment, schedule=recipe.schedule_spec(), callbacks=[snapshots],
                         verbose=False)
        finally:
            dispatch.set_mode(None)
    (before, by_kind_before), (after, by_kind) = snapshots.counts[2], snapshots.counts[3]
    detail = {k[1]: v - by_kind_before.get(k, 0) for k, v in by_kind.items() if v != by_kind_before.get(k, 0)}
    return after - before, detail


@pytest.fixture(scope="module")
def table(device, pytestconfig):
    rows = {name: (step_operations(device, name, "auto"), step_operations(device, name, "reference"))
            for name in BOUNDS}
    lines = [f"{'model':<16}{'auto':>6}{'bound':>7}{'reference':>11}"]
    lines += [f"{name:<16}{auto[0]:>6}{BOUNDS[name]:>7}{ref[0]:>11}" for name, (auto, ref) in rows.items()]
    text = "device operations per training step, batch 100 (host emulation of the GPU):\n" + "\n".join(lines)
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + text)  # in the run's output, whatever the capture mode
    return rows


@pytest.mark.parametrize("name", list(BOUNDS))
def test_a_training_step_stays_within_its_launch_bound(table, name):
    (count, detail), _ = table[name]
    assert count <= BOUNDS[name], f"{name}: {count} device operations per step > {BOUNDS[name]}: {detail}"


@pytest.mark.parametrize("name", list(BOUNDS))
def test_the_kernels_take_fewer_operations_than_the_reference(table, name):
    (auto, _), (reference, _) = table[name]
    assert auto < reference


def test_a_step_reads_nothing_back_from_the_device(table):
    """No host<->device copy inside a plain step: labels are checked once per fit, the
    metrics are read every SYNC_EVERY steps. (Augmenting models copy their maps up.)"""
    for name, ((_, detail), _) in table.items():
        copies = {k: v for k, v in detail.items() if k in ("get", "to_host_scalar")}
        assert not copies, f"{name}: {copies}"


@pytest.mark.parametrize("name", ["simple_convnet", "fast_mnist", "lenet5", "one_conv"])
def test_the_emulated_gpu_trains_as_the_cpu_reference(device, name):
    """Three accelerated GPU steps (emulated) against three CPU reference steps: the same
    weights up to float32 rounding, the same running loss."""
    recipe = Recipe.create(name)
    results = {}
    for where in ("gpu", "cpu"):
        context = host_device.installed(device) if where == "gpu" else contextlib.nullcontext()
        with context:
            dispatch.set_mode("auto" if where == "gpu" else "reference")
            try:
                model = recipe.build_model(where)
                x, t = _data(recipe, model)
                history = training.fit(model, recipe.build_optimizer(model), (x[:300], t[:300]), epochs=1,
                                       batch_size=BATCH, augment=recipe.augment, schedule=recipe.schedule_spec(),
                                       verbose=False)
                results[where] = (model.state_dict(), history.rows[0])
            finally:
                dispatch.set_mode(None)
    (gpu_state, gpu_row), (cpu_state, cpu_row) = results["gpu"], results["cpu"]
    for key, want in cpu_state.items():
        np.testing.assert_allclose(gpu_state[key], want, rtol=2e-3, atol=2e-4, err_msg=f"{name} {key}")
    assert gpu_row["train_loss"] == pytest.approx(cpu_row["train_loss"], rel=1e-4)
    assert gpu_row["train_acc"] == cpu_row["train_acc"]
