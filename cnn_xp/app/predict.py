"""Turn real image files into MNIST-style inputs, and classify them with a trained model.

MNIST digits are white ink on black, fitted into a 20x20 box (aspect kept) and placed in a
28x28 field so that their centre of mass is at the centre. :func:`preprocess_image` does the
same to any PNG/JPEG with Pillow: grayscale, invert a light background, crop to the ink,
fit in 20x20, centre by mass.
"""
from __future__ import annotations

import os

import numpy
from PIL import Image, ImageOps, UnidentifiedImageError

from .. import backend
from ..ops import softmax

FIELD = 28  # output side
BOX = 20  # the ink's bounding box is scaled to fit in BOX x BOX
INK_THRESHOLD = 0.2  # fraction of the peak ink level that counts as ink for the bounding box
MIN_CONTRAST = 25.0  # ink must differ from the background by this much (0..255) somewhere


class ImageError(ValueError):
    """An image file cannot be read or holds no visible ink."""


def _open_gray(path) -> numpy.ndarray:
    """The image as float32 (H, W) luminance in 0..255; transparency flattened sensibly."""
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = numpy.asarray(rgba.getchannel("A"), dtype=numpy.float32)
        gray = numpy.asarray(rgba.convert("L"), dtype=numpy.float32)
        if alpha.min() < 255.0:
            # Drawn strokes on a transparent sheet: put them on the opposite shade.
            opaque = alpha > 128.0
            ink_is_dark = float(gray[opaque].mean()) < 128.0 if opaque.any() else True
            backdrop = 255.0 if ink_is_dark else 0.0
            return gray * (alpha / 255.0) + backdrop * (1.0 - alpha / 255.0)
        return gray
    return numpy.asarray(img.convert("L"), dtype=numpy.float32)


def _border_level(gray: numpy.ndarray) -> float:
    """Median of the outer frame (about 5% of each side, at least one pixel)."""
    h, w = gray.shape
    bh, bw = max(1, h // 20), max(1, w // 20)
    frame = numpy.concatenate([gray[:bh].ravel(), gray[-bh:].ravel(), gray[:, :bw].ravel(), gray[:, -bw:].ravel()])
    return float(numpy.median(frame))


def preprocess_array(gray: numpy.ndarray, name: str = "image") -> numpy.ndarray:
    """MNIST-style (28, 28) float32 in [0, 1], ink bright, from a (H, W) 0..255 luminance array."""
    gray = numpy.asarray(gray, dtype=numpy.float32)
    background = _border_level(gray)
    if background > 127.5:  # dark ink on a light sheet: make the ink bright, like MNIST
        gray = 255.0 - gray
        background = 255.0 - background
    ink = numpy.clip(gray - background, 0.0, None)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise ImageError(f"{name}: no ink found (the image is blank or has no contrast)")
    ink /= peak
    rows = numpy.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    cols = numpy.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    pil = Image.fromarray(numpy.round(crop * 255.0).astype(numpy.uint8), mode="L")
    fitted = numpy.asarray(pil.resize((new_w, new_h), Image.Resampling.LANCZOS), dtype=numpy.float32) / 255.0
    total = float(fitted.sum())
    ys, xs = numpy.indices(fitted.shape)
    cy = float((ys * fitted).sum()) / total if total > 0 else (new_h - 1) / 2
    cx = float((xs * fitted).sum()) / total if total > 0 else (new_w - 1) / 2
    centre = (FIELD - 1) / 2
    top = min(max(int(round(centre - cy)), 0), FIELD - new_h)
    left = min(max(int(round(centre - cx)), 0), FIELD - new_w)
    out = numpy.zeros((FIELD, FIELD), dtype=numpy.float32)
    out[top:top + new_h, left:left + new_w] = fitted
    return numpy.clip(out, 0.0, 1.0)


def preprocess_image(path) -> numpy.ndarray:
    """Read one image file (PNG/JPEG/..., any size, dark or light background) into a
    MNIST-style (28, 28) float32 array in [0, 1] with bright ink on black."""
    return preprocess_array(_open_gray(path), name=os.fspath(path))


def load_images(paths) -> numpy.ndarray:
    """Preprocess several files into an (N, 1, 28, 28) float32 batch."""
    return numpy.stack([preprocess_image(p) for p in paths])[:, None, :, :]


def classify(model, batch: numpy.ndarray) -> numpy.ndarray:
    """Class probabilities (N, K) on the host for an (N, 1, 28, 28) host batch."""
    x = backend.to_device(batch.astype(model.dtype, copy=False), model.device)
    return backend.to_numpy(softmax(model.predict(x, train=False)))
