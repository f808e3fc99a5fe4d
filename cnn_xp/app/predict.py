"""Turn real image files into a model's inputs, and classify them with a trained model.

A model trained on a ``"resize"`` data set (CIFAR-10, image folders) gets each file
converted to its channels, resized to its H x W and normalised as in training
(:func:`resized_image`). MNIST and Fashion-MNIST models get MNIST's own preparation:

MNIST digits are white ink on black, fitted into a 20x20 box (aspect kept) and placed in a
28x28 field so that their centre of mass is at the centre. :func:`preprocess_image` does the
same to any PNG/JPEG with Pillow: grayscale, invert a light background, crop to the ink,
fit in 20x20, centre by mass.

Image files are untrusted input. Only regular files are opened (a FIFO or a device is
refused from its ``stat``); only common raster formats are decoded (``FORMATS``: no EPS,
whose Pillow plugin runs Ghostscript); an image whose header states more than ``MAX_PIXELS``
pixels (50 megapixels, e.g. 8660x5773) is refused from the header, before any pixel is
decoded, which also stops decompression bombs (a tiny PNG claiming 13000x13000). Larger
accepted images are decoded at reduced scale where the format allows it (JPEG) and reduced
to at most ``WORK_SIDE`` pixels a side before any float copy is made, so memory stays
bounded. Any failure is an :class:`ImageError` naming the file (as ``display_path`` shows
it: a name holding a newline or another control character appears escaped).
"""
from __future__ import annotations

import os

import numpy
from PIL import Image

from .. import backend
from ..data.images import _ALPHA_MODES, MAX_PIXELS, ImageError, decode  # noqa: F401  (ImageError: re-exported)
from ..input_files import display_path
from ..ops import softmax

FIELD = 28  # output side
BOX = 20  # the ink's bounding box is scaled to fit in BOX x BOX
INK_THRESHOLD = 0.2  # fraction of the peak ink level that counts as ink for the bounding box
MIN_CONTRAST = 25.0  # ink must differ from the background by this much (0..255) somewhere
BATCH = 256  # files decoded and classified together by classify_files


def _open_gray(path) -> numpy.ndarray:
    """The image as float32 (H, W) luminance in 0..255; transparency flattened sensibly."""
    img = decode(path)
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
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
    """MNIST-style (28, 28) float32 in [0, 1], ink bright, from a (H, W) 0..255 luminance array.

    ImageError when ``gray`` is not a non-empty 2-D array of finite real numbers, or holds no ink.
    """
    try:
        gray = numpy.asarray(gray)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ImageError(f"{name}: not a luminance array ({exc})") from None
    if gray.dtype.kind not in "biuf":
        raise ImageError(f"{name}: not a luminance array (dtype {gray.dtype})")
    if gray.ndim != 2 or gray.size == 0:
        raise ImageError(f"{name}: expected a non-empty (H, W) luminance array, got shape {gray.shape}")
    if gray.size > MAX_PIXELS:
        raise ImageError(f"{name}: {gray.shape[1]}x{gray.shape[0]} pixels is more than the "
                         f"{MAX_PIXELS // 1_000_000} megapixel limit")
    with numpy.errstate(over="ignore", invalid="ignore"):
        gray = gray.astype(numpy.float32)  # beyond float32's range becomes inf: refused below
    if not numpy.isfinite(gray).all():
        raise ImageError(f"{name}: the luminance array holds NaN or infinite values")
    gray = numpy.clip(gray, 0.0, 255.0)
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
    return preprocess_array(_open_gray(path), name=display_path(path))


def load_images(paths) -> numpy.ndarray:
    """Preprocess several files into an (N, 1, 28, 28) float32 batch (ImageError on the first bad one)."""
    return numpy.stack([preprocess_image(p) for p in paths])[:, None, :, :]


def resized_image(path, description) -> numpy.ndarray:
    """One image file as the model's input (C, H, W) float32 for a ``"resize"`` data set:
    converted to its channels, resized (antialiased) to its H x W, normalised as it was."""
    from ..data import to_input

    channels, height, width = description.input_shape
    img = decode(path)
    img = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.LANCZOS)
    array = numpy.asarray(img, dtype=numpy.uint8)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return to_input(array[None], description.normalization)[0]


def preparer(description=None):
    """The function that turns an image file into the model's input (C, H, W): MNIST's own
    preparation (``"mnist"``, also with no description), else :func:`resized_image`."""
    if description is None or description.preprocess == "mnist":
        return lambda path: preprocess_image(path)[None]
    return lambda path: resized_image(path, description)


def classify_files(model, paths, batch_size: int = BATCH, description=None):
    """Yield (path, class probabilities (K,) or None, error message or None) for each path, in
    order, as each batch is answered; each file prepared for ``description``'s data
    (:func:`preparer`).

    Files are decoded and classified ``batch_size`` at a time and a batch is dropped once its
    answers are yielded, so memory stays flat however many files there are (``paths`` may be
    any iterable, read as it goes). A bad file gets its ImageError message and does not stop
    the others. On the CPU the batches run on every core (``parallel.runner_for``, which reads
    ``$CNN_XP_THREADS``: a bad value is refused before any file is read).
    """
    from .. import parallel

    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    prepare = preparer(description)
    runner = parallel.runner_for(model)
    window: list[tuple[str, numpy.ndarray | None, str | None]] = []
    for path in paths:
        try:
            window.append((os.fspath(path), prepare(path), None))
        except ImageError as exc:
            window.append((os.fspath(path), None, str(exc)))
        if len(window) == batch_size:
            yield from _answer(model, runner, window)
            window = []
    yield from _answer(model, runner, window)


def _answer(model, runner, window):
    """The answers of one window of (path, image or None, error or None); the window is emptied."""
    images = [image for _, image, _ in window if image is not None]
    probs = iter(classify(model, numpy.stack(images), runner) if images else ())
    answers = [(path, None if image is None else next(probs), error) for path, image, error in window]
    window.clear()
    del images
    yield from answers


def classify(model, batch: numpy.ndarray, runner=None) -> numpy.ndarray:
    """Class probabilities (N, K) on the host for an (N, C, H, W) host batch (through
    ``runner``, e.g. ``parallel.runner_for(model)``, when given)."""
    x = backend.to_device(batch.astype(model.dtype, copy=False), model.device)
    return backend.to_numpy(softmax((runner or model).predict(x, train=False)))
