"""Issue 16's table, one test per hostile input: one line on stderr and exit 2, never a
traceback, a hang or a memory blow-up (the run-folder rows are in test_hostile_runs.py)."""
import gzip
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_xp.app import cli
from cnn_xp.app.predict import MAX_PIXELS, ImageError, preprocess_image
from cnn_xp.checkpoint import CheckpointError, load_checkpoint
from cnn_xp.data import DatasetError, load_dataset, sources
from data_helpers import CLI_CODE, gzip_bomb, run_measured
from tiny_idx import draw_digit_one, tiny_digits, write_dataset
from train_helpers import isolated, offline  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = "train-images-idx3-ubyte"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tiny") / "data", n_train=200, n_test=100, gz=True)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A simple_convnet run folder after 2 epochs on the tiny bars."""
    out = tmp_path_factory.mktemp("run") / "run"
    code = cli.main(["train", "--model", "simple_convnet", "--dataset", "mnist", "--data-dir", data_dir,
                     "--epochs", "2", "--out", str(out), "--no-download", "--no-progress"])
    assert code == 0
    return out


pytestmark = pytest.mark.usefixtures("offline")


def one_line_error(capsys, code, expected_code=2) -> str:
    captured = capsys.readouterr()
    assert code == expected_code, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("cnn-xp: error: ") and "Traceback" not in captured.err
    return lines[0]


def train_argv(data_dir, out, *extra):
    return ["train", "--model", "simple_convnet", "--dataset", "mnist", "--data-dir", str(data_dir),
            "--out", str(out), "--no-download", "--no-progress", *extra]


def copy_dataset(src, dst) -> Path:
    dst = Path(dst)
    dst.mkdir(parents=True)
    for path in Path(src).iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


# -- IDX header claiming 0xFFFFFFF0 images (gz or raw) ------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_claiming_four_billion_images(data_dir, tmp_path, capsys, gz):
    folder = copy_dataset(data_dir, tmp_path / "d")
    (folder / (TRAIN_IMAGES + ".gz")).unlink()
    header = struct.pack(">IIII", 0x803, 0xFFFFFFF0, 28, 28) + bytes(28 * 28 * 3)
    (folder / (TRAIN_IMAGES + (".gz" if gz else ""))).write_bytes(gzip.compress(header) if gz else header)
    line = one_line_error(capsys, cli.main(train_argv(folder, tmp_path / "run", "--epochs", "1")))
    assert "the header claims 4,294,967,280 images of 28x28" in line
    assert ("more than the 1024 MiB" in line) if gz else ("the file holds 2,368 bytes (truncated)" in line)
    assert not (tmp_path / "run").exists()


def test_gzip_idx_whose_data_ends_before_its_header_says(tmp_path):
    """A gz header within the size limits but a short stream: refused after reading only what is there."""
    folder = write_dataset(tmp_path / "d", n_train=20, n_test=10, gz=True)
    noise = np.random.default_rng(0).integers(0, 256, 28 * 28 * 5, dtype=np.uint8).tobytes()  # incompressible
    header = struct.pack(">IIII", 0x803, 1_000, 28, 28) + noise
    (Path(folder) / (TRAIN_IMAGES + ".gz")).write_bytes(gzip.compress(header))
    labels = struct.pack(">II", 0x801, 1_000) + bytes(1_000)
    (Path(folder) / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(DatasetError, match=r"claims 1,000 images .* but the data ends after 3,936 bytes "
                                           r"\(decompressed\)"):
        load_dataset("mnist", data_dir=folder, download=False)


def test_gzip_idx_claiming_more_than_deflate_can_hold(tmp_path):
    """A header claiming more than 1032x the compressed size is refused from the header alone."""
    folder = write_dataset(tmp_path / "d", n_train=20, n_test=10, gz=True)
    header = struct.pack(">IIII", 0x803, 1_000_000, 28, 28) + bytes(28 * 28 * 5)
    (Path(folder) / (TRAIN_IMAGES + ".gz")).write_bytes(gzip.compress(header))
    with pytest.raises(DatasetError, match=r"claims 1,000,000 images .* but a gzip file of 54 bytes decompresses "
                                           r"to at most 55,728 \(truncated or forged header\)"):
        load_dataset("mnist", data_dir=folder, download=False)


# -- gzip bombs: 1 MiB files that inflate to 1 GiB (once 3.1 GB of memory, 6.2 GB via evaluate) --
BOMB = 1_300_000  # images of 28x28: 1,019,200,000 bytes of zeros, a 1 MiB gzip file
MEMORY_BOUND_MIB = 400  # a command's own needs are about 110 MiB; one inflated bomb is 972 MiB


def images_bomb(path, count=BOMB, zeros=BOMB * 784):
    Path(path).write_bytes(gzip_bomb(struct.pack(">IIII", 0x803, count, 28, 28), zeros))


def test_gzip_bombs_are_refused_with_bounded_memory(data_dir, tmp_path):
    """A bomb whose header tells the truth is refused from the headers (its labels disagree);
    one whose header claims little is refused once the stream goes past the claim."""
    folder = copy_dataset(data_dir, tmp_path / "d")
    images_bomb(folder / (TRAIN_IMAGES + ".gz"))
    short_claim = tmp_path / "short-claim.gz"
    images_bomb(short_claim, count=10)
    assert folder.joinpath(TRAIN_IMAGES + ".gz").stat().st_size < 1_100_000
    code = ("from cnn_xp.data import DatasetError, load_dataset\n"
            "from cnn_xp.data.idx import read_images\n"
            "for load in (lambda: load_dataset('mnist', sys.argv[3], download=False), lambda: read_images(sys.argv[4])):\n"
            "    try:\n        load()\n    except DatasetError as exc:\n        print(exc)\n")
    proc, peak_mib = run_measured(code, tmp_path, folder, short_claim, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pair, short = proc.stdout.strip().splitlines()
    assert pair.endswith(f"{TRAIN_IMAGES}.gz: 1300000 images but train-labels-idx1-ubyte.gz has 200 labels")
    assert short == f"{short_claim}: the header claims 10 images of 28x28 (7,856 bytes) but more data follows"
    assert peak_mib < MEMORY_BOUND_MIB


def test_evaluate_on_a_gzip_bomb_test_pair_is_one_line_with_bounded_memory(trained, data_dir, tmp_path):
    folder = copy_dataset(data_dir, tmp_path / "bombs")
    images_bomb(folder / "t10k-images-idx3-ubyte.gz")
    labels = (1 << 30) - 16  # labels claimed and really there: 1 GiB of zeros
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip_bomb(struct.pack(">II", 0x801, labels), labels))
    assert sum(p.stat().st_size for p in folder.glob("t10k-*")) < 2_200_000  # a 2 MB test pair
    proc, peak_mib = run_measured(CLI_CODE, tmp_path, "evaluate", "--checkpoint", trained / "checkpoint.npz",
                                  "--data-dir", folder, "--no-download", timeout=60)
    line = assert_one_line(proc)
    assert line.endswith(f"t10k-images-idx3-ubyte.gz: 1300000 images but t10k-labels-idx1-ubyte.gz has "
                         f"{labels} labels") and proc.stdout == ""
    assert peak_mib < MEMORY_BOUND_MIB


# -- a test set of 0 images ---------------------------------------------------------------
def test_test_set_of_zero_images(data_dir, tmp_path, capsys):
    folder = copy_dataset(data_dir, tmp_path / "d")
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">IIII", 0x803, 0, 28, 28)))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 0x801, 0)))
    line = one_line_error(capsys, cli.main(train_argv(folder, tmp_path / "run", "--epochs", "1")))
    assert "t10k-images-idx3-ubyte.gz: holds no images" in line
    assert not (tmp_path / "run").exists()


# -- predict on a 13000x13000 PNG (a decompression bomb) ----------------------------------
def png_claiming(path, width, height, color_type=4):
    """A PNG whose header claims width x height (8-bit, gray+alpha by default) and whose
    data is a few bytes: decoding it would need width*height*2 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                           + chunk(b"IEND", b""))
    return str(path)


def test_predict_refuses_a_decompression_bomb_from_its_header(trained, tmp_path, capsys):
    bomb = png_claiming(tmp_path / "bomb.png", 13000, 13000)
    line = one_line_error(capsys, cli.main(["predict", "--checkpoint", str(trained / "checkpoint.npz"), bomb]))
    assert "13000x13000 pixels (169 megapixels) is more than the 50 megapixel limit; refused before decoding" in line
    # Pillow's own limit (2 x 89 MP) is refused the same way, also from the header.
    with pytest.raises(ImageError, match="refused before decoding"):
        preprocess_image(png_claiming(tmp_path / "huge.png", 20000, 20000))


def test_the_pixel_budget_edge(tmp_path):
    over = png_claiming(tmp_path / "over.png", MAX_PIXELS // 5000 + 1, 5000)
    with pytest.raises(ImageError, match="more than the 50 megapixel limit"):
        preprocess_image(over)
    under = png_claiming(tmp_path / "under.png", MAX_PIXELS // 5000, 5000)
    with pytest.raises(ImageError, match="not a readable image"):  # passes the budget; its data is short
        preprocess_image(under)


def test_a_large_photo_is_reduced_before_float_work(tmp_path):
    """A 6000x4000 JPEG (24 MP) is decoded at reduced scale and gives the same digit as a small copy."""
    big = draw_digit_one(tmp_path / "big.jpg", (6000, 4000), True, fmt="JPEG")
    small = draw_digit_one(tmp_path / "small.png", (600, 400), True)
    a, b = preprocess_image(big), preprocess_image(small)
    assert a.shape == (28, 28) and np.abs(a - b).mean() < 0.03


# -- predict (and the data and checkpoint readers) on a FIFO, a folder, a device ---------
def run_cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "cnn_xp", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_line(proc, code=2) -> str:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnn-xp: error: "), proc.stderr
    return lines[0]


def test_predict_on_a_fifo_is_refused_unopened(trained, tmp_path):
    fifo = tmp_path / "digit.png"
    os.mkfifo(fifo)
    line = assert_one_line(run_cli("predict", "--checkpoint", str(trained / "checkpoint.npz"), str(fifo)))
    assert "is a FIFO (named pipe), not a regular file" in line


def test_fifo_folder_and_device_inputs_never_block(data_dir, tmp_path):
    """The checkpoint and IDX readers refuse non-regular files too (in a child: a hang fails it)."""
    fifo = tmp_path / "checkpoint.npz"
    os.mkfifo(fifo)
    line = assert_one_line(run_cli("evaluate", "--checkpoint", str(fifo), "--data-dir", data_dir))
    assert "is a FIFO (named pipe), not a regular file" in line
    line = assert_one_line(run_cli("predict", "--checkpoint", "/dev/zero", "x.png"))
    assert "is a character device, not a regular file" in line
    folder = copy_dataset(data_dir, tmp_path / "d")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    os.mkfifo(folder / "t10k-labels-idx1-ubyte.gz")
    line = assert_one_line(run_cli(*train_argv(folder, tmp_path / "run", "--epochs", "1")))
    assert "t10k-labels-idx1-ubyte.gz: cannot read (is a FIFO (named pipe), not a regular file)" in line
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


# -- --resume on a checkpoint whose weights do not fit its model --------------------------
def edited_checkpoint(trained, dst, meta_edit=None, array_edit=None) -> Path:
    """A copy of the trained run whose checkpoint's metadata or arrays were edited by hand."""
    arrays = dict(np.load(trained / "checkpoint.npz", allow_pickle=False))
    meta = json.loads(str(arrays["meta"]))
    if meta_edit:
        meta_edit(meta)
    if array_edit:
        array_edit(arrays)
    arrays["meta"] = np.array(json.dumps(meta))
    dst = Path(dst)
    dst.mkdir(parents=True)
    np.savez(dst / "checkpoint.npz", **arrays)
    return dst


def test_resume_with_weights_that_do_not_fit_the_model(trained, data_dir, tmp_path, capsys):
    run = edited_checkpoint(trained, tmp_path / "r",
                            array_edit=lambda a: a.__setitem__("model/3.W", np.zeros((10, 7), np.float32)))
    line = one_line_error(capsys, cli.main(train_argv(data_dir, run, "--epochs", "3", "--resume")))
    assert "weights 3.W has shape (10, 7), the model needs (4320, 100)" in line
    for command in (["evaluate", "--data-dir", data_dir, "--no-download"], ["predict", "x.png"]):
        line = one_line_error(capsys, cli.main([command[0], "--checkpoint", str(run / "checkpoint.npz"),
                                                *command[1:]]))
        assert "weights 3.W has shape (10, 7)" in line


# -- hand-edited checkpoint metadata ------------------------------------------------------
EDITS = {
    "recipe a list": (lambda m: m.__setitem__("recipe", [1, 2]),
                      "recipe must be an object of recipe fields, got list"),
    "dtype int8": (lambda m: m["recipe"].__setitem__("dtype", "int8"),
                   "recipe.dtype must be one of float32, float64, got 'int8'"),
    "short class_names": (lambda m: m.__setitem__("class_names", ["0", "1"]),
                          "class_names must be a list of 10 printable names"),
    "epoch a string": (lambda m: m.__setitem__("epoch", "2"), "epoch must be an integer in 1..2, got '2'"),
    "lr negative": (lambda m: m["recipe"].__setitem__("lr", -1), "recipe.lr must be a positive"),
    "schedule epochs a string": (lambda m: m["recipe"].__setitem__("schedule_epochs", "abc"),
                                 "recipe.schedule_epochs must be a positive integer, got 'abc'"),
    "schedule field missing": (lambda m: m["recipe"].pop("warmup_epochs"), "recipe lacks warmup_epochs"),
    "step without step_epochs": (lambda m: m["recipe"].__setitem__("schedule", "step"),
                                 "recipe.schedule step needs recipe.step_epochs"),
    "saved schedule state broken": (lambda m: m["schedule"]["schedule"].__setitem__("total_steps", "x"),
                                    "schedule.schedule does not describe a schedule"),
    "seed too large": (lambda m: m["recipe"].__setitem__("seed", 2**64), "recipe.seed must be an integer in"),
    "rng state a number": (lambda m: m["rng"].__setitem__("batches", 7), "rng.batches must be an object"),
    "history too short": (lambda m: m.__setitem__("history", m["history"][:1]),
                          "history must be a list of 2 rows"),
    "unknown model": (lambda m: m["recipe"].__setitem__("model", "resnet"), "recipe.model must be one of one_conv"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_hand_edited_metadata_on_every_reading_path(trained, data_dir, tmp_path, capsys, edit):
    change, expected = EDITS[edit]
    run = edited_checkpoint(trained, tmp_path / "r", meta_edit=change)
    ckpt = str(run / "checkpoint.npz")
    digit = draw_digit_one(tmp_path / "one.png")
    for argv in (train_argv(data_dir, run, "--epochs", "3", "--resume"),
                 ["evaluate", "--checkpoint", ckpt, "--data-dir", data_dir, "--no-download"],
                 ["predict", "--checkpoint", ckpt, digit]):
        line = one_line_error(capsys, cli.main(argv))
        assert line.startswith(f"cnn-xp: error: {ckpt}: ") and expected in line, line
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz"]  # the resume changed nothing


def test_weights_of_another_dtype_or_non_finite(trained, tmp_path, capsys):
    for name, value, expected in (("f64", np.zeros((10, 100), np.float64), "is float64, the hyperparameters say float32"),
                                  ("nan", np.full((100, 10), np.nan, np.float32), "holds NaN or infinite values")):
        shape_key = "model/5.W"
        run = edited_checkpoint(trained, tmp_path / name,
                                array_edit=lambda a, v=value: a.__setitem__(shape_key, v.reshape(100, 10)))
        line = one_line_error(capsys, cli.main(["predict", "--checkpoint", str(run / "checkpoint.npz"), "x.png"]))
        assert expected in line


# -- --resume --epochs 1 after 2 epochs ---------------------------------------------------
def test_resume_with_fewer_epochs_than_done_changes_nothing(trained, data_dir, tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    for path in trained.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    line = one_line_error(capsys, cli.main(train_argv(data_dir, run, "--epochs", "1", "--resume")))
    assert f"--resume: {run} has already trained 2 epochs, more than --epochs 1; nothing was changed" in line
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()} == before


# -- --data-dir holding 3 of the 4 files ----------------------------------------------------
def test_a_data_dir_with_three_files_is_not_replaced_by_another_folder(data_dir, tmp_path, capsys):
    write_dataset(sources.cache_dir("fashion-mnist"), n_train=50, n_test=20, seed=3, gz=True)  # complete
    folder = copy_dataset(data_dir, tmp_path / "three")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    argv = train_argv(folder, tmp_path / "run", "--epochs", "1")
    argv[argv.index("mnist")] = "fashion-mnist"
    line = one_line_error(capsys, cli.main(argv))
    assert f"fashion-mnist not found where --data-dir {folder} says" in line
    assert "3 of 4 files; missing t10k-labels-idx1-ubyte[.gz]" in line
    assert not (tmp_path / "run").exists()


# -- one unreadable image among many in predict ------------------------------------------
def test_predict_answers_every_good_image_and_names_every_bad_one(trained, tmp_path, capsys):
    good = [draw_digit_one(tmp_path / f"g{i}.png", (200, 240), bool(i)) for i in range(2)]
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 40), 255).save(blank)
    code = cli.main(["predict", "--checkpoint", str(trained / "checkpoint.npz"),
                     good[0], str(bad), good[1], str(blank), str(tmp_path / "missing.png")])
    captured = capsys.readouterr()
    assert code == 2
    answers = captured.out.strip().splitlines()
    assert [a.split(":")[0] for a in answers] == good
    errors = captured.err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("cnn-xp: error: ") for e in errors)
    assert f"{bad}: not a readable image" in errors[0]
    assert f"{blank}: no ink found" in errors[1]
    assert "missing.png: no such file" in errors[2]
    assert "Traceback" not in captured.err


# -- predict on thousands of files: memory flat in their number (once 1.5 GB for 10,000) ----
def test_predict_memory_is_flat_in_the_number_of_files(trained, tmp_path):
    paths = tiny_digits(tmp_path / "png", 2500)
    peaks = {}
    for count in (300, 2500):
        proc, peaks[count] = run_measured(CLI_CODE, tmp_path, "predict", "--checkpoint", trained / "checkpoint.npz",
                                          *paths[:count], timeout=120)
        assert proc.returncode == 0 and len(proc.stdout.splitlines()) == count, proc.stderr
    assert peaks[2500] - peaks[300] < 64, peaks  # the whole set at once cost 200 KiB a file


# -- control characters in file names: escaped wherever a name is printed -----------------
def test_predict_escapes_control_characters_in_file_names(trained, tmp_path, capsys):
    forged = draw_digit_one(tmp_path / "one.png\nzero.png: 0  p=1.0000", fmt="PNG")  # forges an answer line
    clearing = draw_digit_one(tmp_path / "two\x1b[2J.png")  # a terminal escape sequence
    bad = tmp_path / "bad\r\n.png"
    bad.write_text("not an image")
    code = cli.main(["predict", "--checkpoint", str(trained / "checkpoint.npz"), forged, clearing, str(bad)])
    captured = capsys.readouterr()
    assert code == 2
    answers = captured.out.splitlines()
    assert len(answers) == 2, captured.out  # two images, two lines
    assert answers[0].startswith(repr(forged) + ": ") and answers[1].startswith(repr(clearing) + ": ")
    assert "\x1b" not in captured.out + captured.err
    errors = captured.err.splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"cnn-xp: error: {repr(str(bad))}: not a readable image")
    plain = draw_digit_one(tmp_path / "plain name.png")  # ordinary names are shown as they are
    assert cli.main(["predict", "--checkpoint", str(trained / "checkpoint.npz"), plain]) == 0
    assert capsys.readouterr().out.startswith(f"{plain}: ")


def test_data_errors_escape_control_characters_in_paths(data_dir, tmp_path):
    folder = copy_dataset(data_dir, tmp_path / "data\x1b]0;owned\x07")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", data_dir=folder, download=False)
    assert str(info.value) == f"{repr(str(folder / 't10k-labels-idx1-ubyte.gz'))}: bad magic number 0x6A756E6B, " \
                              f"expected 0x00000801 for IDX labels"
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", data_dir=folder, download=False)
    assert "\x1b" not in str(info.value) and f"--data-dir {repr(str(folder))} says" in str(info.value)

