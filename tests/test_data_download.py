"""Downloads against a real HTTP server on 127.0.0.1 serving generated files."""
import io
import socket

import numpy as np
import pytest
from data_helpers import (  # noqa: F401
    checksums_of, http_server, idx_bytes, isolated, tiny_arrays,
)

from cnn_xp.data import DatasetError, download, download_command, fetch_file, load_dataset, sources

GZ = {part: sources.BASE_NAMES[part] + ".gz" for part in sources.PARTS}


def _serve_files(root, arrays, corrupt=()):
    """Write the .gz files of ``arrays`` under ``root``; corrupt the parts named. Return checksums."""
    root.mkdir(parents=True, exist_ok=True)
    sums = {}
    for part, name in GZ.items():
        data = idx_bytes(arrays[part], gz=True)
        sums[name] = checksums_of(data)
        (root / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]) if part in corrupt else data)
    return sums


def _closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".part"]


def test_fetch_file_success(isolated):
    arrays = tiny_arrays()
    sums = _serve_files(isolated / "www", arrays)
    dest = isolated / "dest"
    dest.mkdir()
    name = GZ["train_images"]
    with http_server(isolated / "www") as (url, requests):
        path = fetch_file(name, dest, [url], sums[name], progress=True)
    assert path == dest / name and requests == ["/" + name]
    assert path.read_bytes() == (isolated / "www" / name).read_bytes()
    assert _leftovers(dest) == []


def test_corrupt_mirror_skipped_for_next(isolated):
    arrays = tiny_arrays()
    sums = _serve_files(isolated / "www" / "bad", arrays, corrupt=("train_labels",))
    _serve_files(isolated / "www" / "good", arrays)
    dest = isolated / "dest"
    dest.mkdir()
    name = GZ["train_labels"]
    with http_server(isolated / "www") as (url, requests):
        path = fetch_file(name, dest, [url + "missing/", url + "bad/", url + "good/"],
                          sums[name], progress=False)
    assert requests == [f"/missing/{name}", f"/bad/{name}", f"/good/{name}"]
    assert path.read_bytes() == (isolated / "www" / "good" / name).read_bytes()
    assert _leftovers(dest) == []


def test_all_mirrors_bad(isolated):
    arrays = tiny_arrays()
    sums = _serve_files(isolated / "www", arrays, corrupt=("test_images",))
    dest = isolated / "dest"
    dest.mkdir()
    name = GZ["test_images"]
    dead = _closed_port_url()
    with http_server(isolated / "www") as (url, _):
        with pytest.raises(DatasetError) as info:
            fetch_file(name, dest, [url, url + "nothere/", dead], sums[name], progress=False)
    msg = str(info.value)
    assert f"could not download {name}" in msg
    assert f"{url}{name}: sha256 mismatch" in msg or f"{url}{name}: md5 mismatch" in msg
    assert f"{url}nothere/{name}: HTTP 404" in msg
    assert f"{dead}{name}: " in msg
    assert f"save it as {dest / name}" in msg and "--data-dir" in msg
    assert "\n" not in msg
    assert list(dest.iterdir()) == []


def test_refuses_unchecked_download(isolated):
    with pytest.raises(ValueError, match="no checksum"):
        fetch_file("x.gz", isolated, ["http://127.0.0.1:1/"], {})


@pytest.fixture
def fake_mnist(isolated, monkeypatch):
    """Generated files served locally, with the mnist spec's checksums replaced by theirs."""
    arrays = tiny_arrays(n_train=9, n_test=4, seed=7)
    sums = _serve_files(isolated / "www", arrays)
    spec = sources.DATASETS["mnist"]
    monkeypatch.setitem(sources.DATASETS, "mnist",
                        type(spec)(**{**spec.__dict__, "checksums": sums}))
    return arrays


def test_load_dataset_downloads_into_cache(isolated, fake_mnist, monkeypatch):
    with http_server(isolated / "www") as (url, requests):
        monkeypatch.setenv("CNN_XP_MIRRORS_MNIST", url)
        ds = load_dataset("mnist", progress=False)
        assert len(requests) == 4
        again = load_dataset("mnist", progress=False)  # found in the cache: no new request
        assert len(requests) == 4
    cache = isolated / "cache" / "cnn_xp" / "mnist"
    assert ds.folder == cache == again.folder
    assert sorted(p.name for p in cache.iterdir()) == sorted(GZ.values())
    np.testing.assert_array_equal(ds.train_images[:, 0], fake_mnist["train_images"])
    np.testing.assert_array_equal(ds.test_labels, fake_mnist["test_labels"])


def test_download_keeps_good_and_replaces_bad_files(isolated, fake_mnist):
    dest = isolated / "mine"
    dest.mkdir()
    good = (isolated / "www" / GZ["train_images"]).read_bytes()
    (dest / GZ["train_images"]).write_bytes(good)
    (dest / GZ["test_images"]).write_bytes(b"stale")
    with http_server(isolated / "www") as (url, requests):
        files = download("mnist", dest, mirrors=[url], progress=False)
    assert sorted(requests) == sorted("/" + GZ[p] for p in
                                      ("train_labels", "test_images", "test_labels"))
    assert files["test_images"].read_bytes() == (isolated / "www" / GZ["test_images"]).read_bytes()
    assert _leftovers(dest) == []


def test_download_command(isolated, fake_mnist):
    out, err = io.StringIO(), io.StringIO()
    cache = isolated / "cache" / "cnn_xp" / "mnist"
    with http_server(isolated / "www") as (url, requests):
        code = download_command("mnist", isolated / "dl", mirrors=[url], progress=False,
                                out=out, err=err)
        assert code == 0 and err.getvalue() == ""
        assert out.getvalue() == f"mnist: ready in {isolated / 'dl'} (9 training + 4 test images)\n"
        # Without --data-dir: download into the cache, then find it there.
        out = io.StringIO()
        assert download_command("mnist", mirrors=[url], progress=False, out=out, err=err) == 0
        assert out.getvalue() == f"mnist: ready in {cache} (9 training + 4 test images)\n"
        out = io.StringIO()
        assert download_command("mnist", mirrors=[url], progress=False, out=out, err=err) == 0
        assert out.getvalue() == f"mnist: already present in {cache} (9 training + 4 test images)\n"
        assert len(requests) == 8 and err.getvalue() == ""


def test_download_command_errors(isolated, fake_mnist):
    out, err = io.StringIO(), io.StringIO()
    with http_server(isolated / "www") as (url, _):
        code = download_command("mnist", isolated / "dl", mirrors=[url + "nope/"], progress=False,
                                out=out, err=err)
    lines = err.getvalue().splitlines()
    assert code == 2 and len(lines) == 1 and out.getvalue() == ""
    assert lines[0].startswith("cnn-xp: error: could not download train-images-idx3-ubyte.gz")
    assert "HTTP 404" in lines[0]
    err = io.StringIO()
    assert download_command("cifar", out=out, err=err) == 2
    assert "unknown data set 'cifar'" in err.getvalue()


def test_download_command_validates_what_it_finds(isolated, fake_mnist):
    cache = isolated / "cache" / "cnn_xp" / "mnist"
    cache.mkdir(parents=True)
    for name in GZ.values():
        (cache / name).write_bytes((isolated / "www" / name).read_bytes())
    (cache / GZ["train_labels"]).write_bytes(idx_bytes(np.arange(3, dtype=np.uint8), gz=True))
    out, err = io.StringIO(), io.StringIO()
    assert download_command("mnist", out=out, err=err) == 2
    assert "9 images but train-labels-idx1-ubyte.gz has 3 labels" in err.getvalue()


def test_unwritable_destination_is_a_clear_error(isolated):
    blocker = isolated / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DatasetError, match="cannot create the download folder"):
        fetch_file("x.gz", blocker / "sub", ["http://127.0.0.1:1/"], {"md5": "0" * 32})


def test_a_download_removes_temp_files_a_killed_download_left(isolated, fake_mnist):
    dest = isolated / "dl"
    dest.mkdir()
    (dest / ".train-images-idx3-ubyte.gz-k1ll3d_x.tmp").write_bytes(b"half a file")
    (dest / "notes.txt").write_text("mine")
    with http_server(isolated / "www") as (url, _):
        download("mnist", dest, mirrors=[url], progress=False)
    assert sorted(p.name for p in dest.iterdir()) == sorted([*GZ.values(), "notes.txt"])


def test_a_mirror_sending_too_much_is_cut_off(isolated, fake_mnist, monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module("cnn_xp.data.download"), "MAX_DOWNLOAD_BYTES", 100)
    dest = isolated / "dl"
    name = GZ["train_images"]
    with http_server(isolated / "www") as (url, _):
        with pytest.raises(DatasetError, match=rf"{url}{name}: more than 100 bytes sent"):
            fetch_file(name, dest, [url], sources.DATASETS["mnist"].checksums[name], progress=False)
    assert list(dest.iterdir()) == []


def test_downloads_go_through_pooch(isolated, fake_mnist, monkeypatch):
    import pooch

    calls = []
    real_call = pooch.HTTPDownloader.__call__
    monkeypatch.setattr(pooch.HTTPDownloader, "__call__",
                        lambda self, url, out, p, **kw: calls.append(url) or real_call(self, url, out, p, **kw))
    with http_server(isolated / "www") as (url, _):
        download("mnist", isolated / "dl", mirrors=[url], progress=False)
    assert sorted(calls) == sorted(url + name for name in GZ.values())
