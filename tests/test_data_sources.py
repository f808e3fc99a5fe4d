"""Where data sets are looked for, where downloads go, and which mirrors are used."""
from pathlib import Path

import numpy as np
import pytest
from data_helpers import isolated, tiny_arrays, write_dataset  # noqa: F401

from cnn_xp.data import DatasetError, load_dataset, sources


def test_search_order(isolated, monkeypatch):
    """A folder the user names is the only one searched: --data-dir first, else $CNN_XP_DATA."""
    monkeypatch.setenv("CNN_XP_DATA", str(isolated / "env"))
    dirs = sources.search_dirs("mnist", data_dir=isolated / "explicit")
    assert dirs == [isolated / "explicit", isolated / "explicit" / "mnist"]
    assert sources.search_dirs("mnist") == [isolated / "env", isolated / "env" / "mnist"]
    monkeypatch.delenv("CNN_XP_DATA")
    assert sources.search_dirs("mnist") == [isolated / "cache" / "cnn_xp" / "mnist"]


def test_default_search_includes_system_folders(monkeypatch, tmp_path):
    monkeypatch.delenv("CNN_XP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert sources.search_dirs("fashion-mnist") == [
        tmp_path / "cnn_xp" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")]
    assert sources.search_dirs("mnist")[-1] == Path("/usr/share/datasets/mnist")


def test_cache_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert sources.cache_dir("mnist") == tmp_path / ".cache" / "cnn_xp" / "mnist"


def test_first_complete_folder_wins(isolated, monkeypatch):
    env_arrays = tiny_arrays(n_train=4, seed=1)
    cache_arrays = tiny_arrays(n_train=6, seed=2)
    monkeypatch.setenv("CNN_XP_DATA", str(isolated / "env"))
    write_dataset(isolated / "env" / "fashion-mnist", env_arrays, gz=True)
    write_dataset(sources.cache_dir("fashion-mnist"), cache_arrays)
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.folder == isolated / "env" / "fashion-mnist"
    np.testing.assert_array_equal(ds.train_labels, env_arrays["train_labels"])
    # An incomplete explicit folder is an error: never replaced by a complete one elsewhere.
    partial = write_dataset(isolated / "explicit", tiny_arrays(seed=3))
    partial["train_images"].unlink()
    with pytest.raises(DatasetError, match=r"where --data-dir .*explicit says .*3 of 4 files; missing "
                                           r"train-images-idx3-ubyte\[\.gz\]"):
        load_dataset("fashion-mnist", data_dir=isolated / "explicit", download=False)
    # So is an incomplete $CNN_XP_DATA, while the cache holds a complete copy.
    (isolated / "env" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"where \$CNN_XP_DATA=.*env says"):
        load_dataset("fashion-mnist", download=False)
    monkeypatch.delenv("CNN_XP_DATA")
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.folder == sources.cache_dir("fashion-mnist")
    np.testing.assert_array_equal(ds.train_images[:, 0], cache_arrays["train_images"])
    assert ds.class_names[9] == "Ankle boot"


def test_data_dir_subfolder_and_mixed_styles(isolated):
    arrays = tiny_arrays()
    write_dataset(isolated / "data" / "mnist", arrays, style="dot")
    # mix: replace one part with the dash-style gz name
    folder = isolated / "data" / "mnist"
    (folder / "t10k-labels.idx1-ubyte").rename(folder / "t10k-labels-idx1-ubyte")
    ds = load_dataset("mnist", data_dir=isolated / "data", download=False)
    assert ds.folder == folder
    np.testing.assert_array_equal(ds.test_labels, arrays["test_labels"])


def test_download_dir(isolated, monkeypatch):
    assert sources.download_dir("mnist") == isolated / "cache" / "cnn_xp" / "mnist"
    monkeypatch.setenv("CNN_XP_DATA", str(isolated / "env"))
    assert sources.download_dir("mnist") == isolated / "env" / "mnist"
    assert sources.download_dir("mnist", isolated / "x") == isolated / "x"
    with pytest.raises(DatasetError, match="unknown data set"):
        sources.download_dir("nope")


def test_mirrors_override(isolated, monkeypatch):
    assert sources.mirrors_for("mnist")[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert len(sources.mirrors_for("fashion-mnist")) == 2
    monkeypatch.setenv("CNN_XP_MIRRORS_FASHION_MNIST", "http://a/x, http://b/y/")
    assert sources.mirrors_for("fashion-mnist") == ["http://a/x/", "http://b/y/"]
    assert sources.mirrors_for("mnist")[0].startswith("https://ossci")
    assert sources.mirrors_for("fashion-mnist", ["http://c"]) == ["http://c/"]


@pytest.mark.parametrize("url", ["ftp://a/x/", "file:///srv/x/", "mirror.example", "http://", "https://a:port/",
                                 "http://a/\nx"])
def test_only_http_mirrors(isolated, monkeypatch, url):
    monkeypatch.setenv("CNN_XP_MIRRORS_MNIST", f"https://ok.example/ {url}")
    with pytest.raises(DatasetError, match=r"^CNN_XP_MIRRORS_MNIST must hold http:// or https:// URLs"):
        sources.mirrors_for("mnist")
    with pytest.raises(DatasetError, match="is not an http:// or https:// URL"):
        sources.mirrors_for("mnist", [url])


def test_candidate_names():
    assert sources.candidate_names("test_images") == [
        "t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz",
        "t10k-images.idx3-ubyte", "t10k-images.idx3-ubyte.gz"]


def test_describe_search(isolated):
    write_dataset(isolated / "d")
    text = sources.describe_search("mnist", isolated / "d")
    lines = text.splitlines()
    assert lines[1] == f"  1. {isolated / 'd'}  [complete]"
    assert lines[2] == f"  2. {isolated / 'd' / 'mnist'}  [absent]"
    assert len(lines) == 3
    assert "cache" in sources.describe_search("mnist").splitlines()[1]


def test_cache_comes_from_platformdirs(isolated, monkeypatch):
    import platformdirs

    assert sources.cache_dir("mnist") == platformdirs.user_cache_path("cnn_xp", appauthor=False) / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(isolated / "xdg"))
    assert sources.cache_dir("fashion-mnist") == isolated / "xdg" / "cnn_xp" / "fashion-mnist"


def test_an_entry_that_is_not_a_file_counts_as_present(isolated):
    """A FIFO or a broken link under an accepted name is reported, not passed over."""
    import os

    paths = write_dataset(isolated / "d")
    paths["test_labels"].unlink()
    os.mkfifo(paths["test_labels"])
    with pytest.raises(DatasetError, match="is a FIFO"):
        load_dataset("mnist", data_dir=isolated / "d", download=False)
