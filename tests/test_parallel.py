"""CPU batches in slices on a thread pool (cnn_xp/parallel.py, opted into with BatchSlices)."""
import threading

import numpy as np
import pytest

from cnn_xp.errors import CnnXpError

from cnn_xp import models, parallel

from cnn_xp.app import bench, bench_step, cli
from cnn_xp.layers import Affine, BatchNorm, Conv2D, Dropout, Flatten, MaxPool2D, ReLU
from cnn_xp.model import Sequential


def test_slices_follow_cores_batch_and_work_per_image(monkeypatch):
    monkeypatch.setenv(parallel.ENV_THREADS, "4")
    big = parallel.MIN_FLOPS_PER_IMAGE
    assert parallel.inference_slices(100, big, 0) == 4
    assert parallel.inference_slices(40, big, 0) == 2        # at least 16 images a thread
    assert parallel.inference_slices(20, big, 0) == 1
    assert parallel.inference_slices(100, big - 1, 0) == 1   # small nets: no slicing
    assert parallel.inference_slices(100, 4 * big, 3 * big + 1) == 1  # mostly fully connected
    monkeypatch.setenv(parallel.ENV_THREADS, "1")
    assert parallel.inference_slices(1000, 10 * big, 0) == 1


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_thread_setting_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys, value):
    monkeypatch.setenv(parallel.ENV_THREADS, value)
    with pytest.raises(parallel.ThreadSettingError, match="CNN_XP_THREADS"):
        parallel.cpu_threads()
    assert issubclass(parallel.ThreadSettingError, CnnXpError)  # the CLI's one-line errors
    assert bench.main(["--models", "deep_convnet", "--dtypes", "float32", "--batch-sizes", "32",
                       "--repeats", "3", "--steps", "1", "--peer", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CNN_XP_THREADS" in err[0]


def test_map_slices_covers_the_batch_in_order_and_restores_blas_threads():
    from threadpoolctl import threadpool_info
    before = [lib["num_threads"] for lib in threadpool_info()]
    seen = []

    def fn(part):
        seen.append(threading.get_ident())
        return part * 2

    x = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    np.testing.assert_array_equal(parallel.map_slices(fn, x, 3), x * 2)
    assert len(seen) == 3
    assert [lib["num_threads"] for lib in threadpool_info()] == before


def test_sliced_inference_matches_one_thread(monkeypatch):
    model = models.build("deep_convnet", seed=0)
    x = np.random.default_rng(0).random((40, 1, 28, 28), dtype=np.float32)
    monkeypatch.setenv(parallel.ENV_THREADS, "1")
    one = model.predict(x)
    monkeypatch.setenv(parallel.ENV_THREADS, "2")
    calls = []
    real = parallel.map_slices
    monkeypatch.setattr(parallel, "map_slices", lambda *a: calls.append(a[2]) or real(*a))
    assert model.predict(x).shape == (40, 10) and calls == []   # Sequential never slices
    sliced = parallel.BatchSlices(model).predict(x)
    assert calls == [2]  # deep_convnet (6.7 MFLOP per image) is sliced
    np.testing.assert_allclose(sliced, one, rtol=1e-5, atol=1e-6)
    assert parallel.BatchSlices(model).accuracy(x, np.zeros(40, np.int64)) == model.accuracy(x, np.zeros(40, np.int64))


def test_inference_on_several_threads_shares_the_layers():
    """Inference stores nothing on the layers, so threads may share one model."""
    model = models.build("lenet5", seed=0)
    xs = [np.random.default_rng(k).random((8, 1, 28, 28), dtype=np.float32) for k in range(4)]
    alone = [model.predict(x) for x in xs]
    results = [None] * 4

    def run(k):
        for _ in range(5):
            results[k] = model.predict(xs[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, alone):
        np.testing.assert_array_equal(got, want)


def test_a_big_fully_connected_net_is_not_sliced_at_inference(monkeypatch):
    monkeypatch.setenv(parallel.ENV_THREADS, "2")
    mlp = Sequential([Flatten(), Affine(784, 4096, rng=0), ReLU(), Affine(4096, 10, rng=1)])
    assert sum(mlp.layer_flops((1, 28, 28))) > parallel.MIN_FLOPS_PER_IMAGE
    monkeypatch.setattr(parallel, "map_slices", lambda *a: pytest.fail("sliced"))
    assert parallel.BatchSlices(mlp).predict(np.zeros((64, 1, 28, 28), np.float32)).shape == (64, 10)


def test_layer_flops_count_conv_and_affine_layers():
    model = models.build("simple_convnet")
    flops = model.layer_flops((1, 28, 28))
    assert flops[0] == 2 * 24 * 24 * 30 * 25 and len(flops) == len(model.layers)
    assert sum(flops) == bench_step.flops_per_image(model)["forward"]


def test_interleaved_runs_settle_before_each_timed_run(monkeypatch):
    sleeps = []
    monkeypatch.setattr(bench_step.time, "sleep", sleeps.append)

    class Runner:
        def train(self, steps):
            pass

    out = bench_step.time_interleaved({"ours": Runner(), "torch": Runner()}, "train", 2, 10, 3, settle=0.3)
    assert sleeps == [0.3] * 6 and set(out) == {"ours", "torch"}


def test_without_threadpoolctl_inference_is_not_sliced(monkeypatch):
    monkeypatch.setenv(parallel.ENV_THREADS, "4")
    monkeypatch.setattr(parallel, "_blas", False)  # as after a failed import
    assert parallel.inference_slices(100, 10 * parallel.MIN_FLOPS_PER_IMAGE, 0) == 1


# -- training in slices ------------------------------------------------------------------------

def _step(model, x, t):
    """One training step through BatchSlices: (loss, grads by name, dx)."""
    runner = parallel.BatchSlices(model)
    loss = float(runner.loss(x, t))
    dx = runner.backward()
    grads = {f"{i}.{k}": g.copy() for i, layer in enumerate(model.layers) for k, g in layer.grads.items()}
    return loss, grads, dx


def _batch(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("name", ["deep_convnet", "simple_convnet", "lenet5"])
def test_sliced_training_step_matches_the_whole_batch(monkeypatch, name):
    x, t = _batch()
    monkeypatch.setenv(parallel.ENV_THREADS, "1")
    loss1, grads1, _ = _step(models.build(name, seed=0), x, t)
    monkeypatch.setenv(parallel.ENV_THREADS, "2")
    model = models.build(name, seed=0)
    calls = []
    real = parallel.SlicedLayers.forward
    monkeypatch.setattr(parallel.SlicedLayers, "forward", lambda self, *a: calls.append(a[1]) or real(self, *a))
    loss2, grads2, _ = _step(model, x, t)
    assert calls == [2]
    assert loss2 == pytest.approx(loss1, rel=1e-6)  # Dropout (deep_convnet) draws the same masks
    assert grads1.keys() == grads2.keys()
    for key in grads1:
        np.testing.assert_allclose(grads2[key], grads1[key], rtol=1e-4, atol=1e-6 * np.abs(grads1[key]).max())
    # the same slicing gives the same bits
    assert _step(models.build(name, seed=0), x, t)[1].keys() == grads2.keys()
    again = _step(models.build(name, seed=0), x, t)[1]
    assert all(np.array_equal(again[k], grads2[k]) for k in grads2)


def test_sliced_layers_stop_at_dropout_and_batchnorm():
    deep = models.build("deep_convnet")
    lead = parallel.BatchSlices(deep)._leading_sliceable().layers
    assert not any(isinstance(layer, (Dropout, BatchNorm)) for layer in lead)
    assert type(deep.layers[len(lead)]) is Dropout
    bn_first = parallel.BatchSlices(Sequential([BatchNorm(1), Flatten(), Affine(784, 10, rng=0)]))
    assert bn_first._leading_sliceable() is None
    x, t = _batch()
    bn_first.loss(x, t)
    bn_first.backward()  # runs whole; no slices
    assert not bn_first._sliced_step


def test_one_conv_is_not_sliced_its_work_is_one_big_gemm(monkeypatch):
    monkeypatch.setenv(parallel.ENV_THREADS, "2")
    x, t = _batch()
    one_conv = parallel.BatchSlices(models.build("one_conv"))
    one_conv.loss(x, t)
    assert not one_conv._sliced_step
    simple = parallel.BatchSlices(models.build("simple_convnet"))
    simple.loss(x, t)
    assert simple._sliced_step
    assert parallel.training_slices(100, 100, 76) == 1 and parallel.training_slices(100, 100, 75) == 2


def test_input_gradient_of_a_sliced_batch_is_the_whole_batch_one(monkeypatch):
    def net():
        return Sequential([Conv2D(1, 4, 3, rng=0), ReLU(), MaxPool2D(2), Flatten(), Affine(4 * 13 * 13, 10, rng=1)],
                          input_grad=True)
    x, t = _batch()
    monkeypatch.setenv(parallel.ENV_THREADS, "1")
    _, _, dx1 = _step(net(), x, t)
    monkeypatch.setenv(parallel.ENV_THREADS, "2")
    _, _, dx2 = _step(net(), x, t)
    np.testing.assert_allclose(dx2, dx1, rtol=1e-5, atol=1e-7)


def test_the_model_alone_never_slices(monkeypatch):
    monkeypatch.setenv(parallel.ENV_THREADS, "2")
    model = models.build("simple_convnet", seed=0)
    x, t = _batch()
    _step(model, x, t)                           # sliced, through BatchSlices
    monkeypatch.setattr(parallel, "_run_parallel", lambda tasks: pytest.fail("sliced"))
    model.loss(x[:20], t[:20])
    model.backward()                             # the layers' own caches, 20 images
    assert model.layers[0].grads["W"].shape == model.layers[0].params["W"].shape


def test_replicas_share_parameters_and_keep_their_own_state():
    conv = Conv2D(1, 2, 3, rng=0)
    twin = conv.replica()
    assert twin.params is conv.params and twin.grads is not conv.grads
    model = models.build("simple_convnet", seed=0)
    sliced = parallel.BatchSlices(model)._leading_sliceable()
    stacks = sliced._slice_layers(2)
    model.load_state_dict(models.build("simple_convnet", seed=1).state_dict())
    stacks = sliced._slice_layers(2)
    for layer, twin in zip(*stacks):
        assert twin.params is layer.params and twin is not layer


def test_flush_denormals_reaches_the_slice_threads():
    """Subnormals flush to zero on the calling thread and on every slice thread, and the
    previous setting comes back."""
    from cnn_xp import dispatch
    if dispatch.accelerator("cpu")[0] is None:
        assert parallel.flush_denormals(True) is False  # no extension: nothing to set
        return
    tiny = np.full(4, 1e-39, dtype=np.float32)           # subnormal in float32

    def halves(part):
        return part * np.float32(0.5)                    # subnormal * 0.5: 0 when flushed

    x = np.tile(tiny, (32, 1))
    previous = parallel.flush_denormals(True)
    try:
        assert (tiny * np.float32(0.5) == 0).all()
        assert (parallel.map_slices(halves, x, 2) == 0).all()
    finally:
        parallel.flush_denormals(previous)
    assert (tiny * np.float32(0.5) != 0).all()
    assert (parallel.map_slices(halves, x, 2) != 0).all()


def test_cpu_training_runs_flush_denormals_and_restore_them(monkeypatch, tmp_path):
    calls = []
    real = parallel.flush_denormals
    monkeypatch.setattr(parallel, "flush_denormals", lambda enabled=True: calls.append(enabled) or real(enabled))
    from tiny_idx import write_dataset
    data = write_dataset(tmp_path / "data", n_train=40, n_test=20)
    assert cli.main(["train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", str(data), "--epochs", "1",
                     "--out", str(tmp_path / "run"), "--no-download", "--no-progress"]) == 0
    assert calls[0] is True and len(calls) == 2   # on for the run, then the previous setting
