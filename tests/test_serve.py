"""``cnn-xp serve``'s HTTP API with a real HTTP client against a server in this process (a
thread on 127.0.0.1, a free port) and a tiny trained model: good images answered, bad
requests refused with a 4xx JSON error (and the server still answering after them), the page
and its files served, and the command itself started, answering and stopped by SIGTERM."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cnn_xp.app import cli, serve
from tiny_idx import draw_digit_one
from train_helpers import data_dir, isolated, offline, train  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("offline")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert train(data_dir, out, "--epochs", "1") == 0
    return out / "checkpoint.npz"


@pytest.fixture(scope="module")
def server(checkpoint):
    """(host, port) of a server answering with the tiny model, serving in a thread."""
    srv = serve.make_server(serve.Predictor.load(checkpoint), "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[:2]
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    return Path(draw_digit_one(tmp_path_factory.mktemp("img") / "one.png")).read_bytes()


def request(server, method, path, body=None, headers=None, timeout=30, chunked=False):
    """(status, headers, parsed JSON or raw bytes) of one request on a fresh connection."""
    conn = http.client.HTTPConnection(*server, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        res = conn.getresponse()
        data = res.read()
        ctype = res.getheader("Content-Type") or ""
        return res.status, res, json.loads(data) if ctype.startswith("application/json") else data
    finally:
        conn.close()


def predict(server, body, ctype="image/png"):
    return request(server, "POST", "/api/predict", body, {"Content-Type": ctype})


def assert_good(server, png):
    status, res, answer = predict(server, png)
    assert status == 200, answer
    assert answer["class_names"] == [str(k) for k in range(10)]
    probs = answer["probabilities"]
    assert len(probs) == 10 and abs(sum(probs) - 1) < 1e-6 and min(probs) >= 0
    assert answer["class"] == answer["class_names"][max(range(10), key=probs.__getitem__)]
    return answer


def test_a_good_png_is_answered(server, png):
    answer = assert_good(server, png)
    assert answer["class_index"] == int(answer["class"])
    for key in ("input", "grad_cam"):
        assert answer[key].startswith("data:image/png;base64,")
    maps = answer["feature_maps"]
    assert maps and maps[0]["layer"] == "Conv2D" and 1 <= len(maps[0]["channels"]) <= serve.FEATURE_CHANNELS
    assert all(src.startswith("data:image/png;base64,") for src in maps[0]["channels"])


def test_jpeg_and_untyped_bodies_go_through_the_same_pipeline(server, tmp_path):
    jpeg = Path(draw_digit_one(tmp_path / "one.jpg", (300, 200), False, (20, 0), "JPEG")).read_bytes()
    assert predict(server, jpeg, "image/jpeg")[0] == 200
    assert predict(server, jpeg, "application/octet-stream")[0] == 200


@pytest.mark.parametrize("body, ctype, status", [
    (b"this is not an image", "image/png", 400),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "image/png", 400),  # a damaged PNG
    (b"", "image/png", 400),
    (b"hello", "text/plain", 415),
    (b"{}", "application/json", 415),
])
def test_bad_bodies_get_a_json_4xx(server, body, ctype, status):
    got, res, answer = predict(server, body, ctype)
    assert got == status and isinstance(answer["error"], str) and answer["error"]
    assert "upload" not in answer["error"] and "/tmp" not in answer["error"]  # no server paths


def test_a_blank_canvas_is_no_ink(server, tmp_path):
    from PIL import Image

    Image.new("L", (280, 280), 255).save(tmp_path / "blank.png")
    status, _, answer = predict(server, (tmp_path / "blank.png").read_bytes())
    assert status == 422 and "no ink" in answer["error"]


def test_a_body_over_10_mb_is_413(server):
    status, _, answer = predict(server, b"\x00" * (11 * 1024 * 1024))
    assert status == 413 and "10 MB" in answer["error"]


def test_413_comes_from_the_content_length_before_any_body(server):
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 11534336\r\n\r\n")  # and no body at all
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.0 413 ")


def test_a_chunked_body_over_10_mb_is_413(server):
    def chunks():
        for _ in range(12):
            yield b"\x00" * (1024 * 1024)

    status, _, answer = request(server, "POST", "/api/predict", chunks(),
                                {"Content-Type": "image/png", "Transfer-Encoding": "chunked"}, chunked=True)
    assert status == 413


def test_a_chunked_image_is_answered(server, png):
    status, _, answer = request(server, "POST", "/api/predict", iter([png[:100], png[100:]]),
                                {"Content-Type": "image/png", "Transfer-Encoding": "chunked"}, chunked=True)
    assert status == 200 and len(answer["probabilities"]) == 10


def test_a_body_that_is_not_chunked_as_announced_is_400(server, png):
    status, _, answer = request(server, "POST", "/api/predict", png,
                                {"Content-Type": "image/png", "Transfer-Encoding": "chunked"})
    assert status == 400 and "chunked" in answer["error"]


def test_wrong_methods_are_405(server):
    status, res, answer = request(server, "GET", "/api/predict")
    assert status == 405 and res.getheader("Allow") == "POST" and answer["error"]
    for method in ("PUT", "DELETE"):
        assert request(server, method, "/api/predict", b"x")[0] == 405
    assert request(server, "POST", "/", b"x", {"Content-Type": "image/png"})[0] == 405
    assert request(server, "BREW", "/api/predict")[0] == 405  # an unknown method: JSON too


def test_wrong_paths_are_404(server):
    for path in ("/nope", "/api/predict/x", "/static/../serve.py", "/static/nope.js", "/static/%2e%2e/serve.py"):
        status, _, answer = request(server, "GET", path)
        assert status == 404 and answer["error"], path


def read_until_closed(sock) -> bytes:
    """Everything the server sends until it closes the connection (the head and the body
    may arrive in separate packets)."""
    data = b""
    while True:
        part = sock.recv(4096)
        if not part:
            return data
        data += part


def test_a_malformed_request_is_a_json_400(server):
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(b"this is not http\r\n\r\n")
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.0 400 ") and b'"error"' in data


def test_a_slow_client_does_not_block_others(server, png):
    silent = socket.create_connection(server, timeout=10)  # says nothing
    lagging = socket.create_connection(server, timeout=10)  # announces a body that never comes
    lagging.sendall(b"POST /api/predict HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\nabc")
    try:
        start = time.monotonic()
        assert_good(server, png)
        assert time.monotonic() - start < 10
    finally:
        silent.close()
        lagging.close()


def test_the_socket_times_out(server, monkeypatch):
    monkeypatch.setattr(serve.Handler, "timeout", 0.5)
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\nabc")
        start = time.monotonic()
        data = sock.recv(4096)  # the server gives up on it and closes
    assert time.monotonic() - start < 5
    assert data == b"" or data.startswith(b"HTTP/1.0 4")


def test_after_all_of_that_a_good_request_still_answers(server, png):
    for _ in range(3):
        assert_good(server, png)


def test_concurrent_requests(server, png):
    results = []
    threads = [threading.Thread(target=lambda: results.append(predict(server, png)[0])) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 8


def test_the_page_and_its_files(server):
    status, res, page = request(server, "GET", "/")
    assert status == 200 and res.getheader("Content-Type").startswith("text/html")
    text = page.decode()
    assert '<canvas id="pad"' in text and 'id="prediction"' in text
    assert "http://" not in text and "https://" not in text  # nothing fetched from elsewhere
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, res, body = request(server, "GET", f"/static/{name}")
        assert status == 200 and res.getheader("Content-Type").startswith(kind) and body
        assert b"http://" not in body and b"https://" not in body
    assert request(server, "HEAD", "/")[0] == 200


def test_the_page_ships_as_package_data():
    text = (REPO / "pyproject.toml").read_text()
    assert '"cnn_xp.app" = ["static/*.html", "static/*.css", "static/*.js"]' in text
    assert {p.name for p in (REPO / "cnn_xp" / "app" / "static").iterdir()} >= {"index.html", "app.js", "style.css"}


def test_the_cli_flags():
    args = cli.build_parser().parse_args(["serve", "--checkpoint", "c.npz"])
    assert (args.host, args.port, args.device, cli.COMMANDS["serve"]) == ("127.0.0.1", 8000, "cpu", serve.run)
    assert cli.main(["serve", "--checkpoint", "c.npz", "--port", "70000"]) == 2


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert cli.main(["serve", "--checkpoint", str(tmp_path / "nope.npz"), "--port", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_command_serves_until_sigterm(checkpoint, png):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "cnn_xp", "serve", "--checkpoint", str(checkpoint), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line + proc.stderr.read()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        assert_good(("127.0.0.1", port), png)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 128 + signal.SIGTERM
        assert "stopped by SIGTERM" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
