"""one_conv's zoo recipe is seed 000's training, step for step.

Seed 000's code (its ``conv_reshape``, ``conv_2d``, ``maxpool``, ``maxpool_2_deriv`` and
update lines) is transcribed here as it runs, in float64 and with the seed's layouts:
im2col rows (image, row, col) x 9 taps, kernels (9, 16), maps (N, 28, 28, 16), the pooled
map flattened in (row, col, channel) order. The one change: the pool backward writes each
window's gradient to its own row, ``delta_k[arange(n), argmax]``. As printed,
``delta_k[:, argmax]`` gives every window of a channel the same four values, which trains
to 66% after one epoch where the seed logs 88%; replaying the seed's random stream with
the per-window form reproduces its log (docs/mnist.md).
"""
import numpy as np

from cnn_xp import models, parallel


def relu(x):
    return (x > 0) * x


def relu2deriv(x):
    return x > 0


def softmax(x):
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def conv_reshape(images):
    """(N, 28, 28) -> (N * 784, 9): the seed's padded 3x3 sections."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    sections = [padded[:, r:r + 3, c:c + 3].reshape(-1, 1, 3, 3) for r in range(28) for c in range(28)]
    expanded = np.concatenate(sections, axis=1)
    return expanded.reshape(expanded.shape[0] * expanded.shape[1], -1)


def maxpool(layer, n):
    """(N * 784, 16) -> ((N, 14, 14, 16), per-kernel argmax over each window's 4 values)."""
    layer = layer.reshape(n, 28, 28, 16)
    out, argmax = np.zeros((n, 14, 14, 16)), []
    for k in range(16):
        sections = [layer[:, r:r + 2, c:c + 2, k].reshape(-1, 1, 2, 2)
                    for r in range(0, 27, 2) for c in range(0, 27, 2)]
        windows = np.concatenate(sections, axis=1).reshape(-1, 4)
        out[:, :, :, k] = windows.max(axis=1).reshape(n, 14, 14)
        argmax.append(windows.argmax(axis=1))
    return out, argmax


def maxpool_2_deriv(delta, argmax, n):
    """(N, 3136) -> (N, 28, 28, 16): each window's gradient to its maximum."""
    delta_conv = np.zeros((n, 28, 28, 16))
    delta = delta.reshape(n, 14, 14, 16)
    for k in range(16):
        delta_k = np.zeros((n * 196, 4))
        delta_k[np.arange(n * 196), argmax[k]] = delta[:, :, :, k].flatten()
        delta_k = delta_k.reshape(n, 196, 4)
        row = 0
        for r in range(0, 27, 2):
            for c in range(0, 27, 2):
                delta_conv[:, r:r + 2, c:c + 2, k] = delta_k[:, row].reshape(n, 2, 2)
                row += 1
    return delta_conv


class Seed000:
    """The seed's parameters and its training step (lr 0.5, conv steps / (28 * 28))."""

    def __init__(self, state):
        self.kernels = state["0.W"].reshape(16, 9).T.copy()
        self.b_kernels = state["0.b"].reshape(1, 16).copy()
        self.w_2_3 = state["3.W"][HWC_TO_CHW].copy()
        self.b_2_3 = state["3.b"].reshape(1, -1).copy()
        self.w_3_4 = state["5.W"].copy()
        self.b_3_4 = state["5.b"].reshape(1, -1).copy()

    def step(self, images, labels, lr=0.5):
        n = len(images)
        layer_0 = conv_reshape(images)
        layer_1 = relu(layer_0 @ self.kernels + self.b_kernels)
        layer_2, argmax = maxpool(layer_1, n)
        layer_2 = layer_2.reshape(n, -1)
        layer_3 = relu(layer_2 @ self.w_2_3 + self.b_2_3)
        layer_4 = softmax(layer_3 @ self.w_3_4 + self.b_3_4)
        loss = -np.log(layer_4[np.arange(n), labels]).mean()
        layer_4_delta = (layer_4 - np.eye(10)[labels]) / n
        layer_3_delta = layer_4_delta @ self.w_3_4.T * relu2deriv(layer_3)
        layer_2_delta = maxpool_2_deriv(layer_3_delta @ self.w_2_3.T, argmax, n)
        layer_1_delta = layer_2_delta.reshape(layer_1.shape) * relu2deriv(layer_1)
        self.b_3_4 -= lr * layer_4_delta.sum(axis=0, keepdims=True)
        self.b_2_3 -= lr * layer_3_delta.sum(axis=0, keepdims=True)
        self.b_kernels -= lr * layer_1_delta.sum(axis=0, keepdims=True) / (28 * 28)
        self.w_3_4 -= lr * layer_3.T @ layer_4_delta
        self.w_2_3 -= lr * layer_2.T @ layer_3_delta
        self.kernels -= lr * layer_0.T @ layer_1_delta / (28 * 28)
        return loss


# row i of the seed's w_2_3 ((row, col, channel) order) is row HWC_TO_CHW[i] of our 3.W
HWC_TO_CHW = np.arange(16 * 14 * 14).reshape(16, 14, 14).transpose(1, 2, 0).ravel()


def test_one_conv_trains_as_seed_000s_code():
    model = models.build("one_conv", seed=4, dtype="float64")
    optimizer = models.build_optimizer("one_conv", model)
    steps = parallel.BatchSlices(model)  # what the trainer runs
    seed = Seed000(model.state_dict())
    rng = np.random.default_rng(0)
    for _ in range(6):
        # MNIST-like: mostly zeros, strokes in [0, 1]
        images = rng.random((12, 28, 28)) * (rng.random((12, 28, 28)) < 0.3)
        labels = rng.integers(0, 10, 12)
        theirs = seed.step(images, labels)
        ours = float(steps.loss(images.reshape(12, 1, 28, 28), labels))
        steps.backward()
        optimizer.step()
        assert abs(ours - theirs) < 1e-12
    state = model.state_dict()
    np.testing.assert_allclose(state["0.W"].reshape(16, 9).T, seed.kernels, rtol=0, atol=1e-13)
    np.testing.assert_allclose(state["0.b"], seed.b_kernels.ravel(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(state["3.W"][HWC_TO_CHW], seed.w_2_3, rtol=0, atol=1e-13)
    np.testing.assert_allclose(state["3.b"], seed.b_2_3.ravel(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(state["5.W"], seed.w_3_4, rtol=0, atol=1e-13)
    np.testing.assert_allclose(state["5.b"], seed.b_3_4.ravel(), rtol=0, atol=1e-13)
    # the conv layer did move: the test compares training, not two frozen copies
    assert np.abs(state["0.W"] - models.build("one_conv", seed=4, dtype="float64").state_dict()["0.W"]).max() > 1e-6


def load_replay_script():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / "replay_seed000.py"
    spec = importlib.util.spec_from_file_location("replay_seed000", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_replay_lays_out_the_seeds_own_draws():
    """scripts/replay_seed000.py's state is the seed's raw draws in our layout: the seed's
    net built from it holds exactly the arrays ``np.random.seed(1)`` gives the seed."""
    replay = load_replay_script()
    index, state = replay.seed_000_draws(1)
    np.random.seed(1)
    expected_index = np.arange(60_000)
    np.random.shuffle(expected_index)
    kernels = 0.2 * np.random.random((9, 16)) - 0.1
    w_2_3 = 0.2 * np.random.random((3136, 512)) - 0.1
    w_3_4 = 0.2 * np.random.random((512, 10)) - 0.1
    assert np.array_equal(index, expected_index)
    seed = Seed000(state)
    assert np.array_equal(seed.kernels, kernels)
    assert np.array_equal(seed.w_2_3, w_2_3)
    assert np.array_equal(seed.w_3_4, w_3_4)
    assert not seed.b_kernels.any() and not seed.b_2_3.any() and not seed.b_3_4.any()
    model = models.build("one_conv", dtype="float64")
    model.load_state_dict(state)  # fits the zoo's net


def test_replay_prints_the_seeds_log_lines():
    import io
    from cnn_xp.data import Dataset
    replay = load_replay_script()
    rng = np.random.default_rng(1)
    n = 10_200  # 10,000 validate, 200 train: two batches
    images = (rng.random((n, 1, 28, 28)) * 255).astype(np.uint8)
    dataset = Dataset("mnist", images, rng.integers(0, 10, n), images[:300], rng.integers(0, 10, 300),
                      tuple(str(d) for d in range(10)))
    out = io.StringIO()
    loss, acc = replay.replay(dataset, epochs=2, out=out)
    lines = out.getvalue().splitlines()
    assert [line.split(";")[0] for line in lines[:2]] == ["e:  0", "e:  1"]
    assert lines[-1].startswith("Test Loss: ") and 0.0 <= acc <= 1.0 and loss > 0
