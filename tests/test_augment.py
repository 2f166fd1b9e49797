"""Each host augmentation op alone, the suite together, and the on-device noise."""

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from alz_jax.configs import convnext_t
from alz_jax.core import steps
from alz_jax.data import augment
from alz_jax.host.errors import UserError
from alz_jax.run import specs

RNG_SEED = 123


def _image(size=33, seed=0):
    return np.random.default_rng(seed).integers(1, 255, (size, size, 1), dtype=np.uint8)


def _warp(image, matrix):
    size = image.shape[0]
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR).reshape(image.shape)


def test_geometric_matrix_rotation_flip_translate_scale_shear():
    image = _image(9)
    # 90 degrees counter-clockwise is numpy's rot90, exactly (centre (size - 1) / 2).
    np.testing.assert_array_equal(_warp(image, augment.geometric_matrix(9, angle_deg=90)),
                                  np.rot90(image))  # fmt: skip
    np.testing.assert_array_equal(_warp(image, augment.geometric_matrix(9, hflip=True)),
                                  image[:, ::-1])  # fmt: skip
    np.testing.assert_array_equal(_warp(image, augment.geometric_matrix(9, vflip=True)),
                                  image[::-1])  # fmt: skip
    shifted = _warp(image, augment.geometric_matrix(9, translate_px=(2, 0)))
    np.testing.assert_array_equal(shifted[:, 2:], image[:, :-2])
    assert np.all(shifted[:, :2] == 0)
    # Scale and shear keep the centre fixed; shear along x leaves the centre row in place.
    centre = np.array([4.0, 4.0, 1.0])
    for kwargs in ({"scale": 1.7}, {"shear_deg": 20.0}, {"angle_deg": 33.0}):
        np.testing.assert_allclose(augment.geometric_matrix(9, **kwargs) @ centre, [4, 4],
                                   atol=1e-5)  # fmt: skip
    m = augment.geometric_matrix(9, shear_deg=45.0)
    np.testing.assert_allclose(m @ np.array([7.0, 4.0, 1.0]), [7, 4], atol=1e-5)
    np.testing.assert_allclose(m @ np.array([4.0, 6.0, 1.0]), [2, 6], atol=1e-5)


def test_ops_off_leave_the_image_unchanged():
    image = _image()
    spec = augment.AugmentSpec()
    rng = np.random.default_rng(RNG_SEED)
    for op in (augment.random_geometry, augment.random_blur, augment.random_jitter,
               augment.random_erase):  # fmt: skip
        np.testing.assert_array_equal(op(rng, image, spec), image)


def test_flip_only_is_exact():
    image = _image()
    out = augment.random_geometry(
        np.random.default_rng(0), image, augment.AugmentSpec(hflip_prob=1)
    )
    np.testing.assert_array_equal(out, image[:, ::-1])


def test_rotation_angles_stay_in_range():
    # A bright dot to the right of the centre moves on a circle by at most rotate_deg.
    size, spec = 65, augment.AugmentSpec(rotate_prob=1.0, rotate_deg=15.0)
    image = np.zeros((size, size, 1), np.uint8)
    image[32, 56] = 255
    angles = []
    rng = np.random.default_rng(RNG_SEED)
    for _ in range(200):
        out = augment.random_geometry(rng, image, spec)[:, :, 0].astype(float)
        ys, xs = np.nonzero(out)
        weights = out[ys, xs]
        y, x = np.average(ys, weights=weights), np.average(xs, weights=weights)
        angles.append(np.degrees(np.arctan2(32 - y, x - 32)))
    angles = np.array(angles)
    assert np.all(np.abs(angles) <= 15.5) and angles.max() > 12 and angles.min() < -12


def test_blur_matches_opencv_with_the_drawn_sigma():
    image = _image()
    spec = augment.AugmentSpec(blur_prob=1.0, blur_kernel=5, blur_sigma=(0.5, 1.5))
    out = augment.random_blur(np.random.default_rng(RNG_SEED), image, spec)
    replay = np.random.default_rng(RNG_SEED)
    replay.random()
    sigma = replay.uniform(0.5, 1.5)
    expected = cv2.GaussianBlur(image, (5, 5), sigmaX=sigma, sigmaY=sigma)
    np.testing.assert_array_equal(out[:, :, 0], expected)


def test_jitter_brightness_and_contrast():
    image = np.full((8, 8, 1), 100, np.uint8)
    image[0, 0] = 200
    spec = augment.AugmentSpec(jitter_prob=1.0, brightness=0.4, contrast=0.5)
    out = augment.random_jitter(np.random.default_rng(RNG_SEED), image, spec)
    replay = np.random.default_rng(RNG_SEED)
    replay.random()
    b, c = replay.uniform(0.6, 1.4), replay.uniform(0.5, 1.5)
    x = image.astype(np.float32) * b
    expected = np.clip(np.rint((x - x.mean()) * c + x.mean()), 0, 255)
    np.testing.assert_array_equal(out, expected)


def test_random_erasing_box():
    spec = augment.AugmentSpec(erase_prob=1.0, erase_value=7)
    rng = np.random.default_rng(RNG_SEED)
    image = np.full((64, 64, 1), 200, np.uint8)
    fractions = []
    for _ in range(300):
        out = augment.random_erase(rng, image, spec)
        erased = out[:, :, 0] == 7
        assert np.all(out[~erased] == 200)
        ys, xs = np.nonzero(erased)
        assert erased.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)  # one rectangle
        fractions.append(erased.mean())
    assert min(fractions) > 0.015 and max(fractions) < 0.36


def test_augment_suite_shape_dtype_determinism():
    spec = specs.augment_spec(convnext_t.get_config().augment)
    square = _image(256)[:, :, 0]
    a = augment.augment(np.random.default_rng(5), square, 64, spec)
    b = augment.augment(np.random.default_rng(5), square, 64, spec)
    c = augment.augment(np.random.default_rng(6), square, 64, spec)
    assert a.shape == (64, 64, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unknown_augment_field_is_an_error():
    with pytest.raises(UserError, match="rotation_deg"):
        specs.augment_spec(ml_collections.ConfigDict({"rotation_deg": 3.0}))


def test_device_noise_statistics():
    images = jnp.zeros((400, 8, 8, 1))
    keys = jax.random.split(jax.random.key(0), 400)  # one key per image
    noisy = np.asarray(steps.add_gaussian_noise(keys, images, 1.0, 0.3))
    assert abs(noisy.std() - 0.3) < 0.01 and abs(noisy.mean()) < 0.01
    half = np.asarray(steps.add_gaussian_noise(keys, images, 0.5, 0.3))
    untouched = np.all(half.reshape(400, -1) == 0, axis=1)
    assert 0.4 < untouched.mean() < 0.6
    # An image's noise depends on its own key only, not on the rest of the batch.
    part = np.asarray(steps.add_gaussian_noise(keys[100:110], images[100:110], 0.5, 0.3))
    np.testing.assert_array_equal(part, half[100:110])


def test_bench_augment_reports_one_byte_per_pixel():
    from alz_jax import bench

    result = bench.bench_augment(size=64, seconds=0.2)
    assert result["bytes_per_image_to_device"] == 64 * 64  # uint8, one channel
    assert result["bytes_per_image_float32_3ch"] == 64 * 64 * 3 * 4
    assert result["img_per_s"] > 0
