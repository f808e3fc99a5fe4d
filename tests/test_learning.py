"""A small conv net actually learns: four kinds of bars (horizontal, vertical, and the two
diagonals) at random positions in noisy 8x8 images."""
import numpy as np

from cnn_xp import evaluate, fit, optim
from cnn_xp.layers import Affine, Conv2D, MaxPool2D, ReLU, SoftmaxCrossEntropy
from cnn_xp.model import Sequential

SIZE = 8
CLASSES = 4          # 0 horizontal, 1 vertical, 2 diagonal "\", 3 anti-diagonal "/"


def bars(n, seed):
    """(n, 1, 8, 8) float32 images and int labels; each image has one bar of length 4-6."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.15, (n, 1, SIZE, SIZE))
    t = rng.integers(0, CLASSES, size=n)
    for k in range(n):
        length = int(rng.integers(4, 7))
        r, c = (int(v) for v in rng.integers(0, SIZE - length + 1, size=2))
        fixed = int(rng.integers(0, SIZE))
        for i in range(length):
            if t[k] == 0:
                x[k, 0, fixed, c + i] += 1.0
            elif t[k] == 1:
                x[k, 0, r + i, fixed] += 1.0
            elif t[k] == 2:
                x[k, 0, r + i, c + i] += 1.0
            else:
                x[k, 0, r + i, c + length - 1 - i] += 1.0
    return x.astype(np.float32), t


def test_bars_are_balanced_and_distinct():
    x, t = bars(400, seed=0)
    counts = np.bincount(t, minlength=CLASSES)
    assert counts.min() > 70
    # a pixel-wise linear rule cannot read the class off one position: each class covers the image
    for k in range(CLASSES):
        assert (x[t == k, 0] > 0.5).any(axis=0).mean() > 0.6


def test_small_convnet_learns_bars():
    x_train, t_train = bars(600, seed=1)
    x_test, t_test = bars(300, seed=2)
    model = Sequential([
        Conv2D(1, 8, 3, pad=1, rng=0),
        ReLU(),
        MaxPool2D(2),
        Affine(8 * 4 * 4, CLASSES, rng=1),
    ], loss=SoftmaxCrossEntropy())
    opt = optim.Adam(model, lr=0.01)
    initial_loss = float(model.loss(x_test, t_test, train=False))
    chance_acc = model.accuracy(x_test, t_test)
    history = fit(model, opt, (x_train, t_train), epochs=8, batch_size=30, seed=3, verbose=False)
    result = evaluate(model, (x_test, t_test))
    assert chance_acc < 0.5
    assert result["loss"] < 0.25 * initial_loss, (initial_loss, result["loss"])
    losses = history.history["train_loss"]
    assert losses[-1] < 0.25 * losses[0], losses
    assert result["accuracy"] >= 0.9, result["accuracy"]  # chance is 0.25
