"""Random affine augmentation: identity at zero strength, exact shifts and rotations against
NumPy, bilinear values against a naive per-pixel loop, shapes/dtypes, seeding, state round
trips, strengths out of range."""
import math

import numpy as np
import pytest

from cnn_xp import augment
from cnn_xp.augment import RandomAffine, affine_resample


def images(n=6, c=2, h=28, w=28, dtype="float32", seed=0):
    return np.random.default_rng(seed).random((n, c, h, w)).astype(dtype)


def maps(n, matrix):
    return np.tile(np.asarray(matrix, dtype=np.float64), (n, 1, 1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_zero_strength_and_identity_map_return_the_input_exactly(dtype):
    x = images(dtype=dtype)
    out = RandomAffine(seed=5)(x)
    assert out.dtype == x.dtype and out.shape == x.shape and out is not x
    assert np.array_equal(out, x)
    assert np.array_equal(affine_resample(x, maps(len(x), [[1, 0, 0], [0, 1, 0]])), x)


def test_integer_shift_moves_pixels_and_fills_zeros():
    x = images(h=10, w=12)
    right_down = affine_resample(x, maps(len(x), [[1, 0, -3], [0, 1, -2]]))  # read 3 left, 2 up
    assert np.array_equal(right_down[:, :, 2:, 3:], x[:, :, :-2, :-3])
    assert not right_down[:, :, :2, :].any() and not right_down[:, :, :, :3].any()


def test_quarter_turn_is_rot90_and_half_turn_is_a_flip():
    x = images(h=9, w=9, dtype="float64")
    quarter = affine_resample(x, maps(len(x), [[0, -1, 0], [1, 0, 0]]))  # out[r, c] = x[c, W-1-r]
    np.testing.assert_allclose(quarter, np.rot90(x, 1, axes=(2, 3)), atol=1e-12)
    half = affine_resample(x, maps(len(x), [[-1, 0, 0], [0, -1, 0]]))
    np.testing.assert_allclose(half, x[:, :, ::-1, ::-1], atol=1e-12)


def naive_resample(x, inverse):
    """The definition, one pixel at a time: bilinear read at the inverse-mapped point, 0 outside."""
    n, c, h, w = x.shape
    out = np.zeros_like(x, dtype=np.float64)

    def pixel(i, ch, r, col):
        return float(x[i, ch, r, col]) if 0 <= r < h and 0 <= col < w else 0.0

    for i in range(n):
        for r in range(h):
            for col in range(w):
                u, v = col - (w - 1) / 2, r - (h - 1) / 2
                sx = inverse[i, 0, 0] * u + inverse[i, 0, 1] * v + inverse[i, 0, 2] + (w - 1) / 2
                sy = inverse[i, 1, 0] * u + inverse[i, 1, 1] * v + inverse[i, 1, 2] + (h - 1) / 2
                x0, y0 = math.floor(sx), math.floor(sy)
                fx, fy = sx - x0, sy - y0
                for ch in range(c):
                    out[i, ch, r, col] = ((1 - fy) * ((1 - fx) * pixel(i, ch, y0, x0) + fx * pixel(i, ch, y0, x0 + 1))
                                          + fy * ((1 - fx) * pixel(i, ch, y0 + 1, x0) + fx * pixel(i, ch, y0 + 1, x0 + 1)))
    return out


def test_random_maps_match_the_naive_bilinear_definition():
    x = images(n=4, c=2, h=11, w=13, dtype="float64", seed=1)
    aug = RandomAffine(shift=0.3, scale=0.4, rotate=60, shear=30, seed=2)
    inverse = aug.draw(len(x), 11, 13)
    np.testing.assert_allclose(affine_resample(x, inverse), naive_resample(x, inverse), atol=1e-12)
    far = maps(1, [[1, 0, 40], [0, 1, -40]])  # reads entirely outside the image
    assert not affine_resample(x[:1], far).any()


def test_draws_respect_the_strengths():
    aug = RandomAffine(shift=0.1, scale=0.2, rotate=15, shear=0, seed=0)
    inv = aug.draw(2000, 28, 28)
    linear = inv[:, :, :2]
    det = np.linalg.det(linear)  # 1 / zoom^2
    zoom = 1 / np.sqrt(det)
    assert zoom.min() >= 0.8 - 1e-12 and zoom.max() <= 1.2 + 1e-12 and zoom.std() > 0.05
    angle = np.degrees(np.arctan2(-linear[:, 1, 0], linear[:, 1, 1]))
    assert np.abs(angle).max() <= 15 + 1e-9 and np.abs(angle).max() > 14
    shift = -np.einsum("nij,nj->ni", np.linalg.inv(linear), inv[:, :, 2])  # t = -A^-1^-1 * offset
    assert np.abs(shift).max() <= 2.8 + 1e-9 and np.abs(shift).max() > 2.7


def test_same_seed_same_distortions_and_state_round_trip():
    x = images()
    a, b = RandomAffine(shift=0.1, rotate=10, seed=3), RandomAffine(shift=0.1, rotate=10, seed=3)
    assert np.array_equal(a(x), b(x))
    assert not np.array_equal(a(x), RandomAffine(shift=0.1, rotate=10, seed=4)(x))
    saved = a.state_dict()
    expected = a(x)
    c = RandomAffine(shift=0.1, rotate=10, seed=99)
    c.load_state_dict(saved)
    assert np.array_equal(c(x), expected)
    assert all(isinstance(v, (int, str)) for v in saved.values())  # JSON-able


def test_each_image_gets_its_own_distortion():
    x = np.repeat(images(n=1), 8, axis=0)
    out = RandomAffine(rotate=30, seed=0)(x)
    assert len({out[i].tobytes() for i in range(8)}) == 8


@pytest.mark.parametrize("spec, message", [
    ("rotate=200", r"rotate must be a number in \[0, 180\]"),
    ("shift=-0.1", "shift must be"),
    ("scale=1", "scale must be"),
    ("shear=50", "shear must be"),
    ("twist=3", "unknown augmentation 'twist'"),
    ("rotate", "expected NAME=VALUE"),
    ("rotate=ten", "expected a number"),
    ("rotate=1,rotate=2", "given twice"),
    ("crop=2.5", r"crop must be an integer in \[0, 64\]"),
    ("crop=65", "crop must be"),
    ("crop=-1", "crop must be"),
    ("flip=0.5", r"flip must be 0 or 1 in \[0, 1\]"),
    ("flip=2", "flip must be"),
    ("crop=2,crop=3", "given twice"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        augment.parse_spec(spec)
    assert "\n" not in str(info.value)


def test_spec_parsing():
    assert augment.parse_spec("none") is None
    assert augment.parse_spec("rotate=10, shift=0.1") == {"shift": 0.1, "scale": 0.0, "rotate": 10.0, "shear": 0.0}
    with pytest.raises(ValueError, match="rotate must be"):
        RandomAffine(rotate=-1)
