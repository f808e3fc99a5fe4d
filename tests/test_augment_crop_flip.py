"""Random crops and flips for colour images: shapes/dtypes kept, flips really mirror, crops
are windows of the zero-padded image at offsets within range, seeding and state round
trips, the spec (``crop=4,flip=1``), and ``build_augmenter``: affine-only specs unchanged
bit for bit, crop/flip alone, both chained with their own seeds, a resumed ``fit``."""
import json

import numpy as np
import pytest

from cnn_xp import augment, optim
from cnn_xp.augment import Chain, RandomAffine, RandomCropFlip, crop_flip
from cnn_xp.layers import Affine, Conv2D, GlobalAvgPool2D, ReLU
from cnn_xp.model import Sequential
from cnn_xp.callbacks import Callback
from cnn_xp.training import augment_seed, build_augmenter, crop_flip_seed, fit


def images(n=6, c=3, h=8, w=7, dtype="float32", seed=0):
    return (np.random.default_rng(seed).random((n, c, h, w)) + 0.5).astype(dtype)  # no zeros: padding shows


def naive_crop_flip(x, rows, cols, flips, pad):
    """The definition, one image at a time."""
    n, c, h, w = x.shape
    padded = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    out = np.empty_like(x)
    for i in range(n):
        window = padded[i, :, rows[i]:rows[i] + h, cols[i]:cols[i] + w]
        out[i] = window[:, :, ::-1] if flips[i] else window
    return out


def draws_of(aug, n):
    """The next draws of ``aug`` without consuming them."""
    state = aug.state_dict()
    drawn = aug.draw(n)
    aug.load_state_dict(state)
    return drawn


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pad, flip", [(4, True), (2, False), (0, True), (3, True)])
def test_output_is_the_padded_window_flipped_as_drawn(dtype, pad, flip):
    x = images(n=12, dtype=dtype)
    aug = RandomCropFlip(pad=pad, flip=flip, seed=1)
    rows, cols, flips = draws_of(aug, len(x))
    out = aug(x)
    assert out.shape == x.shape and out.dtype == x.dtype and isinstance(out, np.ndarray) and out is not x
    np.testing.assert_array_equal(out, naive_crop_flip(x, rows, cols, flips, pad))
    if not flip:
        assert not flips.any()


def test_flip_really_mirrors_and_about_half_flip():
    x = images(n=400, h=5, w=6)
    aug = RandomCropFlip(pad=0, flip=True, seed=2)
    _, _, flips = draws_of(aug, len(x))
    out = aug(x)
    mirrored = np.array([np.array_equal(out[i], x[i, :, :, ::-1]) for i in range(len(x))])
    kept = np.array([np.array_equal(out[i], x[i]) for i in range(len(x))])
    assert (mirrored == flips).all() and (kept == ~flips).all()
    assert 0.4 < flips.mean() < 0.6
    assert np.array_equal(out[flips][..., ::-1], x[flips])


def test_crop_offsets_cover_exactly_the_range():
    pad = 3
    rows, cols, _ = RandomCropFlip(pad=pad, seed=0).draw(5000)
    for offsets in (rows, cols):
        assert offsets.dtype == np.int64
        assert set(np.unique(offsets)) == set(range(2 * pad + 1))  # each of -pad..pad shifts occurs
    assert not np.array_equal(rows, cols)


def test_crop_moves_the_image_and_fills_zeros():
    x = images(n=1, c=2, h=6, w=6)
    out = crop_flip(x, np.array([0]), np.array([4]), np.array([False]), 2)
    # row offset 0 (2 rows of padding on top), column offset 4 (shifted 2 left)
    assert not out[:, :, :2, :].any() and not out[:, :, :, 4:].any()
    np.testing.assert_array_equal(out[:, :, 2:, :4], x[:, :, :4, 2:])
    centre = crop_flip(x, np.array([2]), np.array([2]), np.array([False]), 2)
    np.testing.assert_array_equal(centre, x)


def test_identity_settings_and_empty_batch():
    x = images()
    out = RandomCropFlip(pad=0, flip=False)(x)
    assert np.array_equal(out, x) and out is not x
    empty = RandomCropFlip(pad=2)(x[:0])
    assert empty.shape == (0, 3, 8, 7) and empty.dtype == x.dtype


def test_each_image_gets_its_own_draw():
    x = np.repeat(images(n=1), 16, axis=0)
    out = RandomCropFlip(pad=4, seed=0)(x)
    assert len({out[i].tobytes() for i in range(16)}) > 8


def test_same_seed_same_crops_and_state_resumes_the_next_batch():
    x = images(n=10)
    a, b = RandomCropFlip(pad=4, seed=3), RandomCropFlip(pad=4, seed=3)
    np.testing.assert_array_equal(a(x), b(x))
    assert not np.array_equal(a(x), RandomCropFlip(pad=4, seed=4)(x))
    saved = a.state_dict()
    assert json.loads(json.dumps(saved)) == saved  # JSON-able
    expected = a(x)
    c = RandomCropFlip(pad=4, seed=99)
    c.load_state_dict(saved)
    np.testing.assert_array_equal(c(x), expected)
    with pytest.raises(ValueError, match="PCG64"):
        c.load_state_dict(dict(saved, bit_generator="MT19937"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(pad=-1), "pad must be an integer >= 0"),
    (dict(pad=2.5), "pad must be an integer"),
    (dict(pad=65), "pad must be at most 64"),
    (dict(flip=0.5), "flip must be True or False"),
    (dict(seed=-1), "seed must be an integer >= 0"),
])
def test_bad_arguments_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomCropFlip(**kwargs)


# ---------------------------------------------------------------- the spec and build_augmenter

def test_spec_parses_crop_and_flip():
    assert augment.parse_spec("crop=4,flip=1") == {"shift": 0.0, "scale": 0.0, "rotate": 0.0, "shear": 0.0,
                                                    "crop": 4.0, "flip": 1.0}
    both = augment.parse_spec("crop=2, rotate=10")
    assert both["crop"] == 2.0 and both["rotate"] == 10.0 and "flip" not in both
    # affine-only specs give the same dict as before crops existed
    assert augment.parse_spec("shift=0.1") == {"shift": 0.1, "scale": 0.0, "rotate": 0.0, "shear": 0.0}


def test_affine_only_strengths_build_the_same_random_affine_as_before():
    x = images(n=5, c=1, h=28, w=28)
    strengths = {"shift": 0.1, "scale": 0.1, "rotate": 10.0, "shear": 10.0}
    built = build_augmenter(strengths, seed=7)
    assert type(built) is RandomAffine and built.seed == augment_seed(7)
    np.testing.assert_array_equal(built(x), RandomAffine(**strengths, seed=augment_seed(7))(x))
    zero = build_augmenter(augment.parse_spec("shift=0"), seed=0)  # zero strength: still a RandomAffine
    assert type(zero) is RandomAffine


def test_crop_flip_alone_and_chained_with_affine():
    x = images(n=6, h=12, w=12)
    alone = build_augmenter({"crop": 4.0, "flip": 1.0}, seed=3)
    assert type(alone) is RandomCropFlip and alone.pad == 4 and alone.flip and alone.seed == crop_flip_seed(3)
    assert crop_flip_seed(3) != augment_seed(3)
    flip_only = build_augmenter(augment.parse_spec("crop=0,flip=1"), seed=3)
    assert type(flip_only) is RandomCropFlip and flip_only.pad == 0

    chained = build_augmenter(augment.parse_spec("rotate=15,crop=2,flip=1"), seed=3)
    assert isinstance(chained, Chain) and list(chained.parts) == ["affine", "crop_flip"]
    state = chained.state_dict()
    out = chained(x)
    by_hand = RandomCropFlip(pad=2, flip=True, seed=crop_flip_seed(3))(
        RandomAffine(rotate=15, seed=augment_seed(3))(x))
    np.testing.assert_array_equal(out, by_hand)
    assert json.loads(json.dumps(state)) == state
    after = chained(x)
    chained.load_state_dict(state)
    np.testing.assert_array_equal(chained(x), out)
    np.testing.assert_array_equal(chained(x), after)
    with pytest.raises(ValueError, match="affine, crop_flip"):
        chained.load_state_dict(state["affine"])


def test_fit_with_crop_flip_resumes_bit_identically():
    rng = np.random.default_rng(0)
    x = rng.random((40, 3, 8, 8)).astype("float32")
    t = rng.integers(0, 3, 40)

    def model():
        return Sequential([Conv2D(3, 4, 3, pad=1, rng=1), ReLU(), GlobalAvgPool2D(), Affine(4, 3, rng=2)])

    class Keep(Callback):
        def on_train_end(self, logs):
            self.state = self.training.state()

    spec = {"crop": 2.0, "flip": 1.0, "shift": 0.1}
    straight = model()
    opt = optim.SGD(straight, lr=0.1)
    fit(straight, opt, (x, t), epochs=2, batch_size=10, augment=spec, seed=4, verbose=False)

    first = model()
    opt1 = optim.SGD(first, lr=0.1)
    keep = Keep()
    fit(first, opt1, (x, t), epochs=1, batch_size=10, augment=spec, seed=4, verbose=False, callbacks=[keep])
    assert set(keep.state["rng"]["augment"]) == {"affine", "crop_flip"}
    resumed = model()
    resumed.load_state_dict(first.state_dict())
    opt2 = optim.SGD(resumed, lr=0.1)
    opt2.load_state_dict(opt1.state_dict())
    fit(resumed, opt2, (x, t), epochs=2, batch_size=10, augment=spec, seed=4, verbose=False,
        initial_state=json.loads(json.dumps(keep.state)))
    for key, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value, err_msg=key)
