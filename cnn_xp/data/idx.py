"""Reading one IDX file (raw or gzip-compressed) with idx2numpy, with clear errors.

Compression is detected from the content (gzip magic ``1f 8b``), not from the name, so a
misnamed file still loads. Every failure raises DatasetError naming the file and the reason.

Nothing is allocated from what a header claims. The header (magic, dimensions) is parsed
first and the size it implies is checked before the data is read: against the file's real
size for a raw file; for a gzip file, against ``MAX_IDX_BYTES`` and then against what the
stream really decompresses to, read in chunks, so memory grows only with real data. Only
then does idx2numpy parse the bytes.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from ..input_files import describe_os_error, open_regular
from .errors import DatasetError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_GZIP_MAGIC = b"\x1f\x8b"
# Largest IDX payload read (header included): 1 GiB, twenty times MNIST's largest file (47 MB).
MAX_IDX_BYTES = 1 << 30
_CHUNK = 1 << 20
_ITEM_SIZES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}  # IDX type code -> bytes


def _read_exactly(f, n: int) -> bytes:
    data = f.read(n)
    return data if data is not None else b""


def _read_bounded(f, limit: int) -> bytes:
    """Up to ``limit`` more bytes of ``f``, in chunks (never one allocation of ``limit``)."""
    chunks, total = [], 0
    while total < limit:
        chunk = f.read(min(_CHUNK, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _describe(dims, what: str) -> str:
    if what == "images" and len(dims) == 3:
        return f"{dims[0]:,} images of {dims[1]}x{dims[2]}"
    if what == "labels" and len(dims) == 1:
        return f"{dims[0]:,} labels"
    return "dimensions " + "x".join(str(d) for d in dims)


def read_idx(path, magic: int, item_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Parse an IDX file whose 4-byte magic number must equal ``magic``.

    ``item_shape``: the dimensions after the first that the header must state (e.g.
    ``(28, 28)`` for images), checked before any data is read. Returns a writable array.
    """
    import idx2numpy  # here, so batches and prep import without it (e.g. on a bare GPU host)

    path = Path(path)
    what = "images" if magic == IMAGES_MAGIC else "labels"
    try:
        with open_regular(path) as raw:
            file_size = os.fstat(raw.fileno()).st_size
            gz = _read_exactly(raw, 2) == _GZIP_MAGIC
            raw.seek(0)
            with (gzip.GzipFile(fileobj=raw, mode="rb") if gz else nullcontext(raw)) as f:
                head = _read_exactly(f, 4)
                if len(head) < 4:
                    raise DatasetError(f"{path}: truncated IDX file ({len(head)} bytes, no complete header)")
                found = int.from_bytes(head, "big")
                if found != magic:
                    hint = " (gzip data inside a gzip file?)" if head[:2] == _GZIP_MAGIC else ""
                    raise DatasetError(
                        f"{path}: bad magic number 0x{found:08X}, expected 0x{magic:08X} "
                        f"for IDX {what}{hint}"
                    )
                ndim = magic & 0xFF
                dims_bytes = _read_exactly(f, 4 * ndim)
                if len(dims_bytes) < 4 * ndim:
                    raise DatasetError(f"{path}: truncated IDX header ({4 + len(dims_bytes)} of "
                                       f"{4 + 4 * ndim} bytes)")
                dims = struct.unpack(f">{ndim}I", dims_bytes)
                if item_shape is not None and tuple(dims[1:]) != tuple(item_shape):
                    wanted = ", ".join(["N", *map(str, item_shape)])
                    raise DatasetError(f"{path}: wrong dimensions {tuple(dims)} in the header, "
                                       f"expected ({wanted}) {what}")
                header_bytes = 4 + 4 * ndim
                expected = header_bytes + math.prod(dims) * _ITEM_SIZES[(magic >> 8) & 0xFF]
                claim = f"the header claims {_describe(dims, what)} ({expected:,} bytes)"
                if not gz and expected != file_size:
                    raise DatasetError(f"{path}: {claim} but the file holds {file_size:,} bytes "
                                       f"({'truncated' if file_size < expected else 'trailing data'})")
                if expected > MAX_IDX_BYTES:
                    raise DatasetError(f"{path}: {claim}, more than the {MAX_IDX_BYTES >> 20} MiB "
                                       f"an IDX file may hold here")
                # One byte more than claimed: a short read reaches the end of the stream, where
                # gzip checks its CRC and length; a full one means the file holds too much.
                body = _read_bounded(f, expected - header_bytes + 1)
                got = header_bytes + len(body)
                if got < expected:
                    raise DatasetError(f"{path}: {claim} but the data ends after {got:,} bytes"
                                       + (" (decompressed)" if gz else ""))
                if got > expected:
                    raise DatasetError(f"{path}: {claim} but more data follows")
            array = idx2numpy.convert_from_string(head + dims_bytes + body)
    except DatasetError:
        raise
    except idx2numpy.FormatError as exc:
        raise DatasetError(f"{path}: truncated or malformed IDX {what} data ({exc})") from None
    except EOFError:
        raise DatasetError(f"{path}: truncated gzip file (compressed stream ends early)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt gzip file ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({describe_os_error(exc)})") from None
    return np.array(array)


def read_images(path) -> np.ndarray:
    """Images (N, H, W) uint8 from an IDX3 file."""
    images = read_idx(path, IMAGES_MAGIC, item_shape=(28, 28))
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
