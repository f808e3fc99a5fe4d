"""Reading IDX files (raw or gzip-compressed), header first, with bounded memory and clear errors.

Compression is detected from the content (gzip magic ``1f 8b``), not from the name, so a
misnamed file still loads. Every failure raises DatasetError naming the file (as
``display_path`` shows it) and the reason.

Nothing is allocated or inflated from what a header claims. ``IdxFile`` opens a file and
reads only its header (magic, dimensions; for gzip only the few bytes needed are
decompressed) and checks the size the header implies: equal to the file's real size for a
raw file; for gzip, at most ``MAX_IDX_BYTES`` and at most what a deflate stream of the
file's compressed size can decompress to (``MAX_DEFLATE_RATIO``). A caller can compare
headers (``loader`` checks that images and labels agree in count) before any data is read.
``IdxFile.read`` then streams the data with a hard limit, the size the header implies: it
stops with an error as soon as the stream goes past it or ends short, and memory grows only
with the data really there, never with the claim (a gzip bomb is refused after at most
its claimed size, one copy, and in most cases from its header alone).
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from contextlib import contextmanager

import numpy as np

from ..input_files import describe_os_error, display_path, open_regular
from .errors import DatasetError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IMAGE_SHAPE = (28, 28)
_GZIP_MAGIC = b"\x1f\x8b"
# Largest IDX payload read (header included): 1 GiB, twenty times MNIST's largest file (47 MB).
MAX_IDX_BYTES = 1 << 30
# Deflate's best case: a 258-byte match coded in 2 bits. A gzip file of C bytes cannot hold
# more than MAX_DEFLATE_RATIO * C bytes of data; a header claiming more is refused unread.
MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20
# IDX type code -> element type (big-endian, as stored)
_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_up_to(f, n: int) -> bytes:
    data = f.read(n)
    return data if data is not None else b""


def _describe(dims, what: str) -> str:
    if what == "images" and len(dims) == 3:
        return f"{dims[0]:,} images of {dims[1]}x{dims[2]}"
    if what == "labels" and len(dims) == 1:
        return f"{dims[0]:,} labels"
    return "dimensions " + "x".join(str(d) for d in dims)


@contextmanager
def _dataset_errors(shown: str, what: str):
    """Any failure while reading becomes one DatasetError naming the file."""
    try:
        yield
    except DatasetError:
        raise
    except EOFError:
        raise DatasetError(f"{shown}: truncated gzip file (compressed stream ends early)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{shown}: corrupt gzip file ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{shown}: cannot read ({describe_os_error(exc)})") from None
    except MemoryError:
        raise DatasetError(f"{shown}: not enough memory to read its IDX {what} data") from None


class IdxFile:
    """An open IDX file whose header has been read and checked; nothing else read yet.

    ``dims``, ``count`` (the first dimension) and ``data_bytes`` say what the header claims;
    ``read()`` reads the data (once) and returns a writable array of shape ``dims``. Use as a
    context manager (or ``close()``). ``item_shape``: the dimensions after the first that the
    header must state (e.g. ``(28, 28)`` for images).
    """

    def __init__(self, path, magic: int, item_shape: tuple[int, ...] | None = None):
        self.path = path
        self.shown = display_path(path)
        self.what = "images" if magic == IMAGES_MAGIC else "labels"
        self._raw = self._stream = None
        with _dataset_errors(self.shown, self.what):
            self._raw = open_regular(path)
            try:
                self._open(magic, item_shape)
            except BaseException:
                self.close()
                raise

    def _open(self, magic: int, item_shape) -> None:
        shown, what = self.shown, self.what
        file_size = os.fstat(self._raw.fileno()).st_size
        self.gz = _read_up_to(self._raw, 2) == _GZIP_MAGIC
        self._raw.seek(0)
        # GzipFile decompresses as it is read (a buffer of a few KiB): the header costs no more.
        f = self._stream = gzip.GzipFile(fileobj=self._raw, mode="rb") if self.gz else self._raw
        head = _read_up_to(f, 4)
        if len(head) < 4:
            raise DatasetError(f"{shown}: truncated IDX file ({len(head)} bytes, no complete header)")
        found = int.from_bytes(head, "big")
        if found != magic:
            hint = " (gzip data inside a gzip file?)" if head[:2] == _GZIP_MAGIC else ""
            raise DatasetError(f"{shown}: bad magic number 0x{found:08X}, expected 0x{magic:08X} "
                               f"for IDX {what}{hint}")
        ndim = magic & 0xFF
        dims_bytes = _read_up_to(f, 4 * ndim)
        if len(dims_bytes) < 4 * ndim:
            raise DatasetError(f"{shown}: truncated IDX header ({4 + len(dims_bytes)} of "
                               f"{4 + 4 * ndim} bytes)")
        self.dims = struct.unpack(f">{ndim}I", dims_bytes)
        if item_shape is not None and tuple(self.dims[1:]) != tuple(item_shape):
            wanted = ", ".join(["N", *map(str, item_shape)])
            raise DatasetError(f"{shown}: wrong dimensions {tuple(self.dims)} in the header, "
                               f"expected ({wanted}) {what}")
        self.dtype = _DTYPES.get((magic >> 8) & 0xFF)
        if self.dtype is None:
            raise DatasetError(f"{shown}: unknown IDX type code 0x{(magic >> 8) & 0xFF:02X}")
        self.data_bytes = math.prod(self.dims) * self.dtype.itemsize
        expected = 4 + 4 * ndim + self.data_bytes
        claim = self.claim = f"the header claims {_describe(self.dims, what)} ({expected:,} bytes)"
        if not self.gz and expected != file_size:
            raise DatasetError(f"{shown}: {claim} but the file holds {file_size:,} bytes "
                               f"({'truncated' if file_size < expected else 'trailing data'})")
        if expected > MAX_IDX_BYTES:
            raise DatasetError(f"{shown}: {claim}, more than the {MAX_IDX_BYTES >> 20} MiB "
                               f"an IDX file may hold here")
        if self.gz and expected > MAX_DEFLATE_RATIO * file_size:
            raise DatasetError(f"{shown}: {claim} but a gzip file of {file_size:,} bytes decompresses to "
                               f"at most {MAX_DEFLATE_RATIO * file_size:,} (truncated or forged header)")

    @property
    def count(self) -> int:
        """The header's first dimension (images or labels)."""
        return self.dims[0]

    def read(self) -> np.ndarray:
        """The data as a writable array of shape ``dims`` (native byte order).

        Read in chunks into a buffer that grows only as data arrives, up to the size the
        header implies; one byte more is asked for, so a short stream ends (and gzip checks
        its CRC and length there) and a longer one is caught without being read further.
        """
        shown, size = self.shown, self.data_bytes
        with _dataset_errors(shown, self.what):
            buf = bytearray()
            while len(buf) < size:
                chunk = _read_up_to(self._stream, min(_CHUNK, size - len(buf)))
                if not chunk:
                    break
                buf += chunk
            more = _read_up_to(self._stream, 1)
        got = len(buf) + (len(self.dims) + 1) * 4
        if len(buf) < size:
            raise DatasetError(f"{shown}: {self.claim} but the data ends after {got:,} bytes"
                               + (" (decompressed)" if self.gz else ""))
        if more:
            raise DatasetError(f"{shown}: {self.claim} but more data follows")
        array = np.frombuffer(buf, dtype=self.dtype, count=math.prod(self.dims)).reshape(self.dims)
        return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))

    def close(self) -> None:
        for f in (self._stream, self._raw):
            if f is not None:
                try:
                    f.close()
                except (OSError, EOFError, zlib.error):
                    pass

    def __enter__(self) -> IdxFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_images(path) -> IdxFile:
    """An images file (N, 28, 28) with its header read and checked."""
    return IdxFile(path, IMAGES_MAGIC, item_shape=IMAGE_SHAPE)


def open_labels(path) -> IdxFile:
    """A labels file (N,) with its header read and checked."""
    return IdxFile(path, LABELS_MAGIC)


def read_idx(path, magic: int, item_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Parse an IDX file whose 4-byte magic number must equal ``magic``; a writable array."""
    with IdxFile(path, magic, item_shape) as f:
        return f.read()


def read_images(path) -> np.ndarray:
    """Images (N, H, W) uint8 from an IDX3 file."""
    with open_images(path) as f:
        return f.read()


def checked_labels(path, labels: np.ndarray) -> np.ndarray:
    """Labels (N,) int64 from what a labels file holds; DatasetError for one outside 0..9."""
    if labels.size and int(labels.max()) > 9:
        bad = int(np.flatnonzero(labels > 9)[0])
        raise DatasetError(f"{display_path(path)}: label {int(labels[bad])} at index {bad} is outside 0..9")
    return labels.astype(np.int64)


def read_labels(path) -> np.ndarray:
    """Labels (N,) int64 in 0..9 from an IDX1 file."""
    with open_labels(path) as f:
        return checked_labels(path, f.read())
