"""Data augmentation: random affine distortions, and random crops and flips, of image
batches, drawn per image.

:class:`RandomAffine` distorts every image of an (N, C, H, W) batch by its own affine map:
a shift, an isotropic scale, a rotation and a horizontal shear about the image centre, with
strengths named as in torchvision's ``RandomAffine``:

* ``shift``: the largest shift, as a fraction of the width / height (each axis drawn
  uniformly in [-shift, shift]); 0..0.5;
* ``scale``: the zoom factor is drawn uniformly in [1 - scale, 1 + scale]; 0..0.9;
* ``rotate``: the largest rotation in degrees, drawn uniformly in [-rotate, rotate]; 0..180;
* ``shear``: the largest horizontal shear angle in degrees, drawn likewise; 0..45.

The parameters are drawn on the host from a seeded NumPy Generator (the same draws on CPU
and GPU); its state is ``state_dict()`` (JSON-able) for checkpoints, so a restored
augmenter continues with the same distortions. The images are resampled by
:func:`affine_resample` (an op of ``cnn_xp.dispatch``: one kernel per batch on the GPU): each output pixel is mapped back into its source image (the
inverse map) and read there by bilinear interpolation, with zeros outside the image. It is
written once against ``xp`` (array ops over the whole batch, no loop over images) and
keeps the batch's dtype and device. At zero strength the output equals the input exactly.

:class:`RandomCropFlip` is the usual augmentation of colour images (CIFAR-10 style): each
image is padded with ``pad`` zero pixels on every side and cut back to its size at a random
offset, then mirrored left-right with probability 0.5. Its strengths in a spec:

* ``crop``: the padding in pixels (an integer, 0..64); 0: no crop;
* ``flip``: 1 to flip each image with probability 0.5, 0 not to.

A spec may name both kinds (``"crop=4,flip=1,rotate=5"``); ``cnn_xp.training.build_augmenter``
then chains the affine distortion and the crop/flip (:class:`Chain`), each with its own seed.
"""
from __future__ import annotations


import numpy as np

from . import dispatch, validation
from .backend import device_of
from .ops.resample import affine_resample, crop_flip  # noqa: F401 (the reference, public here too)

# strength -> (largest allowed value, what it means)
STRENGTHS = {
    "shift": (0.5, "largest shift as a fraction of the image size"),
    "scale": (0.9, "zoom drawn in [1 - scale, 1 + scale]"),
    "rotate": (180.0, "largest rotation in degrees"),
    "shear": (45.0, "largest horizontal shear in degrees"),
    "crop": (64.0, "zero padding in pixels on each side before a random crop back to the image size"),
    "flip": (1.0, "1: mirror each image left-right with probability 0.5"),
}
AFFINE = ("shift", "scale", "rotate", "shear")  # RandomAffine's strengths
CROP_FLIP = ("crop", "flip")                    # RandomCropFlip's
WHOLE = {"crop": "an integer", "flip": "0 or 1"}  # strengths that take whole numbers only


def check_strengths(strengths: dict) -> dict:
    """Validated float copies of ``strengths`` (a subset of STRENGTHS' keys): the affine
    strengths always (0 where not given), ``crop`` and ``flip`` where given. ValueError (one
    line) on an unknown name or a value out of range (``crop`` must be whole, ``flip`` 0 or 1)."""
    out = {name: 0.0 for name in AFFINE}
    for name, value in dict(strengths).items():
        if name not in STRENGTHS:
            raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(STRENGTHS)}")
        limit, meaning = STRENGTHS[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value <= limit) \
                or (name in WHOLE and not float(value).is_integer()):
            kind = f"{WHOLE[name]} in" if name in WHOLE else "a number in"
            raise ValueError(f"augmentation {name} must be {kind} [0, {limit:g}] ({meaning}), got {value!r}")
        out[name] = float(value)
    return out


def parse_spec(text: str) -> dict | None:
    """``"shift=0.1,scale=0.1,rotate=10,shear=10"`` or ``"crop=4,flip=1"`` -> validated
    strengths (see ``check_strengths``); ``"none"`` -> None.
    ValueError (one line) on a malformed spec or a strength out of range."""
    text = str(text).strip()
    if text.lower() in ("none", "off", ""):
        return None
    strengths = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"augmentation {part!r}: expected NAME=VALUE with NAME one of {', '.join(STRENGTHS)}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"augmentation {name}: expected a number, got {value.strip()!r}") from None
        if name in strengths:
            raise ValueError(f"augmentation {name} given twice")
        strengths[name] = number
    return check_strengths(strengths)


class _PCG64State:
    """A seeded PCG64 NumPy Generator on the host whose state is a JSON-able dict."""

    def _start(self, seed: int) -> None:
        self.seed = int(seed)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))

    def state_dict(self) -> dict:
        """JSON-able RNG state (big integers as decimal strings)."""
        bg = self._rng.bit_generator.state
        return {"seed": self.seed, "bit_generator": bg["bit_generator"], "state": str(bg["state"]["state"]),
                "inc": str(bg["state"]["inc"]), "has_uint32": int(bg["has_uint32"]), "uinteger": int(bg["uinteger"])}

    def load_state_dict(self, state: dict) -> None:
        if state.get("bit_generator") != "PCG64":
            raise ValueError(f"unsupported RNG state {state.get('bit_generator')!r}, expected PCG64")
        self.seed = int(state["seed"])
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64", "state": {"state": int(state["state"]), "inc": int(state["inc"])},
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


class RandomAffine(_PCG64State):
    """Random affine distortions, one per image; ``augmenter(x)`` returns the distorted
    batch (same shape, dtype, device). See the module docstring for the strengths."""

    def __init__(self, shift: float = 0.0, scale: float = 0.0, rotate: float = 0.0, shear: float = 0.0,
                 seed: int = 0):
        s = check_strengths({"shift": shift, "scale": scale, "rotate": rotate, "shear": shear})
        self.shift, self.scale, self.rotate, self.shear = s["shift"], s["scale"], s["rotate"], s["shear"]
        self._start(seed)

    def config(self) -> dict:
        return {"shift": self.shift, "scale": self.scale, "rotate": self.rotate, "shear": self.shear}

    def draw(self, n: int, height: int, width: int) -> np.ndarray:
        """(n, 2, 3) float64 inverse maps for ``affine_resample``; five uniform draws per image
        (x shift, y shift, scale, rotation, shear), whatever the strengths."""
        u = 2.0 * self._rng.random((int(n), 5)) - 1.0  # uniform in [-1, 1)
        tx, ty = self.shift * width * u[:, 0], self.shift * height * u[:, 1]
        zoom = 1.0 + self.scale * u[:, 2]
        theta = np.deg2rad(self.rotate) * u[:, 3]
        shear = np.tan(np.deg2rad(self.shear) * u[:, 4])
        cos, sin = np.cos(theta), np.sin(theta)
        # forward map A = R(theta) @ [[1, shear], [0, 1]] @ zoom; inverse = A^-1 (p - t)
        inv = np.empty((int(n), 2, 3))
        inv[:, 0, 0] = (cos + shear * sin) / zoom
        inv[:, 0, 1] = (sin - shear * cos) / zoom
        inv[:, 1, 0] = -sin / zoom
        inv[:, 1, 1] = cos / zoom
        inv[:, :, 2] = -(inv[:, :, 0] * tx[:, None] + inv[:, :, 1] * ty[:, None])
        return inv

    def __call__(self, x):
        n, _, h, w = x.shape
        return dispatch.implementation("affine_resample", device_of(x)).affine_resample(x, self.draw(n, h, w))

    def __repr__(self) -> str:
        return "RandomAffine(" + ", ".join(f"{k}={v:g}" for k, v in self.config().items()) + ")"


class RandomCropFlip(_PCG64State):
    """Random zero-padded crops and horizontal flips, one draw per image; ``augmenter(x)``
    takes (N, C, H, W) images and returns a new batch of the same shape, dtype and device.

    Image i is padded with ``pad`` zero pixels on every side and cut back to H x W at a row
    and a column offset drawn uniformly in 0..2*pad (a shift by -pad..pad pixels, what moves
    out of the frame replaced by zeros), then, when ``flip``, mirrored left-right with
    probability 0.5. The draws come from one seeded PCG64 stream on the host, three uniform
    numbers per image (row offset, column offset, flip) whatever the settings, so the same
    seed gives the same crops on CPU and GPU; ``state_dict()`` (JSON-able) saves the stream
    for checkpoints. ``pad`` is an int in 0..64, ``seed`` an int >= 0 (ValueError otherwise).
    """

    def __init__(self, pad: int = 4, flip: bool = True, seed: int = 0):
        if isinstance(pad, float) and pad.is_integer():
            pad = int(pad)
        self.pad = validation.integer(pad, "pad", "RandomCropFlip", minimum=0)
        if self.pad > STRENGTHS["crop"][0]:
            raise ValueError(f"RandomCropFlip: pad must be at most {STRENGTHS['crop'][0]:g}, got {self.pad}")
        if flip not in (True, False, 0, 1):
            raise ValueError(f"RandomCropFlip: flip must be True or False (or 1 / 0), got {flip!r}")
        self.flip = bool(flip)
        self._start(validation.integer(seed, "seed", "RandomCropFlip", minimum=0))

    def config(self) -> dict:
        """The strengths that rebuild this augmenter (``crop``, ``flip``)."""
        return {"crop": float(self.pad), "flip": float(self.flip)}

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row offsets, column offsets, flips): host arrays (n,) for ``crop_flip``."""
        u = self._rng.random((int(n), 3))
        span = 2 * self.pad + 1
        rows = np.minimum((u[:, 0] * span).astype(np.int64), span - 1)
        cols = np.minimum((u[:, 1] * span).astype(np.int64), span - 1)
        flips = (u[:, 2] < 0.5) & self.flip
        return rows, cols, flips

    def __call__(self, x):
        rows, cols, flips = self.draw(x.shape[0])
        return dispatch.implementation("crop_flip", device_of(x)).crop_flip(x, rows, cols, flips, self.pad)

    def __repr__(self) -> str:
        return f"RandomCropFlip(pad={self.pad}, flip={self.flip})"


class Chain:
    """Augmenters applied in order (``parts``: name -> augmenter); ``state_dict()`` holds
    each one's under its name, and ``load_state_dict`` wants exactly those names."""

    def __init__(self, parts: dict):
        self.parts = dict(parts)

    def __call__(self, x):
        for augmenter in self.parts.values():
            x = augmenter(x)
        return x

    def state_dict(self) -> dict:
        return {name: augmenter.state_dict() for name, augmenter in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != set(self.parts):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"augmentation state must hold {', '.join(self.parts)}, got {got}")
        for name, augmenter in self.parts.items():
            augmenter.load_state_dict(state[name])

    def __repr__(self) -> str:
        return "Chain(" + ", ".join(map(repr, self.parts.values())) + ")"


def build(strengths: dict, affine_seed: int, crop_flip_seed: int):
    """The augmenter of validated ``strengths``: a RandomAffine (seeded ``affine_seed``) when
    no crop or flip is asked for -- whatever its strengths, zero included, as before crops
    existed --, a RandomCropFlip (seeded ``crop_flip_seed``) when only those are, and both
    chained (the affine distortion first) when both kinds are."""
    s = check_strengths(strengths)
    affine = {name: s[name] for name in AFFINE}
    crop, flip = int(s.get("crop", 0.0)), bool(s.get("flip", 0.0))
    if not (crop or flip):
        return RandomAffine(**affine, seed=affine_seed)
    cropper = RandomCropFlip(pad=crop, flip=flip, seed=crop_flip_seed)
    if not any(affine.values()):
        return cropper
    return Chain({"affine": RandomAffine(**affine, seed=affine_seed), "crop_flip": cropper})
