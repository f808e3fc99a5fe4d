#!/usr/bin/env python3
"""Replay seed 000's one-conv MNIST run, every random draw included, and print its log.

Seed 000 (chapter 8's one-conv network) seeds NumPy's legacy generator once,
``np.random.seed(1)``, shuffles the 60,000 training indices (the first 50,000 train, the
last 10,000 validate), then draws from the same stream ``kernels`` (9, 16), ``w_2_3``
(3136, 512) and ``w_3_4`` (512, 10), each ``0.2 * random - 0.1``, with zero biases. It
trains 100 epochs in one fixed batch order (batch 100, SGD 0.5, conv steps / 784) and logs
epochs 0, 20, 40, 60, 80 and 99, then the test set.

This script draws the same numbers, lays them out as ``one_conv``'s parameters (kernel k
is column k; ``w_2_3``'s rows run over (row, col, channel), ours over (channel, row,
col)), trains them with the zoo's ``one_conv`` optimizer (SGD 0.5, conv steps / 784; not
the zoo's random shifts, which the seed does not have) on the same batches in the same
order, and prints the seed's lines. ``--stream-seed`` replays the same procedure from another
``np.random.seed``. Float64 by default, as the seed computes.

    python scripts/replay_seed000.py --data-dir ../shared/datasets/mnist [--epochs 100]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from cnn_xp import data, evaluate, fit, models  # noqa: E402
from cnn_xp.callbacks import Callback  # noqa: E402

VAL_SIZE = 10_000


def seed_000_draws(stream_seed: int = 1, n_images: int = 60_000):
    """(shuffled indices (n_images,), one_conv's state dict (float64)) from seed 000's
    legacy stream, in the seed's order of draws."""
    np.random.seed(stream_seed)
    index = np.arange(n_images)
    np.random.shuffle(index)
    kernels = 0.2 * np.random.random((9, 16)) - 0.1
    w_2_3 = 0.2 * np.random.random((16 * 14 * 14, 512)) - 0.1
    w_3_4 = 0.2 * np.random.random((512, 10)) - 0.1
    # our row (c, h, w) is the seed's row (h, w, c)
    seed_row_of_ours = np.arange(16 * 14 * 14).reshape(14, 14, 16).transpose(2, 0, 1).ravel()
    state = {"0.W": kernels.T.reshape(16, 1, 3, 3), "0.b": np.zeros(16),
             "3.W": w_2_3[seed_row_of_ours], "3.b": np.zeros(512),
             "5.W": w_3_4, "5.b": np.zeros(10)}
    return index, state


def replay(dataset, epochs: int = 100, stream_seed: int = 1, dtype: str = "float64", out=sys.stdout):
    """Train as seed 000 did; returns (test loss, test accuracy)."""
    images = data.to_float(dataset.train_images, dtype)
    labels = dataset.train_labels
    index, state = seed_000_draws(stream_seed, len(images))
    train_idx, val_idx = index[:-VAL_SIZE], index[-VAL_SIZE:]
    x_val, t_val = images[val_idx], labels[val_idx]
    model = models.build("one_conv", dtype=dtype)
    model.load_state_dict(state)
    optimizer = models.build_optimizer("one_conv", model)

    class SeedLog(Callback):
        """The seed's log line at epochs 0, 20, 40, ... and the last (the seed counts from 0)."""

        def on_epoch_end(self, epoch, logs):
            if (epoch - 1) % 20 and epoch != epochs:
                return
            val = evaluate(model, (x_val, t_val))
            error, acc, val_error, val_acc = logs["train_loss"], logs["train_acc"], val["loss"], val["accuracy"]
            print(f"e:{epoch - 1:3d}; Train_Err: {error:0.2f}; Train_Acc: {acc:0.2f}; "
                  f"Val_Err: {val_error:0.2f}; Val_Acc: {val_acc:0.3f}  "
                  f"(train acc {acc:.4f}, val acc {val_acc:.4f})", file=out, flush=True)

    # the seed's batches: its shuffled split, in the same order every epoch; no schedule, no augmentation
    fit(model, optimizer, (images[train_idx], labels[train_idx]), epochs=epochs,
        batch_size=models.get_spec("one_conv").batch_size, shuffle=False, callbacks=[SeedLog()], verbose=False)
    test = evaluate(model, (data.to_float(dataset.test_images, dtype), dataset.test_labels))
    test_loss, test_acc = test["loss"], test["accuracy"]
    print(f"Test Loss: {test_loss:0.3f}  Test Acc: {test_acc:0.3f}  (test acc {test_acc:.4f})", file=out, flush=True)
    return test_loss, test_acc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="replay_seed000.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="folder holding the four MNIST files")
    parser.add_argument("--epochs", type=int, default=100, help="epochs (the seed's: 100)")
    parser.add_argument("--stream-seed", type=int, default=1, help="np.random.seed of the replay (the seed's: 1)")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    try:
        dataset = data.load_dataset("mnist", args.data_dir, download=False, progress=False)
    except data.DatasetError as exc:
        print(f"replay_seed000.py: error: {exc}", file=sys.stderr)
        return 2
    replay(dataset, args.epochs, args.stream_seed, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
