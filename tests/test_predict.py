"""MNIST-style preprocessing of real image files with Pillow."""
import weakref

import numpy as np
import pytest
from PIL import Image

from cnn_xp.app.predict import ImageError, load_images, preprocess_array, preprocess_image
from tiny_idx import draw_digit_one, tiny_digits


def _centre_of_mass(img):
    ys, xs = np.indices(img.shape)
    total = img.sum()
    return float((ys * img).sum() / total), float((xs * img).sum() / total)


def _ink_box(img, level=0.05):
    rows = np.flatnonzero((img > level).any(axis=1))
    cols = np.flatnonzero((img > level).any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


@pytest.mark.parametrize("dark_on_light", [True, False])
@pytest.mark.parametrize("size, offset, fmt", [((240, 320), (0, 0), "PNG"), ((600, 300), (-150, 60), "JPEG")])
def test_mnist_layout(tmp_path, dark_on_light, size, offset, fmt):
    path = draw_digit_one(tmp_path / f"one.{fmt.lower()}", size, dark_on_light, offset, fmt)
    img = preprocess_image(path)
    assert img.shape == (28, 28) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.max() > 0.9
    # Ink is bright on a black field (MNIST's convention), whatever the file's polarity.
    assert img[0].max() == 0.0 and img[:, 0].max() == 0.0 and img.mean() < 0.3
    # Fitted in 20x20 (the long side is 20) and centred by mass.
    h, w = _ink_box(img)
    assert max(h, w) <= 21 and max(h, w) >= 18 and h > w  # a "1" is tall
    cy, cx = _centre_of_mass(img)
    assert abs(cy - 13.5) <= 1.0 and abs(cx - 13.5) <= 1.0


def test_polarity_and_position_do_not_matter(tmp_path):
    a = preprocess_image(draw_digit_one(tmp_path / "a.png", (240, 320), True, (0, 0)))
    b = preprocess_image(draw_digit_one(tmp_path / "b.png", (240, 320), False, (40, -30)))
    assert np.abs(a - b).mean() < 0.03


def test_round_trip_of_an_mnist_like_digit(tmp_path):
    """An upscaled, inverted, off-centre copy of a centred 28x28 digit comes back close to it."""
    digit = np.zeros((28, 28), np.float32)
    digit[4:24, 11:17] = 1.0  # 20 tall, centred by mass
    canvas = np.full((400, 400), 255, np.uint8)
    big = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize((280, 280), Image.Resampling.NEAREST))
    canvas[100:380, 20:300] = 255 - big
    Image.fromarray(canvas).save(tmp_path / "d.png")
    out = preprocess_image(tmp_path / "d.png")
    assert np.corrcoef(out.ravel(), digit.ravel())[0, 1] > 0.9


def test_rgba_transparent_sheet(tmp_path):
    rgba = np.zeros((100, 80, 4), np.uint8)
    rgba[20:80, 35:45] = (0, 0, 0, 255)  # black stroke on a fully transparent sheet
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    img = preprocess_image(tmp_path / "t.png")
    assert img.max() > 0.9 and img[0].max() == 0.0
    assert abs(_centre_of_mass(img)[1] - 13.5) <= 1.0


def test_batch_layout(tmp_path):
    paths = [draw_digit_one(tmp_path / f"{i}.png", (100, 120), bool(i % 2)) for i in range(3)]
    assert load_images(paths).shape == (3, 1, 28, 28)


def test_bad_files(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="not a readable image"):
        preprocess_image(text)
    with pytest.raises(ImageError, match="no such file"):
        preprocess_image(tmp_path / "missing.png")
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    with pytest.raises(ImageError, match="no ink"):
        preprocess_image(tmp_path / "blank.png")
    with pytest.raises(ImageError, match="no ink"):
        preprocess_array(np.full((30, 30), 7.0))


def test_classify_files_holds_at_most_one_batch(tmp_path, monkeypatch):
    """Files are decoded, classified and answered a batch at a time: never more than a batch
    of decoded images alive, the first answers before later files are read, order kept."""
    from cnn_xp import models
    from cnn_xp.app import predict

    paths = tiny_digits(tmp_path / "png", 300)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    paths.insert(70, str(bad))
    alive, most, decoded = [0], [0], [0]
    real = predict.preprocess_image

    def counted(path):
        image = real(path)
        decoded[0] += 1
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        weakref.finalize(image, lambda: alive.__setitem__(0, alive[0] - 1))
        return image

    monkeypatch.setattr(predict, "preprocess_image", counted)
    batches = []
    real_classify = predict.classify
    monkeypatch.setattr(predict, "classify", lambda model, batch, runner=None:
                        batches.append(len(batch)) or real_classify(model, batch, runner))
    model = models.build("simple_convnet", seed=0)
    answers = predict.classify_files(model, iter(paths), batch_size=32)
    first = next(answers)
    assert first[0] == paths[0] and first[1].shape == (10,) and decoded[0] == 32  # only one batch read yet
    rest = list(answers)
    assert [a[0] for a in [first, *rest]] == paths
    assert [a[0] for a in rest if a[2] is not None] == [str(bad)] and "not a readable image" in rest[69][2]
    assert most[0] <= 32 and max(batches) <= 32 and sum(batches) == 300
