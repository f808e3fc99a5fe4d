"""``cnn_xp.fit`` / ``cnn_xp.evaluate`` as a library: the History, the learning-rate column,
bit-identical continuation from ``Training.state()``, ``shuffle=False``, the evaluation's
fields, and ``cnn_xp.datasets.load`` on a tiny IDX set."""
import json

import numpy as np
import pytest

import cnn_xp
from cnn_xp import models, optim, schedules
from cnn_xp.callbacks import METRICS, Callback
from cnn_xp.training import build_schedule
from train_helpers import data_dir, isolated  # noqa: F401 (fixtures)

BATCH = 50


@pytest.fixture(scope="module")
def tiny(data_dir):
    """The tiny bars: 200 training and 100 test images as ``cnn_xp.datasets.load`` gives them."""
    return cnn_xp.datasets.load("mnist", data_dir=data_dir, download=False)


def fresh(name="simple_convnet", seed=0, optimizer="adam", lr=1e-3):
    model = models.build(name, seed=seed)
    return model, optim.create(optimizer, model, lr=lr)


class Capture(Callback):
    """Keeps a JSON round trip of ``training.state()`` after each epoch, as a checkpoint would."""

    def __init__(self):
        self.states = {}

    def on_epoch_end(self, epoch, logs):
        self.states[epoch] = json.loads(json.dumps(self.training.state()))


def test_datasets_load_on_the_tiny_idx_set(data_dir):
    (x, t), (x_test, t_test) = cnn_xp.datasets.load("mnist", data_dir=data_dir, download=False)
    assert x.shape == (200, 1, 28, 28) and x.dtype == np.float32
    assert x_test.shape == (100, 1, 28, 28) and x_test.dtype == np.float32
    assert t.shape == (200,) and t_test.shape == (100,) and t.dtype == np.int64 and t_test.dtype == np.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.5
    assert set(np.unique(t)) == set(range(10))
    (x64, _), _ = cnn_xp.datasets.load("mnist", data_dir=data_dir, download=False, dtype="float64")
    assert x64.dtype == np.float64 and np.allclose(x64, x)


def test_history_has_every_metric_per_epoch(tiny):
    (x, t), (x_test, t_test) = tiny
    model, opt = fresh()
    history = cnn_xp.fit(model, opt, (x, t), epochs=2, batch_size=BATCH, validation_data=(x_test, t_test),
                         verbose=False)
    assert isinstance(history, cnn_xp.History) and history.epoch == [1, 2] and history.stopped is None
    h = history.history
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
        assert len(h[key]) == 2, key
        assert all(isinstance(v, float) and np.isfinite(v) for v in h[key]), (key, h[key])
    assert set(h) == set(METRICS) - {"epoch"}
    assert all(0 <= a <= 1 for a in h["train_acc"] + h["val_acc"])
    assert h["lr"] == [1e-3, 1e-3]  # constant: the optimizer's rate
    assert [r["epoch"] for r in history.rows] == [1, 2]
    # the validation columns are the model's evaluation on the validation data after the last epoch
    assert h["val_loss"][-1] == pytest.approx(cnn_xp.evaluate(model, (x_test, t_test))["loss"], rel=1e-5)
    assert h["train_loss"][1] < h["train_loss"][0]  # it learns


def test_without_validation_data_the_val_columns_are_none(tiny):
    (x, t), _ = tiny
    model, opt = fresh()
    h = cnn_xp.fit(model, opt, (x, t), epochs=1, batch_size=BATCH, verbose=False).history
    assert h["val_loss"] == [None] and h["val_acc"] == [None]


def test_lr_is_the_mean_scheduled_rate_of_the_epoch(tiny):
    (x, t), _ = tiny
    model, opt = fresh(optimizer="sgd", lr=0.1)
    history = cnn_xp.fit(model, opt, (x, t), epochs=2, batch_size=BATCH, schedule="cosine", verbose=False)
    lrs = history.history["lr"]
    assert lrs[1] < lrs[0] < 0.1
    steps = len(x) // BATCH
    sched = build_schedule("cosine", steps, 2)
    for epoch, lr in enumerate(lrs):
        expected = np.mean([0.1 * sched.factor(s) for s in range(epoch * steps, (epoch + 1) * steps)])
        assert lr == pytest.approx(expected, rel=1e-5), (epoch, lrs)
    # constant: every epoch's column is the rate itself
    model, opt = fresh(optimizer="sgd", lr=0.1)
    assert cnn_xp.fit(model, opt, (x, t), epochs=2, batch_size=BATCH, verbose=False).history["lr"] == [0.1, 0.1]


def test_lr_of_a_warmup_schedule_rises(tiny):
    (x, t), _ = tiny
    model, opt = fresh(optimizer="sgd", lr=0.1)
    lrs = cnn_xp.fit(model, opt, (x, t), epochs=2, batch_size=BATCH, verbose=False,
                     schedule={"name": "constant", "warmup_epochs": 1}).history["lr"]
    assert lrs[0] < lrs[1] == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["simple_convnet", "deep_convnet"])  # deep_convnet: dropout
def test_initial_state_continues_bit_identically(tiny, name):
    (x, t), (x_test, t_test) = tiny
    x, t = x[:100], t[:100]
    options = dict(batch_size=BATCH, validation_data=(x_test[:20], t_test[:20]), seed=5, verbose=False,
                   schedule={"name": "cosine", "epochs": 2}, augment={"shift": 0.1})
    model_a, opt_a = fresh(name, seed=3, optimizer="adagrad", lr=0.01)
    full = cnn_xp.fit(model_a, opt_a, (x, t), epochs=2, **options)

    model_b, opt_b = fresh(name, seed=3, optimizer="adagrad", lr=0.01)
    capture = Capture()
    first = cnn_xp.fit(model_b, opt_b, (x, t), epochs=1, callbacks=[capture], **options)
    assert first.epoch == [1]
    rest = cnn_xp.fit(model_b, opt_b, (x, t), epochs=2, initial_state=capture.states[1], **options)

    assert rest.epoch == [1, 2]  # the resumed history carries the first epoch
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert rest.history[key] == full.history[key], key
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    for key in state_a:
        assert np.array_equal(state_a[key], state_b[key]), key
    for key, value in opt_a.state_dict().items():
        assert np.array_equal(value, opt_b.state_dict()[key]), key
    assert model_a.random_state() == model_b.random_state()


def test_a_continuation_without_the_state_differs(tiny):
    """The control of the test above: restarting at epoch 1 without ``initial_state`` does not
    give the same weights, so the equality there is the state's doing."""
    (x, t), _ = tiny
    x, t = x[:100], t[:100]
    options = dict(batch_size=BATCH, seed=5, verbose=False, schedule={"name": "cosine", "epochs": 2})
    model_a, opt_a = fresh(seed=3)
    cnn_xp.fit(model_a, opt_a, (x, t), epochs=2, **options)
    model_b, opt_b = fresh(seed=3)
    cnn_xp.fit(model_b, opt_b, (x, t), epochs=1, **options)
    cnn_xp.fit(model_b, opt_b, (x, t), epochs=1, **options)
    assert not np.array_equal(model_a.state_dict()["0.W"], model_b.state_dict()["0.W"])


def _batch_order(x, t, shuffle, epochs=2):
    """The sample ids of every training batch, in order (x[i, 0, 0, 0] holds id i)."""
    seen = []

    def record(xb):
        seen.append(np.asarray(xb[:, 0, 0, 0]).copy())
        return xb

    model, opt = fresh(optimizer="sgd", lr=1e-3)
    cnn_xp.fit(model, opt, (x, t), epochs=epochs, batch_size=BATCH, augment=record, shuffle=shuffle,
               verbose=False)
    return [int(round(v * 1000)) for v in np.concatenate(seen)]


def test_shuffle_false_keeps_the_data_order(tiny):
    (x, t), _ = tiny
    x = x[:100].copy()
    x[:, 0, 0, 0] = np.arange(100) / 1000
    in_order = _batch_order(x, t[:100], shuffle=False)
    assert in_order == list(range(100)) * 2
    shuffled = _batch_order(x, t[:100], shuffle=True)
    assert shuffled != in_order and sorted(shuffled[:100]) == list(range(100))


def test_evaluate_returns_loss_accuracy_n_per_class_and_confusion(tiny):
    (x, t), (x_test, t_test) = tiny
    model, opt = fresh()
    cnn_xp.fit(model, opt, (x, t), epochs=2, batch_size=BATCH, verbose=False)
    keep = t_test < 5  # classes 5..9 absent
    xs, ts = x_test[keep], t_test[keep]
    result = cnn_xp.evaluate(model, (xs, ts), batch_size=7)  # batches that do not divide n
    assert result["n"] == int(keep.sum()) == len(result["predicted"])
    assert np.isfinite(result["loss"]) and result["loss"] > 0
    confusion = result["confusion"]
    assert confusion.shape == (10, 10) and int(confusion.sum()) == result["n"]
    assert result["accuracy"] == pytest.approx(np.trace(confusion) / result["n"])
    assert result["accuracy"] == pytest.approx(float((model.predict(xs).argmax(axis=1) == ts).mean()))
    per_class = result["per_class"]
    assert len(per_class) == 10 and per_class[5:] == [None] * 5
    for k in range(5):
        assert per_class[k] == pytest.approx(confusion[k, k] / confusion[k].sum())
    assert (confusion[:, :].sum(axis=1)[5:] == 0).all()
    # evaluate's loss is the model's mean inference loss
    assert result["loss"] == pytest.approx(float(model.loss(xs, ts, train=False)), rel=1e-4)


def test_evaluate_of_no_samples():
    model, _ = fresh()
    result = cnn_xp.evaluate(model, (np.zeros((0, 1, 28, 28), np.float32), np.zeros(0, np.int64)))
    assert result["n"] == 0 and result["loss"] is None and result["accuracy"] is None
    assert result["per_class"] == [None] * 10 and result["confusion"].shape == (10, 10)


def test_the_schedule_module_agrees_with_fit_on_steps():
    """``build_schedule`` turns epochs into steps: cosine over 2 epochs of 4 steps is 8 steps."""
    sched = build_schedule({"name": "cosine", "epochs": 2}, 4, 5)
    assert isinstance(sched, schedules.Schedule) and sched.total_steps == 8
    assert build_schedule("constant", 4, 2) is None
