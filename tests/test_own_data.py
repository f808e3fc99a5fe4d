"""Your own data: image folders, CIFAR-10's binary files, colour images, zoo nets that fit
the data, and a real small data set that is not 28x28 (scikit-learn's 8x8 digits)."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from cnn_xp import models
from cnn_xp.app import cli
from cnn_xp.data import DatasetError, cifar, load_data, sources
from cnn_xp.errors import ConfigError
from data_helpers import checksums_of, http_server, isolated  # noqa: F401 (fixtures)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 40, 230)}


def write_image(path, array, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def colour_folder(root, n=12, size=(10, 12), layout="split", seed=0):
    """Class folders of noisy single-colour images (H x W = size)."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        for i in range(n):
            noise = rng.integers(-20, 20, (*size, 3))
            array = np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype(np.uint8)
            sub = (root / name) if layout == "split" else (root / ("test" if i < 3 else "train") / name)
            write_image(sub / f"{i}.png", array)
    return root


def one_line_error(capsys, code):
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnn-xp: error: ") and "Traceback" not in captured.err, lines
    return lines[0]


# -- folder data sets ------------------------------------------------------------------------
def test_a_folder_splits_each_class_and_finds_colour(isolated):
    ds = load_data(f"folder:{colour_folder(isolated / 'imgs')}", test_fraction=0.25, split_seed=1)
    assert ds.class_names == ("blue", "green", "red")
    assert ds.train_images.shape == (27, 3, 10, 12) and ds.test_images.shape == (9, 3, 10, 12)
    assert np.bincount(ds.test_labels).tolist() == [3, 3, 3]  # stratified
    assert ds.description.input_shape == (3, 10, 12) and ds.description.preprocess == "resize"
    norm = ds.description.normalization
    assert len(norm["mean"]) == 3 and all(s > 0 for s in norm["std"])
    red = ds.train_images[ds.train_labels == 2]
    assert red[:, 0].mean() > 150 and red[:, 2].mean() < 80  # channel 0 is red


def test_train_and_test_subfolders_are_the_splits_and_grey_is_one_channel(isolated):
    root = isolated / "grey"
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("test", 2)):
        for k in ("a", "b"):
            for i in range(n):
                write_image(root / split / k / f"{i}.png", rng.integers(0, 255, (7, 9), dtype=np.uint8))
    ds = load_data(f"folder:{root}")
    assert ds.train_images.shape == (10, 1, 7, 9) and ds.test_images.shape == (4, 1, 7, 9)
    assert load_data(f"folder:{root}", channels=3).train_images.shape == (10, 3, 7, 9)


def test_sizes_must_agree_unless_image_size_resizes(isolated):
    root = colour_folder(isolated / "imgs")
    odd = root / "red" / "odd.png"
    write_image(odd, np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(DatasetError, match="odd.png is 20x20 pixels.*--image-size"):
        load_data(f"folder:{root}")
    ds = load_data(f"folder:{root}", image_size=(16, 16))
    assert ds.train_images.shape[1:] == (3, 16, 16)


def test_a_corrupt_file_is_named_or_skipped_and_counted(isolated):
    root = colour_folder(isolated / "imgs")
    (root / "green" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match="broken.png.*--skip-bad"):
        load_data(f"folder:{root}")
    ds = load_data(f"folder:{root}", skip_bad=True)
    assert ds.skipped == 1 and len(ds.train_labels) + len(ds.test_labels) == 36


def test_links_out_of_the_folder_and_fifos_are_refused(isolated):
    root = colour_folder(isolated / "imgs")
    outside = isolated / "secret.png"
    write_image(outside, np.zeros((10, 12, 3), np.uint8))
    (root / "red" / "link.png").symlink_to(outside)
    with pytest.raises(DatasetError, match="a link out of the data folder"):
        load_data(f"folder:{root}")
    (root / "red" / "link.png").unlink()
    os.mkfifo(root / "blue" / "pipe.png")
    with pytest.raises(DatasetError, match="pipe.png"):  # refused from its stat, never opened (no hang)
        load_data(f"folder:{root}")


def test_a_pixel_bomb_is_refused_before_decoding(isolated):
    root = colour_folder(isolated / "imgs")
    bomb = Image.new("L", (12000, 12000))  # 144 megapixels of zeros: a small PNG
    buf = io.BytesIO()
    bomb.save(buf, format="PNG")
    (root / "red" / "bomb.png").write_bytes(buf.getvalue())
    with pytest.raises(DatasetError, match="bomb.png.*megapixel"):
        load_data(f"folder:{root}")


def test_decoded_arrays_are_cached_until_a_file_changes(isolated, monkeypatch):
    from cnn_xp.data import images

    root = colour_folder(isolated / "imgs")
    first = load_data(f"folder:{root}")
    monkeypatch.setattr(images, "decode", lambda path: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = load_data(f"folder:{root}")
    assert np.array_equal(first.train_images, again.train_images)
    write_image(root / "red" / "new.png", np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(AssertionError, match="decoded again"):
        load_data(f"folder:{root}")


@pytest.mark.parametrize("make, needle", [
    (lambda root: None, "no such folder"),
    (lambda root: write_image(root / "only" / "a.png", np.zeros((4, 4), np.uint8)), "at least two class"),
])
def test_bad_folders_are_one_line(isolated, capsys, make, needle):
    root = isolated / "bad"
    make(root)
    line = one_line_error(capsys, cli.main(["train", "--model", "one_conv", "--dataset", f"folder:{root}",
                                            "--no-progress"]))
    assert needle in line
    assert not (isolated / "runs").exists()


# -- CIFAR-10 binary -----------------------------------------------------------------------
def cifar_records(labels, seed=0):
    """CIFAR-10 records whose class k is a noisy image of COLOURS' k-th colour mod 3."""
    rng = np.random.default_rng(seed)
    rgb = list(COLOURS.values())
    out = bytearray()
    for label in labels:
        planes = np.clip(np.array(rgb[label % 3])[:, None, None] + rng.integers(-25, 25, (3, 32, 32)), 0, 255)
        out += bytes([label]) + planes.astype(np.uint8).tobytes()
    return bytes(out)


NAMES = ["redish", "greenish", "blueish"]


def write_cifar(folder, n_train=30, n_test=15, archive=False):
    rng = np.random.default_rng(1)
    members = {f"data_batch_{i}.bin": cifar_records(rng.integers(0, 3, n_train), seed=i) for i in range(1, 6)}
    members["test_batch.bin"] = cifar_records(rng.integers(0, 3, n_test), seed=9)
    members["batches.meta.txt"] = ("\n".join(NAMES) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    if not archive:
        for name, data in members.items():
            (folder / cifar.FOLDER).mkdir(exist_ok=True)
            (folder / cifar.FOLDER / name).write_bytes(data)
        return folder
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{cifar.FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (folder / cifar.ARCHIVE).write_bytes(buf.getvalue())
    return folder / cifar.ARCHIVE


@pytest.mark.parametrize("archive", [False, True])
def test_cifar_files_read_as_records_with_their_class_names(isolated, archive):
    write_cifar(isolated / "c", archive=archive)
    ds = load_data("cifar10", isolated / "c", download=False)
    assert ds.train_images.shape == (150, 3, 32, 32) and ds.test_images.shape == (15, 3, 32, 32)
    assert ds.class_names == tuple(NAMES) and ds.description.input_shape == (3, 32, 32)
    red = ds.train_images[ds.train_labels == 0]
    assert red[:, 0].mean() > 180 and red[:, 1].mean() < 60  # the first plane is red


def test_a_cifar_file_that_is_not_whole_records_is_one_line(isolated, capsys):
    folder = write_cifar(isolated / "c")
    path = folder / cifar.FOLDER / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-5])
    line = one_line_error(capsys, cli.main(["train", "--model", "lenet5", "--dataset", "cifar10", "--data-dir",
                                            str(folder), "--no-download", "--no-progress"]))
    assert "data_batch_3.bin" in line and "not a whole number of 3,073-byte CIFAR-10 records" in line


def test_a_cifar_archive_member_claiming_too_much_is_refused(isolated):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(f"{cifar.FOLDER}/data_batch_1.bin")
        info.size = cifar.MAX_RECORDS * cifar.RECORD + cifar.RECORD
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    (isolated / "c").mkdir()
    (isolated / "c" / cifar.ARCHIVE).write_bytes(buf.getvalue())
    with pytest.raises(DatasetError, match="claims .* bytes; not a CIFAR-10 archive"):
        load_data("cifar10", isolated / "c", download=False)


def test_cifar_downloads_through_the_checksummed_path(isolated, monkeypatch):
    import dataclasses

    archive = write_cifar(isolated / "www", archive=True)
    spec = sources.DATASETS["cifar10"]
    monkeypatch.setitem(sources.DATASETS, "cifar10", dataclasses.replace(
        spec, checksums={cifar.ARCHIVE: checksums_of(archive.read_bytes())}))
    with http_server(isolated / "www") as (url, requests):
        monkeypatch.setenv("CNN_XP_MIRRORS_CIFAR10", url)
        assert cli.main(["download", "cifar10", "--data-dir", str(isolated / "d")]) == 0
    assert requests == ["/" + cifar.ARCHIVE]
    assert (isolated / "d" / cifar.ARCHIVE).read_bytes() == archive.read_bytes()
    # a corrupt copy on the mirror: refused, and the folder the download made is gone
    blob = archive.read_bytes()
    archive.write_bytes(blob[:100] + bytes([blob[100] ^ 1]) + blob[101:])
    with http_server(isolated / "www") as (url, _):
        monkeypatch.setenv("CNN_XP_MIRRORS_CIFAR10", url)
        assert cli.main(["download", "cifar10", "--data-dir", str(isolated / "e" / "f")]) == 2
    assert not (isolated / "e").exists()


def test_cifar_format_trains_and_predicts_rgb_pngs_in_the_right_channel_order(isolated, capsys):
    """Classes are told apart by colour alone: a model that read the planes in another order
    would call a red PNG green or blue."""
    folder = write_cifar(isolated / "c", n_train=60, n_test=30)
    run = isolated / "run"
    assert cli.main(["train", "--model", "simple_convnet", "--dataset", "cifar10", "--data-dir", str(folder),
                     "--epochs", "6", "--out", str(run), "--no-download", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["test_accuracy"] >= 0.9, summary["test_accuracy"]
    pngs = []
    for name, rgb in COLOURS.items():
        write_image(isolated / f"{name}.png", np.full((48, 40, 3), rgb, np.uint8))
        pngs.append(str(isolated / f"{name}.png"))
    assert cli.main(["predict", "--checkpoint", str(run / "checkpoint.npz"), *pngs]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(": ")[1].split()[1] for line in lines] == ["(redish)", "(greenish)", "(blueish)"], lines
    ckpt = json.loads(np.load(run / "checkpoint.npz", allow_pickle=False)["meta"].item())
    assert ckpt["data"]["input_shape"] == [3, 32, 32] and len(ckpt["data"]["normalization"]["mean"]) == 3


# -- zoo nets built for the data -------------------------------------------------------------
@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_zoo_entry_fits_colour_input_and_other_class_counts(name):
    side = max(32, models.smallest_side(name, 3))
    model = models.build(name, input_shape=(3, side, side), num_classes=7)
    x = np.random.default_rng(0).random((2, 3, side, side), dtype=np.float32)
    assert model.predict(x).shape == (2, 7)
    assert model.layers[0].params["W"].shape[1] == 3


def test_an_input_too_small_for_the_entry_names_its_smallest_input(capsys):
    with pytest.raises(ConfigError, match="lenet5 cannot take 1x8x8 inputs.*smallest input is 1x12x12"):
        models.build("lenet5", input_shape=(1, 8, 8))


def test_the_mnist_shapes_are_the_seeds(capsys):
    assert models.build("simple_convnet").layers[3].params["W"].shape == (30 * 12 * 12, 100)
    assert models.build("deep_convnet").layers[15].params["W"].shape == (64 * 2 * 2, 50)


# -- a real small data set that is not 28x28 ----------------------------------------------------
def test_sklearn_digits_as_an_image_folder_train_end_to_end(isolated, capsys):
    """1,797 real 8x8 handwritten digits (scikit-learn ships them) written out as PNGs in
    train/ and test/ class folders, trained with the CLI."""
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn (the [test] extra) is not installed")
    digits = datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    for i, index in enumerate(order):
        split = "test" if i < 360 else "train"
        pixels = np.round(digits.images[index] * 255 / 16).astype(np.uint8)
        write_image(isolated / "digits" / split / str(digits.target[index]) / f"{index}.png", pixels)
    run = isolated / "run"
    assert cli.main(["train", "--model", "simple_convnet", "--dataset", f"folder:{isolated / 'digits'}",
                     "--epochs", "60", "--out", str(run), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["test_images"] == 360 and summary["test_accuracy"] >= 0.9, summary["test_accuracy"]
    assert summary["per_class_accuracy"].keys() == {str(d) for d in range(10)}
    assert cli.main(["evaluate", "--checkpoint", str(run / "checkpoint.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 360


# -- ResNet-20 and its recipe --------------------------------------------------------------------
def test_resnet20_is_the_papers_net_and_recipe():
    from cnn_xp import Recipe

    model = models.build("resnet20", input_shape=(3, 32, 32))
    assert model.num_params() == 272_474  # "0.27M" in He et al.'s table 6
    recipe = Recipe.create("resnet20")
    assert (recipe.optimizer, recipe.lr, recipe.batch_size, recipe.epochs) == ("momentum", 0.1, 128, 164)
    assert recipe.optimizer_args == {"momentum": 0.9, "weight_decay": 1e-4}
    assert recipe.schedule_spec() == {"name": "multistep", "epochs": 164, "warmup_epochs": 0.0,
                                      "milestones": [82, 123], "gamma": 0.1}
    assert recipe.augment["crop"] == 4 and recipe.augment["flip"] == 1
    assert Recipe.create("resnet20", schedule="cosine").milestones is None  # the model's schedule options go


def test_multistep_drops_the_rate_at_each_milestone():
    from cnn_xp.training import build_schedule

    schedule = build_schedule({"name": "multistep", "milestones": [2, 3], "gamma": 0.5}, 10, 4)
    assert [schedule.factor(s) for s in (0, 19, 20, 29, 30, 39)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_resnet20_trains_on_cifar_format_files_with_its_recipe(isolated, capsys):
    """The paper's recipe (momentum, weight decay, milestones, crops and flips), shortened,
    on colour-coded CIFAR-format records: it learns, and the run resumes."""
    folder = write_cifar(isolated / "c", n_train=80, n_test=30)
    run = isolated / "run"
    argv = ["train", "--model", "resnet20", "--dataset", "cifar10", "--data-dir", str(folder), "--milestones",
            "3,4", "--batch-size", "40", "--out", str(run), "--no-download", "--no-progress"]
    assert cli.main([*argv, "--epochs", "3"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--epochs", "5", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 5 and summary["test_accuracy"] >= 0.9, summary["test_accuracy"]
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert [float(r.split(",")[5]) for r in rows] == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.001])


def test_colour_filters_are_drawn_in_colour(tmp_path):
    from cnn_xp.app.plots import filter_mosaic, plot_filters

    w = np.random.default_rng(0).normal(size=(12, 3, 3, 3))
    mosaic = filter_mosaic(w, columns=6)
    assert mosaic.shape == (7, 23, 3) and 0 <= mosaic.min() and mosaic.max() <= 1
    assert filter_mosaic(w[:, :1]).ndim == 2  # greyscale input: one channel
    plot_filters(w, 2 * w, tmp_path / "f.png")
    with Image.open(tmp_path / "f.png") as img:
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
    assert (np.abs(pixels[:, 0] - pixels[:, 1]) > 40).any()  # not grey
