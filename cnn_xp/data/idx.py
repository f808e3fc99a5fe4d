"""Reading one IDX file (raw or gzip-compressed) with idx2numpy, with clear errors.

Compression is detected from the content (gzip magic ``1f 8b``), not from the name, so a
misnamed file still loads. Every failure raises DatasetError naming the file and the reason.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_GZIP_MAGIC = b"\x1f\x8b"


def _open(path: Path):
    with open(path, "rb") as probe:
        head = probe.read(2)
    if head == _GZIP_MAGIC:
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_idx(path, magic: int) -> np.ndarray:
    """Parse an IDX file whose 4-byte magic number must equal ``magic``.

    Returns a writable NumPy array (idx2numpy's own result is read-only).
    """
    import idx2numpy  # here, so batches and prep import without it (e.g. on a bare GPU host)

    path = Path(path)
    what = "images" if magic == IMAGES_MAGIC else "labels"
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4:
                raise DatasetError(f"{path}: truncated IDX file ({len(head)} bytes, no complete header)")
            found = int.from_bytes(head, "big")
            if found != magic:
                hint = " (gzip data inside a gzip file?)" if head[:2] == _GZIP_MAGIC else ""
                raise DatasetError(
                    f"{path}: bad magic number 0x{found:08X}, expected 0x{magic:08X} "
                    f"for IDX {what}{hint}"
                )
            f.seek(0)
            array = idx2numpy.convert_from_file(f)
    except DatasetError:
        raise
    except idx2numpy.FormatError as exc:
        raise DatasetError(f"{path}: truncated or malformed IDX {what} data ({exc})") from None
    except EOFError:
        raise DatasetError(f"{path}: truncated gzip file (compressed stream ends early)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt gzip file ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return np.array(array)


def read_images(path) -> np.ndarray:
    """Images (N, H, W) uint8 from an IDX3 file."""
    images = read_idx(path, IMAGES_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(
            f"{path}: wrong dimensions {images.shape}, expected (N, 28, 28) images"
        )
    return images


def read_labels(path) -> np.ndarray:
    """Labels (N,) int64 in 0..9 from an IDX1 file."""
    labels = read_idx(path, LABELS_MAGIC)
    if labels.ndim != 1:
        raise DatasetError(f"{path}: wrong dimensions {labels.shape}, expected (N,) labels")
    if labels.size and int(labels.max()) > 9:
        bad = int(np.flatnonzero(labels > 9)[0])
        raise DatasetError(
            f"{path}: label {int(labels[bad])} at index {bad} is outside 0..9"
        )
    return labels.astype(np.int64)
