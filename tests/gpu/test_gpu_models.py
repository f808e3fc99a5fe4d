"""Whole models on the GPU, in both kernel modes, against the CPU reference: same seed ->
same weights on both devices, one training step of every zoo model, every optimizer's
update rule, checkpoints moving between devices (and between kernel modes), GPU random
streams, training that learns, and ``cnn-xp doctor`` on a GPU machine."""
import io

import numpy as np
import pytest

from gpu_helpers import DRY_RUN, kernel_mode, on_cpu_reference

from cnn_xp import backend, dispatch, layers, models, optim
from cnn_xp.app import doctor
from cnn_xp.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cnn_xp.model import Sequential

ZOO = sorted(models.MODELS)
BATCH = 4


def batch(seed=0, n=BATCH):
    """x (n, 1, 28, 28) float32 in [0, 1), t (n,) int64 class indices."""
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, size=n)


def host_grads(model):
    return {name: backend.to_numpy(layer.grads[key]) for name, layer, key in model.params_and_grads()}


def without_dropout(model):
    """Dropout masks come from each device's own RNG; p = 0 makes the step comparable."""
    for layer in model.layers:
        if isinstance(layer, layers.Dropout):
            layer.p = 0.0
    return model


def assert_same_arrays(got: dict, want: dict, dtype, mode):
    """mode "exact"; "elementwise" (float64: 1e-8 of the array's scale); "norm" (float32:
    relative L2 error 1e-2 per array. float32 vs float64 on the CPU differ by at most 1.2e-6
    here; the slack covers a ReLU gate or max-pool argmax that a rounding difference flips
    between devices, while a broken kernel is off by O(1))."""
    assert got.keys() == want.keys()
    for key, w in want.items():
        g = got[key]
        assert g.shape == w.shape and g.dtype == w.dtype == np.dtype(dtype), key
        if mode == "exact":
            np.testing.assert_array_equal(g, w, err_msg=key)
        elif mode == "elementwise":
            scale = max(1.0, float(np.abs(w).max()))
            np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-8 * scale, err_msg=key)
        else:
            err = float(np.linalg.norm((g - w).astype(np.float64)))
            ref = float(np.linalg.norm(w.astype(np.float64)))
            assert err <= 1e-2 * ref + 1e-6, f"{key}: relative error {err / max(ref, 1e-30):.2e}"


# -- same seed, same initial weights ------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO)
def test_same_seed_same_initial_weights_on_both_devices(name, gpu):
    on_gpu = models.build(name, seed=3, device=gpu)
    on_cpu = models.build(name, seed=3, device="cpu")
    assert on_gpu.device == gpu
    for _, layer, key in on_gpu.params_and_grads():
        assert backend.device_of(layer.params[key]) == gpu
    assert_same_arrays(on_gpu.state_dict(), on_cpu.state_dict(), "float32", "exact")
    other = models.build(name, seed=4, device=gpu).state_dict()
    assert any(not np.array_equal(other[k], v) for k, v in on_cpu.state_dict().items())


# -- one full training step of each zoo model -----------------------------------------------

def train_step(name, device, dtype, seed=0):
    """Build, forward, backward, one SGD step (linear in the gradient, so comparable)."""
    model = without_dropout(models.build(name, seed=seed, device=device, dtype=dtype))
    spec = models.MODELS[name]
    opt = optim.SGD(model, lr=spec.lr)
    x, t = batch(seed)
    loss = model.loss(x, t)
    assert backend.device_of(loss) == device and loss.dtype == np.dtype(dtype)
    model.backward()
    grads = host_grads(model)
    opt.step()
    for _, layer, key in model.params_and_grads():
        assert backend.device_of(layer.params[key]) == device
        assert layer.params[key].dtype == np.dtype(dtype)
    scores = backend.to_numpy(model.predict(x))
    return float(loss), grads, model.state_dict(), scores


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_training_step_matches_the_cpu_reference(name, dtype, gpu, mode):
    loss_g, grads_g, state_g, scores_g = train_step(name, gpu, dtype)
    loss_c, grads_c, state_c, scores_c = on_cpu_reference(train_step, name, "cpu", dtype)
    how = "elementwise" if dtype == "float64" else "norm"
    assert loss_g == pytest.approx(loss_c, rel=1e-10 if dtype == "float64" else 1e-4)
    assert_same_arrays(grads_g, grads_c, dtype, how)
    assert_same_arrays(state_g, state_c, dtype, how)
    assert_same_arrays({"scores": scores_g}, {"scores": scores_c}, dtype, how)


# -- optimizers ---------------------------------------------------------------------------

@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt_name", sorted(optim.OPTIMIZERS))
def test_optimizer_updates_match_the_cpu_reference(opt_name, dtype, weight_decay, gpu, mode):
    """Three updates from fixed gradients bounded away from 0 (Adam and AdaGrad divide by
    |g|), with and without weight decay, compared with the CPU reference; the optimizer
    state stays on the device."""
    op = {"adamw": "adam"}.get(opt_name, opt_name)  # AdamW: its decay, then the adam op
    runs = dispatch.implementation_name(dispatch.implementation(op, gpu))
    if mode == "reference" or not DRY_RUN:
        assert runs == {"reference": "reference", "auto": "cuda"}[mode]
    rng = np.random.default_rng(60)
    grads = [(rng.uniform(0.1, 1.0, (6, 5)) * rng.choice([-1.0, 1.0], (6, 5))).astype(dtype)
             for _ in range(3)]

    def run(device):
        model = Sequential([layers.Affine(6, 5, rng=61, dtype=dtype)], device=device)
        opt = optim.create(opt_name, model, lr=0.01, weight_decay=weight_decay)
        layer = model.layers[0]
        for g in grads:
            layer.grads["W"] = backend.to_device(g, device)
            layer.grads["b"] = backend.to_device(g[0], device)
            opt.step()
        for per_param in opt.state.values():
            for value in per_param.values():
                assert backend.device_of(value) == device
        return model.state_dict(), opt.state_dict()

    state_g, opt_g = run(gpu)
    state_c, opt_c = on_cpu_reference(run, "cpu")
    tol = 1e-5 if dtype == "float32" else 1e-12
    for key in state_c:
        assert state_g[key].dtype == np.dtype(dtype), key
        np.testing.assert_allclose(state_g[key], state_c[key], rtol=tol, atol=tol, err_msg=key)
    assert opt_g.keys() == opt_c.keys()
    for key, value in opt_c.items():
        np.testing.assert_allclose(np.asarray(opt_g[key]), np.asarray(value), rtol=tol * 10,
                                   atol=tol, err_msg=key)


# -- checkpoints move between devices -----------------------------------------------------

def test_checkpoint_written_on_gpu_loads_on_cpu_and_back(tmp_path, gpu, mode):
    x, t = batch(7, n=8)
    model_g = models.build("lenet5", seed=1, device=gpu)
    opt_g = optim.Momentum(model_g, lr=0.01)
    for _ in range(2):
        model_g.loss(x, t)
        model_g.backward()
        opt_g.step()
    path = tmp_path / "gpu.npz"
    save_checkpoint(path, Checkpoint(meta={"model": "lenet5", "device": gpu},
                                     model_state=model_g.state_dict(),
                                     optimizer_state=opt_g.state_dict()))
    ckpt = load_checkpoint(path)
    assert all(isinstance(v, np.ndarray) for v in ckpt.model_state.values())

    # GPU -> CPU: bit-identical weights and optimizer state; same predictions.
    model_c = models.build("lenet5", seed=99, device="cpu")
    model_c.load_state_dict(ckpt.model_state)
    opt_c = optim.Momentum(model_c, lr=0.5)
    opt_c.load_state_dict(ckpt.optimizer_state)
    assert opt_c.lr == 0.01 and opt_c.t == 2
    assert_same_arrays(model_c.state_dict(), model_g.state_dict(), "float32", "exact")
    for name, per_param in opt_c.state.items():
        for slot, value in per_param.items():
            assert backend.device_of(value) == "cpu"
            np.testing.assert_array_equal(value, backend.to_numpy(opt_g.state[name][slot]))
    assert_same_arrays({"s": backend.to_numpy(model_c.predict(x))},
                       {"s": backend.to_numpy(model_g.predict(x))}, "float32", "norm")

    # Resumed on the CPU, one more step agrees with the GPU run continuing.
    for model, opt in ((model_g, opt_g), (model_c, opt_c)):
        model.loss(x, t)
        model.backward()
        opt.step()
    assert_same_arrays(model_c.state_dict(), model_g.state_dict(), "float32", "norm")

    # CPU -> file -> GPU: bit-identical again, parameters live on the GPU.
    path_c = tmp_path / "cpu.npz"
    save_checkpoint(path_c, Checkpoint(meta={"model": "lenet5"}, model_state=model_c.state_dict(),
                                       optimizer_state=opt_c.state_dict()))
    back = load_checkpoint(path_c)
    model_g2 = models.build("lenet5", seed=5, device=gpu)
    model_g2.load_state_dict(back.model_state)
    opt_g2 = optim.Momentum(model_g2, lr=0.01)
    opt_g2.load_state_dict(back.optimizer_state)
    for _, layer, key in model_g2.params_and_grads():
        assert backend.device_of(layer.params[key]) == gpu
    for per_param in opt_g2.state.values():
        assert all(backend.device_of(v) == gpu for v in per_param.values())
    assert_same_arrays(model_g2.state_dict(), model_c.state_dict(), "float32", "exact")


def test_model_moves_between_devices_without_changing_weights(gpu):
    model = models.build("simple_convnet", seed=2, device="cpu")
    before = model.state_dict()
    model.to(gpu)
    assert all(backend.device_of(layer.params[key]) == gpu for _, layer, key in model.params_and_grads())
    model.to("cpu").to(gpu).to("cpu")
    assert_same_arrays(model.state_dict(), before, "float32", "exact")


# -- GPU random streams and training ------------------------------------------------------

def test_gpu_dropout_draws_the_cpus_masks(gpu, mode):
    """Dropout's counter-based stream gives the same masks on both devices, kernels or
    reference, and its state (seed, counter) continues alike."""
    from cnn_xp.layers import Dropout

    x = np.random.default_rng(5).standard_normal((8, 50)).astype(np.float32)
    on_gpu, on_cpu = Dropout(0.5, seed=11), Dropout(0.5, seed=11)
    for _ in range(3):
        got = backend.to_numpy(on_gpu.forward(backend.to_device(x, gpu)))
        want = on_cpu.forward(x)
        np.testing.assert_array_equal(got, want)
    assert on_gpu.rng_state() == on_cpu.rng_state() == {"seed": 11, "counter": 3 * 100}


def separable_batch(n=20, seed=3):
    """One noisy template image per class: x (n, 1, 28, 28) float32, t (n,) = arange % 10."""
    rng = np.random.default_rng(seed)
    templates = rng.random((10, 1, 28, 28), dtype=np.float32)
    t = np.arange(n) % 10
    return templates[t] + 0.3 * rng.random((n, 1, 28, 28), dtype=np.float32), t



@pytest.mark.parametrize("name", ["one_conv", "lenet5", "deep_convnet"])
def test_zoo_model_learns_on_gpu(name, gpu, mode):
    """Its own recipe's optimizer (SGD / Adam / AdaGrad, with its parameter groups), dropout
    on: 30 steps on one batch cut the inference loss by 10% or more (measured on the CPU
    reference: 25%, 98%, 16%)."""
    model = models.build(name, seed=0, device=gpu)
    opt = models.build_optimizer(name, model)
    x, t = separable_batch()
    x, t = backend.to_device(x, gpu), backend.to_device(t, gpu)
    before = float(model.loss(x, t, train=False))
    for _ in range(30):
        model.loss(x, t)
        model.backward()
        opt.step()
    after = float(model.loss(x, t, train=False))
    assert np.isfinite(after) and after < 0.9 * before, (before, after)
    accuracy = model.accuracy(x, t)
    assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0


def test_doctor_checks_the_gpu_and_names_the_implementation_of_every_op(gpu):
    if DRY_RUN:
        pytest.skip("dry run: the doctor's GPU branch needs a real GPU")
    for mode, accelerated in (("auto", "cuda"), ("reference", "reference")):
        buf = io.StringIO()
        with kernel_mode(mode):
            dispatch.reset()
            assert doctor.run_doctor(out=buf) == 0
        text = buf.getvalue()
        assert "gpu: usable" in text and "gpu: ok" in text, text
        assert "cpu and gpu agree" in text, text
        assert f"gpu ops: conv2d {accelerated}" in text, text
        if mode == "auto":
            assert "gpu accelerator: cuda" in text, text
    dispatch.reset()


def test_a_model_trained_with_the_kernels_continues_on_the_reference(gpu):
    """The same model object, two steps in mode auto, then one step in mode reference
    (caches never cross: each forward keeps the module that ran it), equals three steps on
    the CPU reference."""
    x, t = batch(11, n=8)

    def three_steps(device, modes):
        model = without_dropout(models.build("deep_convnet", seed=2, device=device, dtype="float64"))
        opt = optim.AdaGrad(model, lr=0.01)
        for step_mode in modes:
            with kernel_mode(step_mode):
                model.loss(x, t)
                model.backward()
                opt.step()
        return model.state_dict()

    got = three_steps(gpu, ["auto", "auto", "reference"])
    want = on_cpu_reference(three_steps, "cpu", ["reference"] * 3)
    assert_same_arrays(got, want, "float64", "elementwise")
