"""Fuzzing image preparation: any file or array gives an MNIST-style (28, 28) float32 image in
[0, 1] or an ImageError, never anything else. Damaged PNG/JPEG/GIF/BMP/TIFF/WEBP files
(truncations, bit flips, headers claiming huge or zero sizes) and arrays of any shape,
dtype and value (NaN, infinities, empty, 1-D, 3-D)."""
import io
import struct
import zlib

import numpy as np
from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from cnn_xp.app.predict import ImageError, preprocess_array, preprocess_image

FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


def check_image(img):
    assert isinstance(img, np.ndarray) and img.shape == (28, 28) and img.dtype == np.float32
    assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0


def encoded(fmt: str, mode: str, size, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.full((h, w), 230, np.uint8)
    base[h // 4:3 * h // 4, w // 3:w // 3 + max(1, w // 6)] = 20  # a stroke of ink
    base = np.clip(base.astype(int) + rng.integers(-10, 10, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(base, "L")
    if mode != "L":
        img = img.convert(mode)
    if fmt == "JPEG" and img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def patch_png_size(blob: bytearray, width: int, height: int, fix_crc: bool) -> None:
    """Overwrite the IHDR size of a PNG (and its CRC, or not)."""
    blob[16:24] = struct.pack(">II", width, height)
    if fix_crc:
        blob[29:33] = struct.pack(">I", zlib.crc32(bytes(blob[12:29])))


SIDES = st.one_of(st.sampled_from([0, 1, 2 ** 15, 13000, 2 ** 31 - 1, 2 ** 32 - 1]), st.integers(0, 2 ** 32 - 1))


@st.composite
def hostile_file(draw):
    fmt = draw(st.sampled_from(FORMATS))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "1"]))
    if fmt in ("BMP", "WEBP") and mode in ("LA",):
        mode = "RGBA"
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    blob = bytearray(encoded(fmt, mode, size, draw(st.integers(0, 9))))
    for _ in range(draw(st.integers(0, 3))):
        mutation = draw(st.sampled_from(["truncate", "flip", "size", "junk"]))
        if mutation == "truncate" and len(blob) > 1:
            del blob[draw(st.integers(0, len(blob) - 1)):]
        elif mutation == "flip" and blob:
            i = draw(st.one_of(st.integers(0, min(64, len(blob) - 1)), st.integers(0, len(blob) - 1)))
            blob[i] ^= 1 << draw(st.integers(0, 7))
        elif mutation == "size" and fmt == "PNG" and len(blob) >= 33:
            patch_png_size(blob, draw(SIDES), draw(SIDES), draw(st.booleans()))
        elif mutation == "junk":
            blob += draw(st.binary(max_size=64))
    return fmt, bytes(blob)


@fuzz(150)
@given(case=hostile_file())
def test_damaged_image_files(tmp_path, case):
    fmt, blob = case
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(blob)
    try:
        img = preprocess_image(path)
    except ImageError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    check_image(img)


@fuzz(200)
@given(blob=st.binary(max_size=400))
def test_random_bytes_as_an_image(tmp_path, blob):
    path = tmp_path / "x.png"
    path.write_bytes(blob)
    try:
        check_image(preprocess_image(path))
    except ImageError:
        pass


ARRAYS = st.one_of(
    hnp.arrays(dtype=st.sampled_from([np.uint8, np.int64, np.float32, np.float64, np.bool_, np.uint16]),
               shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=60),
               elements=None),
    hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.complex64, np.int8]),
               shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)),
    st.sampled_from([np.array([["a", "b"]]), np.array([[object()]], dtype=object), np.zeros((3, 0)),
                     np.full((5, 5), np.nan), np.full((9, 9), np.inf), np.array([[1e300, -1e300]])]),
    st.lists(st.lists(st.floats(allow_nan=True), max_size=5), max_size=5),
)


@fuzz(300)
@given(gray=ARRAYS)
def test_any_array(gray):
    try:
        img = preprocess_array(gray)
    except ImageError as exc:
        assert "\n" not in str(exc)
        return
    check_image(img)
