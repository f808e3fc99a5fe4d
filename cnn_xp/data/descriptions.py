"""What a model needs to know of its data: :class:`DataDescription`.

A description holds the data set's name, the input shape (C, H, W), the class names, the
normalisation and how ``predict`` prepares an image file. Every checkpoint stores it, and
everything downstream reads it: the zoo (input shape, class count), training, ``evaluate``,
``predict``'s preprocessing, the plots and the checkpoint checks.

Normalisation: images are bytes scaled to [0, 1] (``x / 255``), then, with ``mean`` and
``std`` (one value per channel, measured on the training split), ``(x - mean) / std``.
MNIST and Fashion-MNIST keep plain [0, 1] inputs (``normalization=None``), the inputs their
zoo recipes were tuned on; CIFAR-10 and image folders are normalised per channel.

``preprocess``: ``"mnist"`` for MNIST's own preparation of a photo or scan (dark ink on a
light background found, cropped to its bounding box and centred in 28x28, as in the data
set); ``"resize"``: the image converted to the data set's channels and resized
(antialiased) to its H x W.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

PREPROCESSING = ("mnist", "resize")
MAX_CLASSES = 10_000
MAX_CLASS_NAME = 64


@dataclass(frozen=True)
class DataDescription:
    """See the module docstring."""

    name: str
    input_shape: tuple  # (C, H, W)
    class_names: tuple
    normalization: dict | None = None  # {"mean": [C floats], "std": [C floats]}
    preprocess: str = "resize"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return {"name": self.name, "input_shape": list(self.input_shape), "class_names": list(self.class_names),
                "normalization": None if self.normalization is None else
                {k: list(v) for k, v in self.normalization.items()},
                "preprocess": self.preprocess}

    @classmethod
    def from_dict(cls, data, where: str = "data") -> "DataDescription":
        """A description read back (e.g. from a checkpoint); ValueError naming ``where.field``."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object, got {type(data).__name__}")
        name, shape, names = data.get("name"), data.get("input_shape"), data.get("class_names")
        if not isinstance(name, str) or not name or not name.isprintable():
            raise ValueError(f"{where}.name must be a printable name")
        if not (isinstance(shape, list) and len(shape) == 3 and all(
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 4096 for d in shape)):
            raise ValueError(f"{where}.input_shape must be [C, H, W], each 1..4096")
        if not (isinstance(names, list) and 2 <= len(names) <= MAX_CLASSES and all(
                isinstance(n, str) and 0 < len(n) <= MAX_CLASS_NAME and n.isprintable() for n in names)):
            raise ValueError(f"{where}.class_names must be a list of 2..{MAX_CLASSES} printable names "
                             f"(1..{MAX_CLASS_NAME} characters each)")
        norm = data.get("normalization")
        if norm is not None:
            ok = isinstance(norm, dict) and set(norm) == {"mean", "std"} and all(
                isinstance(norm[k], list) and len(norm[k]) == shape[0] and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in norm[k])
                for k in ("mean", "std")) and all(v > 0 for v in norm["std"])
            if not ok:
                raise ValueError(f"{where}.normalization must be {{mean, std}} with {shape[0]} finite values each "
                                 f"(std > 0), or null")
        if data.get("preprocess") not in PREPROCESSING:
            raise ValueError(f"{where}.preprocess must be one of {', '.join(PREPROCESSING)}")
        return cls(name, tuple(shape), tuple(names), None if norm is None else
                   {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]},
                   data["preprocess"])


MNIST = DataDescription("mnist", (1, 28, 28), tuple(str(d) for d in range(10)), None, "mnist")
FASHION_MNIST = DataDescription("fashion-mnist", (1, 28, 28), (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    None, "mnist")
MNIST_TRAIN_SIZE = 60_000  # the training images the zoo's validation sizes are counted in
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_SHAPE = (3, 32, 32)

__all__ = ["DataDescription", "MNIST", "MNIST_TRAIN_SIZE", "FASHION_MNIST", "CIFAR10_CLASSES", "CIFAR10_SHAPE", "PREPROCESSING"]
