"""Figures of a training run (matplotlib, Agg backend), each written atomically as PNG."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy  # noqa: E402

from ..atomic import atomic_open  # noqa: E402


def _save(fig, path) -> None:
    """Save ``fig`` as PNG at ``path`` via a temp file in the same folder."""
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)


def _column(history: list[dict], key: str) -> list[float]:
    values = []
    for row in history:
        value = row.get(key)
        values.append(float("nan") if value in (None, "") else float(value))
    return values


def plot_curves(history: list[dict], path, title: str = "", validation_label: str = "validation") -> None:
    """Loss (left) and accuracy (right) per epoch; ``history`` rows carry
    ``epoch, train_loss, train_acc, val_loss, val_acc`` (val may be None), drawn as
    ``validation_label``."""
    epochs = [int(row["epoch"]) for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, _column(history, f"train_{key}"), marker="o", label="train")
        val = _column(history, f"val_{key}")
        if any(not math.isnan(v) for v in val):
            ax.plot(epochs, val, marker="s", linestyle="--", label=validation_label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax_loss.set_title("loss per epoch")
    ax_acc.set_title("accuracy per epoch")
    if title:
        fig.suptitle(title)
    _save(fig, path)


BACKGROUND = (0.69, 0.77, 0.87)  # between tiles (light steel blue)


def filter_mosaic(weights: numpy.ndarray, columns: int = 10, gap: int = 1) -> numpy.ndarray:
    """Tile filters W (out, in, kh, kw) into one image in [0, 1]: 2-D (channel 0) for
    greyscale input, (H, W, 3) RGB for colour input (in = 3).

    Each filter is scaled on its own, min to 0 (black) and max to 1 (white); tiles are
    separated by ``gap`` pixels of NaN (2-D, drawn as the background) or of BACKGROUND (RGB)."""
    w = numpy.asarray(weights, dtype=numpy.float32)
    colour = w.shape[1] == 3
    w = w.transpose(0, 2, 3, 1) if colour else w[:, 0]
    n, kh, kw = w.shape[:3]
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    shape = (rows * (kh + gap) - gap, cols * (kw + gap) - gap)
    if colour:
        mosaic = numpy.empty((*shape, 3), dtype=numpy.float32)
        mosaic[...] = BACKGROUND
    else:
        mosaic = numpy.full(shape, numpy.nan, dtype=numpy.float32)
    for i in range(n):
        f = w[i]
        span = float(f.max() - f.min())
        tile = (f - f.min()) / span if span > 0 else numpy.full_like(f, 0.5)
        r, c = divmod(i, cols)
        mosaic[r * (kh + gap):r * (kh + gap) + kh, c * (kw + gap):c * (kw + gap) + kw] = tile
    return mosaic


def plot_filters(before: numpy.ndarray, after: numpy.ndarray, path, columns: int = 10) -> None:
    """First-layer filters before (left) and after (right) training, as in seed 002's
    figure 7-24: each filter from its own min (black) to max (white), in colour when the
    input is RGB, else grey. ``before``/``after``: conv weights (out, in, kh, kw)."""
    left, right = filter_mosaic(before, columns), filter_mosaic(after, columns)
    height = 4.0 * left.shape[0] / left.shape[1] + 0.8
    fig, axes = plt.subplots(1, 2, figsize=(10, height))
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="#b0c4de")
    for ax, mosaic, label in ((axes[0], left, "before training"), (axes[1], right, "after training")):
        ax.imshow(mosaic, cmap=None if mosaic.ndim == 3 else cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(label)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"first-layer filters ({numpy.asarray(before).shape[0]} x "
                 f"{numpy.asarray(before).shape[2]}x{numpy.asarray(before).shape[3]})")
    _save(fig, path)


def plot_confusion(matrix: numpy.ndarray, path, class_names: list[str] | None = None, title: str = "") -> None:
    """Confusion matrix (rows: true class, columns: predicted class) with counts in cells."""
    matrix = numpy.asarray(matrix)
    k = matrix.shape[0]
    names = class_names or [str(i) for i in range(k)]
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black")
    ax.set_title(title or "test confusion matrix")
    _save(fig, path)
