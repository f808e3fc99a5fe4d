"""``cnn-xp serve``: a local web page to draw on (or drop an image), classified as you draw.

The page (``cnn_xp/app/static``: plain HTML, CSS and JavaScript, nothing fetched from
elsewhere) POSTs the canvas as a PNG to ``/api/predict``; the model runs in this process
through ``predict``'s own preparation (:func:`cnn_xp.app.predict.preparer`, the body written
to a private temporary file and read by the same untrusted-image decoder), and the answer is
JSON: the class, the probabilities in class order with the class names, the model's input
and Grad-CAM over it as PNG data URLs, and the first channels of the first convolutional
layers' feature maps (also PNG data URLs).

Bad requests get a 4xx with a JSON ``{"error": ...}``: a body that is no image (400), not an
image type (415), no ink (422), over ``MAX_BODY`` bytes (413: from Content-Length before
reading, or while reading a chunked body), no length (411), a wrong method (405) or path
(404). Sockets time out (``TIMEOUT`` seconds per read, ``BODY_DEADLINE`` for a whole body)
so a slow client holds only its own thread. The server binds to 127.0.0.1 unless told.
"""
from __future__ import annotations

import base64
import io
import json
import os
import sys
import tempfile
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 10 * 1024 * 1024  # bytes of one image upload
TIMEOUT = 10.0  # seconds a socket read may wait
BODY_DEADLINE = 30.0  # seconds to receive a whole body
DRAIN_LIMIT = 64 * 1024 * 1024  # bytes of a refused body read and dropped so the client sees the answer
FEATURE_LAYERS = 2  # conv layers whose feature maps are returned
FEATURE_CHANNELS = 8  # channels of each
VIEW_SIDE = 168  # pixels a side of the input and Grad-CAM pictures
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}


def add_parser(subparsers):
    """Add ``serve`` to ``cnn-xp``'s subcommands; returns its parser (``cli`` adds
    ``--device`` and ``--kernels``)."""
    p = subparsers.add_parser("serve", help="a local web page: draw or drop an image, see the model's answer")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a run's checkpoint.npz or a model.save file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port (default: 8000; 0 picks a free one)")
    return p


def _port(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {value}")
    return value


class RequestError(Exception):
    """A request answered with ``status`` and a JSON error."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = int(status), message, headers or {}


# -- the model ------------------------------------------------------------------------------
class Predictor:
    """A loaded model and what the page shows for one image; one prediction at a time."""

    def __init__(self, loaded):
        from .predict import preparer

        self.model = loaded.model
        self.description = loaded.description
        self.names = [str(n) for n in (loaded.class_names or
                                       range(int(self.model.layers[-1].params["b"].shape[0])))]
        self.name = loaded.name
        self.prepare = preparer(loaded.description)
        self._lock = threading.Lock()
        self._cam_layer = None

    @classmethod
    def load(cls, path, device: str = "cpu") -> Predictor:
        from .evaluate import load_model

        return cls(load_model(path, device))

    def prepare_bytes(self, data: bytes):
        """The model's input (C, H, W) for an image's bytes, through ``predict``'s pipeline;
        ImageError (naming "the image") when it is unusable."""
        from ..errors import ImageError
        from ..input_files import display_path

        with tempfile.TemporaryDirectory(prefix="cnn-xp-serve-") as folder:
            path = os.path.join(folder, "upload")
            with open(path, "wb") as fh:
                fh.write(data)
            try:
                return self.prepare(path)
            except ImageError as exc:
                text = str(exc)
                shown = display_path(path)
                if text.startswith(shown):
                    text = "the image" + text[len(shown):]
                raise ImageError(text) from None

    def answer(self, data: bytes) -> dict:
        """The JSON-ready answer for an image's bytes."""
        import numpy

        from .. import explain
        from ..ops import softmax

        image = self.prepare_bytes(data)
        with self._lock:  # the layers keep caches: one forward/backward at a time
            x = image[None].astype(self.model.dtype, copy=False)
            maps = explain.feature_maps(self.model, x)
            probs = softmax(maps[-1].activation.astype(numpy.float64))[0]
            k = int(probs.argmax())
            cam, cam_index = None, None
            try:
                cam_index = explain.cam_layer(self.model, x.shape[1:])
                cam = explain.grad_cam(self.model, x, k, layer=cam_index, upsample=True)[0]
            except ValueError:  # no spatial layer (a dense net)
                pass
        shown = _shown(image, self.description)
        grey = shown if shown.ndim == 2 else shown @ numpy.array([0.299, 0.587, 0.114])
        return {
            "class": self.names[k],
            "class_index": k,
            "probability": float(probs[k]),
            "probabilities": [float(p) for p in probs],
            "class_names": list(self.names),
            "model": self.name,
            "input": _png_url(shown),
            "grad_cam": None if cam is None else _png_url(_overlay(grey, cam)),
            "grad_cam_layer": None if cam_index is None else
            f"{cam_index} ({type(self.model.layers[cam_index]).__name__})",
            "feature_maps": self._feature_maps(maps),
        }

    def _feature_maps(self, maps) -> list:
        from .explain_cmd import _is_conv

        out = []
        for fmap, layer in zip(maps, self.model.layers):
            if len(out) == FEATURE_LAYERS:
                break
            if not (_is_conv(layer) and fmap.activation.ndim == 4):
                continue
            act = fmap.activation[0]
            channels = []
            for c in range(min(FEATURE_CHANNELS, act.shape[0])):
                a = act[c].astype("float64")
                lo, hi = float(a.min()), float(a.max())
                channels.append(_png_url(_viridis((a - lo) / (hi - lo) if hi > lo else a * 0)))
            out.append({"index": fmap.index, "layer": fmap.layer, "shape": list(act.shape), "channels": channels})
        return out


def _shown(image, description):
    from .explain_cmd import _display_input

    return _display_input(image, description)


def _jet(v):
    import numpy

    v = numpy.clip(v, 0, 1)[..., None]
    return numpy.clip(1.5 - numpy.abs(4 * v - numpy.array([3.0, 2.0, 1.0])), 0, 1)


def _viridis(v):
    """A dark-blue → green → yellow scale (close to viridis), (H, W, 3) in [0, 1]."""
    import numpy

    stops = numpy.array([[0.267, 0.005, 0.329], [0.229, 0.322, 0.546], [0.128, 0.567, 0.551],
                         [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]])
    pos = numpy.clip(v, 0, 1) * (len(stops) - 1)
    lo = numpy.minimum(pos.astype(int), len(stops) - 2)
    frac = (pos - lo)[..., None]
    return stops[lo] * (1 - frac) + stops[lo + 1] * frac


def _overlay(grey, cam):
    """The heat map over the input in grey: (H, W, 3) in [0, 1]."""
    alpha = (0.65 * cam)[..., None]
    return grey[..., None] * (1 - alpha) + _jet(cam) * alpha


def _png_url(pixels, side: int = 0) -> str:
    """A PNG data URL of an (H, W) or (H, W, 3) array in [0, 1] (enlarged to ``side``, nearest)."""
    import numpy
    from PIL import Image

    array = numpy.round(numpy.clip(pixels, 0, 1) * 255).astype(numpy.uint8)
    img = Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")
    if side:
        img = img.resize((side, side), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- HTTP -----------------------------------------------------------------------------------
def _static_dir():
    from importlib import resources

    return resources.files("cnn_xp.app") / "static"


class Handler(BaseHTTPRequestHandler):
    """The page, its files and ``/api/predict``; every error a JSON body."""

    server_version = "cnn-xp"
    timeout = TIMEOUT  # StreamRequestHandler sets it on the socket: a silent client times out
    predictor: Predictor = None  # set on the subclass made by make_server

    # -- routing
    def do_GET(self):
        self._route("GET")

    def do_HEAD(self):
        self._route("HEAD")

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    def do_DELETE(self):
        self._route("DELETE")

    def do_PATCH(self):
        self._route("PATCH")

    def do_OPTIONS(self):
        self._route("OPTIONS")

    _body_done = False
    _drain = 0

    def _announced(self) -> int:
        try:
            return max(0, int(self.headers.get("Content-Length") or 0))
        except ValueError:
            return 0

    def _route(self, method: str):
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        try:
            if path == "/api/predict":
                if method != "POST":
                    raise RequestError(405, "use POST with the image as the body", {"Allow": "POST"})
                self._predict()
            elif path == "/" or path == "/index.html" or path.startswith("/static/"):
                if method not in ("GET", "HEAD"):
                    raise RequestError(405, f"{method} is not allowed here", {"Allow": "GET, HEAD"})
                self._static("index.html" if path in ("/", "/index.html") else path[len("/static/"):],
                             head=method == "HEAD")
            else:
                raise RequestError(404, f"no such page: {path[:200]}")
        except RequestError as exc:
            if not self._body_done and not self._drain:  # a body not (fully) read: drop it after the answer
                self._drain = min(self._announced() or DRAIN_LIMIT, DRAIN_LIMIT)
            self._json(exc.status, {"error": exc.message}, exc.headers)
        except (TimeoutError, ConnectionError):
            self.close_connection = True  # the client went quiet or away: nothing to answer
        except Exception as exc:  # never let one request take the server down
            self.log_error("internal error: %s: %s", type(exc).__name__, exc)
            self._json(500, {"error": "internal error while answering the request"})

    def _static(self, name: str, head: bool = False):
        folder = _static_dir()
        files = {entry.name for entry in folder.iterdir() if entry.is_file()}
        ext = os.path.splitext(name)[1]
        if name not in files or ext not in STATIC_TYPES:  # only the shipped files, by exact name
            raise RequestError(404, f"no such file: {name[:200]}")
        body = (folder / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", STATIC_TYPES[ext])
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    # -- the API
    def _predict(self):
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
            raise RequestError(415, f"expected an image (PNG, JPEG, ...) as the body, got Content-Type {ctype[:100]}")
        body = self._body()
        self._body_done = True
        if not body:
            raise RequestError(400, "empty body: send the image's bytes")
        from ..errors import ImageError

        try:
            answer = self.predictor.answer(body)
        except ImageError as exc:
            text = " ".join(str(exc).split())
            status = 422 if "no ink" in text else 400
            raise RequestError(status, text) from None
        self._json(200, answer)

    def _body(self) -> bytes:
        """The request body, at most MAX_BODY bytes (413 otherwise), within BODY_DEADLINE."""
        encoding = (self.headers.get("Transfer-Encoding") or "").strip().lower()
        length = self.headers.get("Content-Length")
        deadline = time.monotonic() + BODY_DEADLINE
        if encoding:
            if encoding != "chunked":
                self.close_connection = True
                raise RequestError(501, f"unsupported Transfer-Encoding {encoding[:50]}")
            return self._chunked(deadline)
        if length is None:
            self.close_connection = True
            raise RequestError(411, "a Content-Length is needed")
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise RequestError(400, f"bad Content-Length {length[:50]!r}") from None
        if n > MAX_BODY:
            self._refuse_rest(n)
            raise RequestError(413, f"the body is {n} bytes; at most {MAX_BODY} ({MAX_BODY // 2**20} MB) are accepted")
        return self._read(n, deadline)

    def _read(self, n: int, deadline: float) -> bytes:
        parts, left = [], n
        while left:
            if time.monotonic() > deadline:
                self.close_connection = True
                raise RequestError(408, "the body took too long to arrive")
            chunk = self.rfile.read1(min(left, 1 << 16)) if hasattr(self.rfile, "read1") else \
                self.rfile.read(min(left, 1 << 16))
            if not chunk:
                self.close_connection = True
                raise RequestError(400, f"the body ended after {n - left} of {n} bytes")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def _chunked(self, deadline: float) -> bytes:
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size < 0:
                    raise ValueError
            except ValueError:
                self.close_connection = True
                raise RequestError(400, "bad chunked body") from None
            if size == 0:
                while self.rfile.readline(1026) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                self._refuse_rest(None)
                raise RequestError(413, f"the body is more than {MAX_BODY} ({MAX_BODY // 2**20} MB) bytes")
            parts.append(self._read(size, deadline))
            self.rfile.readline(3)  # the chunk's CRLF

    def _refuse_rest(self, n):
        """After the 413 goes out, read and drop what the client still sends (bounded), so it
        is not reset before it reads the answer; then the connection closes."""
        self.close_connection = True
        self._drain = min(n if n is not None else DRAIN_LIMIT, DRAIN_LIMIT)

    def _json(self, status: int, payload: dict, headers: dict | None = None):
        body = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            if status >= 400:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            return
        drain = self._drain
        if drain:
            self._drain = 0
            self._discard(drain)

    def _discard(self, limit: int):
        deadline = time.monotonic() + 5.0
        try:
            while limit > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(limit, 1 << 16))
                if not chunk:
                    break
                limit -= len(chunk)
        except (OSError, ValueError):
            pass

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (a malformed request line, too long headers, an unknown
        method) as JSON too."""
        self.close_connection = True
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # a malformed request line: answer with a status line anyway
        try:
            text = message or HTTPStatus(code).phrase
        except ValueError:
            text = message or "error"
        headers = {"Allow": "GET, HEAD, POST"} if code == 501 else None
        if code == 501:
            code = 405
        self._json(code, {"error": text}, headers)

    def log_message(self, format, *args):
        if self.server.quiet:
            return
        sys.stderr.write(f"{self.address_string()} - {format % args}\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the process alive
    quiet = False
    request_queue_size = 64


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 0, quiet: bool = False) -> Server:
    """A bound server (not yet serving) answering with ``predictor``; ``port=0`` picks a free port."""
    handler = type("BoundHandler", (Handler,), {"predictor": predictor})
    server = Server((host, port), handler)
    server.quiet = quiet
    return server


def url_of(server: Server) -> str:
    host, port = server.server_address[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def run(args) -> int:
    """The command: serves until SIGINT or SIGTERM (the CLI raises ``Stopped``), then shuts
    down cleanly and lets the CLI report the signal."""
    from ..errors import ConfigError

    predictor = Predictor.load(args.checkpoint, getattr(args, "device", "cpu"))
    try:
        server = make_server(predictor, args.host, args.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                              name="cnn-xp-serve")
    thread.start()
    print(f"cnn-xp serve: {predictor.name} ({len(predictor.names)} classes) at {url_of(server)}  "
          f"(Ctrl+C to stop)", flush=True)
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:
        server.shutdown()
        server.server_close()
    return 0


__all__ = ["add_parser", "run", "make_server", "Predictor", "url_of", "MAX_BODY"]
