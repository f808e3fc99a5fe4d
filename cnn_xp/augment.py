"""Data augmentation: random affine distortions of image batches, drawn per image.

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
:func:`affine_resample`: each output pixel is mapped back into its source image (the
inverse map) and read there by bilinear interpolation, with zeros outside the image. It is
written once against ``xp`` (array ops over the whole batch, no loop over images) and
keeps the batch's dtype and device. At zero strength the output equals the input exactly.
"""
from __future__ import annotations


import numpy as np

from .backend import device_of, to_device, xp_of

# strength -> (largest allowed value, what it means)
STRENGTHS = {
    "shift": (0.5, "largest shift as a fraction of the image size"),
    "scale": (0.9, "zoom drawn in [1 - scale, 1 + scale]"),
    "rotate": (180.0, "largest rotation in degrees"),
    "shear": (45.0, "largest horizontal shear in degrees"),
}


def check_strengths(strengths: dict) -> dict:
    """Validated float copies of ``strengths`` (a subset of STRENGTHS' keys; the rest 0);
    ValueError (one line) on an unknown name or a value out of range."""
    out = {name: 0.0 for name in STRENGTHS}
    for name, value in dict(strengths).items():
        if name not in STRENGTHS:
            raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(STRENGTHS)}")
        limit, meaning = STRENGTHS[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value <= limit):
            raise ValueError(f"augmentation {name} must be a number in [0, {limit:g}] ({meaning}), got {value!r}")
        out[name] = float(value)
    return out


def parse_spec(text: str) -> dict | None:
    """``"shift=0.1,scale=0.1,rotate=10,shear=10"`` -> validated strengths; ``"none"`` -> None.
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


def affine_resample(x, inverse):
    """Resample images ``x`` (N, C, H, W) through per-image affine maps.

    ``inverse`` (N, 2, 3) maps an output pixel's centred coordinates ``(u, v, 1)``
    (u = column - (W-1)/2, v = row - (H-1)/2) to the centred coordinates of the point in
    the input it is read from (bilinear interpolation, zeros outside). Returns a new array
    of x's shape, dtype and device. An identity ``inverse`` returns ``x`` exactly."""
    xp = xp_of(x)
    n, c, h, w = x.shape
    dtype = x.dtype
    inv = to_device(np.asarray(inverse, dtype=dtype), device_of(x))
    cols = xp.arange(w, dtype=dtype) - (w - 1) / 2.0
    rows = xp.arange(h, dtype=dtype) - (h - 1) / 2.0
    a = inv[:, :, :, None, None]  # (N, 2, 3, 1, 1)
    # source coordinates in the zero-padded image (one pixel of zeros on every side)
    sx = a[:, 0, 0] * cols + a[:, 0, 1] * rows[:, None] + a[:, 0, 2] + ((w - 1) / 2.0 + 1.0)
    sy = a[:, 1, 0] * cols + a[:, 1, 1] * rows[:, None] + a[:, 1, 2] + ((h - 1) / 2.0 + 1.0)
    sx = xp.clip(sx, 0.0, w + 1.0)  # beyond the padding reads the zero border
    sy = xp.clip(sy, 0.0, h + 1.0)
    x0 = xp.minimum(xp.floor(sx), float(w)).astype(xp.int64)
    y0 = xp.minimum(xp.floor(sy), float(h)).astype(xp.int64)
    wx = (sx - x0.astype(dtype)).reshape(n, 1, h * w)
    wy = (sy - y0.astype(dtype)).reshape(n, 1, h * w)
    padded = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))).reshape(-1)
    # flat index of each output pixel's upper-left source neighbour, per (image, channel)
    plane = (h + 2) * (w + 2)
    base = (xp.arange(n * c) * plane).reshape(n, c, 1)
    top = base + (y0 * (w + 2) + x0).reshape(n, 1, h * w)

    def read(offset):
        return xp.take(padded, top + offset)

    upper = (1 - wx) * read(0) + wx * read(1)
    lower = (1 - wx) * read(w + 2) + wx * read(w + 3)
    out = (1 - wy) * upper + wy * lower
    return out.reshape(n, c, h, w).astype(dtype, copy=False)


class RandomAffine:
    """Random affine distortions, one per image; ``augmenter(x)`` returns the distorted
    batch (same shape, dtype, device). See the module docstring for the strengths."""

    def __init__(self, shift: float = 0.0, scale: float = 0.0, rotate: float = 0.0, shear: float = 0.0,
                 seed: int = 0):
        s = check_strengths({"shift": shift, "scale": scale, "rotate": rotate, "shear": shear})
        self.shift, self.scale, self.rotate, self.shear = s["shift"], s["scale"], s["rotate"], s["shear"]
        self.seed = int(seed)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))

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
        return affine_resample(x, self.draw(n, h, w))

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

    def __repr__(self) -> str:
        return "RandomAffine(" + ", ".join(f"{k}={v:g}" for k, v in self.config().items()) + ")"
