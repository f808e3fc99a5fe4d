"""``cnn-xp explain``: one PNG per image, for a greyscale run checkpoint and a colour
``model.save`` file; bad images named in one line each, exit 2 after the good ones."""
import numpy as np
import pytest
from PIL import Image

from cnn_xp import models
from cnn_xp.app import cli
from cnn_xp.data import DataDescription
from tiny_idx import draw_digit_one
from train_helpers import data_dir, isolated, offline, train  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A simple_convnet run trained for 2 epochs on the tiny bars."""
    out = tmp_path_factory.mktemp("run") / "run"
    argv = ["train", "--model", "simple_convnet", "--dataset", "mnist", "--data-dir", data_dir, "--epochs", "2",
            "--out", str(out), "--no-download", "--no-progress"]
    assert cli.main(argv) == 0
    return out / "checkpoint.npz"


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory):
    """A model.save file of an untrained simple_convnet for 3x16x16 colour input, with its data description."""
    model = models.build("simple_convnet", input_shape=(3, 16, 16), num_classes=4)
    model.data = DataDescription("shapes", (3, 16, 16), ("red square", "green", "blue", "other"),
                                 {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]}, "resize")
    path = tmp_path_factory.mktemp("colour") / "model.npz"
    model.save(path)
    return path


def assert_png(path, min_bytes=20_000):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes
    with Image.open(path) as img:
        width, height = img.size
    assert 600 < width < 2000 and 300 < height < 3000
    return width, height


def test_a_greyscale_run(trained, tmp_path, capsys):
    dark = draw_digit_one(tmp_path / "dark.png", (240, 320), True)
    light = draw_digit_one(tmp_path / "light.jpg", (500, 300), False, (30, 10), "JPEG")
    assert cli.main(["explain", "--checkpoint", str(trained), dark, light]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert err == "" and len(lines) == 2
    assert lines[0].startswith(f"{dark}: ") and lines[0].endswith("-> explain/dark.png")
    assert lines[1].endswith("-> explain/light.png")
    for name in ("dark.png", "light.png"):
        assert_png(tmp_path / "explain" / name)
    # the class predict gives
    assert cli.main(["predict", "--checkpoint", str(trained), dark]) == 0
    predicted = capsys.readouterr().out.split(": ", 1)[1].split("p=")[0].strip()
    assert lines[0].split(": ", 1)[1].startswith(predicted)


def test_a_colour_model_and_bad_images(colour_model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "sub" / "photo.jpg")
    bad = tmp_path / "bad.png"
    bad.write_text("no pixels here")
    out_dir = tmp_path / "figs" / "deep"
    code = cli.main(["explain", "--checkpoint", str(colour_model), "--out", str(out_dir), str(bad),
                     str(tmp_path / "photo.png"), str(tmp_path / "sub" / "photo.jpg")])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("cnn-xp: error: ") and "bad.png" in err
    assert "not a readable image" in err
    assert len(out.strip().splitlines()) == 2
    assert sorted(p.name for p in out_dir.iterdir()) == ["photo-2.png", "photo.png"]  # no name lost
    assert_png(out_dir / "photo.png")
    with Image.open(out_dir / "photo.png") as img:  # colour is drawn in colour
        rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    assert (np.abs(rgb[..., 0] - rgb[..., 1]) > 60).sum() > 500


def test_figure_of_every_conv_layer(tmp_path):
    """deep_convnet has six convs: six rows of feature maps, a taller figure."""
    from cnn_xp.app import explain_cmd

    model = models.build("deep_convnet")
    image = np.zeros((1, 28, 28), np.float32)
    image[0, 6:22, 12:16] = 1
    small = models.build("simple_convnet")
    explain_cmd.figure(model, image, [str(k) for k in range(10)], None, tmp_path / "deep.png")
    explain_cmd.figure(small, image, [str(k) for k in range(10)], None, tmp_path / "small.png")
    assert assert_png(tmp_path / "deep.png")[1] > assert_png(tmp_path / "small.png")[1] + 300


def test_errors(trained, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    dark = draw_digit_one(tmp_path / "dark.png", (240, 320), True)
    assert cli.main(["explain", "--checkpoint", str(trained), "--out", str(blocker / "sub"), dark]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create the output folder" in err
    assert cli.main(["explain", "--checkpoint", str(tmp_path / "none.npz"), dark]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert cli.main(["explain", "--checkpoint", str(trained)]) == 2  # no image
    assert "IMAGE" in capsys.readouterr().err


def test_no_matplotlib_until_it_runs():
    import subprocess
    import sys

    code = ("import sys; from cnn_xp.app import cli; cli.build_parser(); "
            "sys.exit(any(m.startswith('matplotlib') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
