"""Image files as untrusted input: :func:`decode` opens one within a pixel budget.

Only regular files are opened (a FIFO or a device is refused from its ``stat``); only
common raster formats are decoded (``FORMATS``: no EPS, whose Pillow plugin runs
Ghostscript); an image whose header states more than ``MAX_PIXELS`` pixels (50 megapixels,
e.g. 8660x5773) is refused from the header, before any pixel is decoded, which also stops
decompression bombs (a tiny PNG claiming 13000x13000). Larger accepted images are decoded
at reduced scale where the format allows it (JPEG) and reduced to at most ``WORK_SIDE``
pixels a side, so memory stays bounded. Any failure is an :class:`ImageError` naming the
file (as ``display_path`` shows it). ``predict`` and image-folder data sets both read here.
"""
from __future__ import annotations

import math
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from .. import errors
from ..input_files import describe_os_error, display_path, open_regular

MAX_PIXELS = 50_000_000  # width x height from the header; more is refused before decoding
WORK_SIDE = 2048  # larger images are reduced to at most this many pixels a side first
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")  # JPEG includes MPO (phone photos)
_ALPHA_MODES = ("RGBA", "LA", "PA")


class ImageError(errors.ImageError):
    """An image file cannot be read (or, for predict, holds no visible ink)."""


def decode(path) -> Image.Image:
    """The first frame of ``path``, decoded within the pixel budget and reduced to at most
    WORK_SIDE a side; ImageError for anything else."""
    name = display_path(path)
    try:
        fh = open_regular(path)
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except OSError as exc:  # a folder, FIFO or device is refused before it is opened
        raise ImageError(f"{name}: cannot read ({describe_os_error(exc)})") from None
    # Pillow warns about damaged metadata it skips (and its own bomb warning, above 89 MP, is
    # moot: our budget is lower); the file either decodes or ends in one ImageError.
    with fh, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = Image.open(fh, formats=FORMATS)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{name}: refused before decoding ({exc})") from None
        except Exception as exc:  # a decoder of untrusted bytes: any failure means "unreadable"
            raise ImageError(f"{name}: not a readable image ({reason(exc)})") from None
        with img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"{name}: {width}x{height} pixels ({width * height / 1e6:.0f} megapixels) is "
                                 f"more than the {MAX_PIXELS // 1_000_000} megapixel limit; refused before "
                                 f"decoding")
            if width < 1 or height < 1:
                raise ImageError(f"{name}: not a readable image (size {width}x{height})")
            try:
                factor = math.ceil(max(width, height) / WORK_SIDE)
                if factor > 1 and img.format in ("JPEG", "MPO"):
                    img.draft(None, (math.ceil(width / factor), math.ceil(height / factor)))
                img.load()
                img = ImageOps.exif_transpose(img)
                factor = math.ceil(max(img.size) / WORK_SIDE)
                if factor > 1:
                    alpha = img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)
                    if img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
                        img = img.convert("RGBA" if alpha else "RGB")
                    img = img.reduce(factor)
                return img
            except Exception as exc:
                raise ImageError(f"{name}: not a readable image ({reason(exc)})") from None


def reason(exc: Exception) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return f"not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} file"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text and not isinstance(exc, OSError) else (text or type(exc).__name__)
