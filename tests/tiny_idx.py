"""Tiny learnable data sets written as IDX files, and digit-like test images.

Class k is a bright 8x4 bar at a position that depends on k, on faint noise: a small net
learns it in a few epochs, so end-to-end runs finish in seconds.
"""
from __future__ import annotations

import numpy as np

import data_helpers


def bar_images(labels, rng) -> np.ndarray:
    """(N, 28, 28) uint8 images, one class-dependent bar each."""
    images = (rng.random((len(labels), 28, 28)) * 40).astype(np.uint8)
    for i, k in enumerate(labels):
        row, col = 4 + (int(k) // 5) * 12, 2 + (int(k) % 5) * 5
        images[i, row:row + 8, col:col + 4] = 230
    return images


def write_dataset(folder, n_train: int = 200, n_test: int = 100, seed: int = 0, gz: bool = False) -> str:
    """Write the four MNIST-named IDX files of a tiny learnable data set into ``folder``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = bar_images(labels, rng), labels
    data_helpers.write_dataset(folder, arrays, gz=gz)
    return str(folder)


def draw_digit_one(path, size=(240, 320), dark_on_light: bool = True, offset=(0, 0), fmt=None) -> str:
    """A thick, slanted stroke like a handwritten "1" (with a small flag), anywhere on a canvas."""
    from PIL import Image, ImageDraw  # here: the IDX helpers above run without Pillow (tests/gpu)

    w, h = size
    ink, paper = (20, 255) if dark_on_light else (245, 10)
    img = Image.new("L", size, paper)
    draw = ImageDraw.Draw(img)
    dx, dy = offset
    top, bottom = (w * 0.55 + dx, h * 0.2 + dy), (w * 0.45 + dx, h * 0.8 + dy)
    draw.line([top, bottom], fill=ink, width=max(3, w // 12))
    draw.line([top, (w * 0.42 + dx, h * 0.3 + dy)], fill=ink, width=max(2, w // 20))
    img.save(path, format=fmt)
    return str(path)


def tiny_digits(folder, count: int) -> list[str]:
    """``count`` small PNG strokes (16x16, a few hundred bytes each), written fast."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        img = Image.new("L", (16, 16), 255)
        img.paste(0, (6 + i % 3, 2, 9 + i % 3, 14))
        img.save(folder / f"d{i:05d}.png")
        paths.append(str(folder / f"d{i:05d}.png"))
    return paths
