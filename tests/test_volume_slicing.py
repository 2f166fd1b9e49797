"""Slicing a RAS volume: the slice indices each range setting gives (discard, window around the
middle or the centre of mass, step), per-volume percentile normalisation, the display
orientation of each axis, fitting to the stored size, the whole `cut` and PNG encoding."""

import cv2
import numpy as np
import pytest

from alz_jax.tfds_builders.mri_slices.volumes import slicing
from alz_jax.tfds_builders.mri_slices.volumes.reading import VolumeError
from alz_jax.tfds_builders.mri_slices.volumes.settings import VolumeSettings


def indices(data, **settings) -> list[int]:
    return slicing.slice_indices(data, VolumeSettings(**settings))


def test_slice_indices():
    volume = np.zeros((30, 20, 10), np.float32)
    assert indices(volume, discard=5) == list(range(5, 25))
    assert indices(volume, discard=5, step=3) == [5, 8, 11, 14, 17, 20, 23]
    assert indices(volume, axis="coronal", discard=8) == [8, 9, 10, 11]
    assert indices(volume, axis="axial", discard=0, step=4) == [0, 4, 8]
    assert indices(volume, window=4) == [13, 14, 15, 16]  # middle 15, from 15 - 4 // 2
    assert indices(volume, window=5, step=2) == [13, 15, 17]
    assert indices(volume, axis="axial", window=15) == list(range(10))  # longer than the axis
    mass = volume.copy()
    mass[1] = 1.0
    assert indices(mass, window=4, centre="mass") == [0, 1, 2, 3]  # shifted inside
    assert indices(mass, window=4, centre="middle") == [13, 14, 15, 16]
    mass[:] = 0.0
    mass[28] = 1.0
    assert indices(mass, window=4, centre="mass") == [26, 27, 28, 29]
    mass[:] = 0.0
    mass[10] = mass[13] = 1.0  # centre of mass 11.5: rounded half up
    mass[2] = -100.0  # negative intensities don't pull the centre (clipped at 0)
    assert indices(mass, window=3, centre="mass") == [11, 12, 13]
    mass[:] = 0.0
    mass[:, :, 7] = 1.0  # along the axial axis the centre is 7: window 2 from 7 - 1
    assert indices(mass, axis="axial", window=2, centre="mass") == [6, 7]


def test_empty_range_and_blank_volume():
    volume = np.ones((30, 20, 10), np.float32)
    with pytest.raises(VolumeError) as info:
        slicing.slice_indices(volume, VolumeSettings(axis="axial", discard=5), "v.nii.gz")
    assert info.value.reason == "slice range"
    message = str(info.value)
    assert message.startswith("v.nii.gz: no slices left: its axial axis has 10 slices")
    assert "--config.data.volume_discard=5 at each end" in message
    with pytest.raises(VolumeError) as info:
        slicing.normalise(volume, (0.5, 99.5), "flat.nii")
    assert info.value.reason == "blank volume"
    assert str(info.value).startswith("flat.nii: blank volume: its 0.5th and 99.5th")
    with pytest.raises(VolumeError, match="no positive intensity") as info:
        slicing.slice_indices(-volume, VolumeSettings(window=3, centre="mass"))
    assert info.value.reason == "blank volume"


def test_normalise_percentiles():
    data = np.random.default_rng(3).normal(100.0, 30.0, (12, 14, 10)).astype(np.float32)
    low, high = np.percentile(data, [2.0, 98.0])
    image, stats = slicing.normalise(data, (2.0, 98.0))
    assert image.dtype == np.uint8 and image.shape == data.shape
    assert np.all(image[data <= low] == 0) and np.all(image[data >= high] == 255)
    expected = np.rint((np.clip(data, low, high) - low) / (high - low) * 255.0)
    assert np.abs(image.astype(float) - expected).max() <= 1.0
    assert (image.astype(float) == expected).mean() > 0.99
    assert stats == {
        "p_low": float(f"{low:.4g}"),
        "p_high": float(f"{high:.4g}"),
        "mean": float(f"{data.mean(dtype=np.float64):.4g}"),
        "std": float(f"{data.std(dtype=np.float64):.4g}"),
        "min": float(f"{data.min():.4g}"),
        "max": float(f"{data.max():.4g}"),
    }


def test_display_orientation():
    volume = np.zeros((5, 6, 7), np.uint8)
    volume[4, 5, 6] = 200  # the patient's right, anterior, superior corner
    volume[0, 0, 0] = 100  # left, posterior, inferior
    for axis, index, shape in ((0, 4, (7, 6)), (1, 5, (7, 5)), (2, 6, (6, 5))):
        image = slicing.oriented_slice(volume, axis, index)
        assert image.shape == shape
        # Top left: superior (axial: anterior), and anterior (sagittal) or the patient's right.
        assert image[0, 0] == 200 and image.sum() == 200
    for axis in range(3):
        assert slicing.oriented_slice(volume, axis, 0)[-1, -1] == 100


def test_fit():
    wide = np.full((10, 20), 255, np.uint8)
    padded = slicing.fit(wide, 40, "pad")
    assert padded.shape == (40, 40) and padded.dtype == np.uint8
    assert np.all(padded[10:30] == 255) and not padded[:10].any() and not padded[30:].any()
    assert np.all(slicing.fit(wide, 40, "resize") == 255)
    tall = np.full((100, 50), 255, np.uint8)
    shrunk = slicing.fit(tall, 20, "pad")
    assert np.all(shrunk[:, 5:15] == 255) and not shrunk[:, :5].any() and not shrunk[:, 15:].any()
    odd = slicing.fit(np.full((10, 14), 255, np.uint8), 16, "pad")  # 11 rows (16 * 10 / 14)
    assert np.flatnonzero(odd.any(axis=1)).tolist() == list(range(2, 13))
    square = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(slicing.fit(square, 16, "pad"), square)


def test_cut_and_png():
    data = np.random.default_rng(4).uniform(0, 50, (12, 14, 10)).astype(np.float32)
    settings = VolumeSettings(axis="coronal", discard=3, step=2, size=20, fit="pad")
    slices, stats = slicing.cut(data, settings)
    assert [i for i, _ in slices] == [3, 5, 7, 9]
    assert stats["shape"] == [12, 14, 10] and stats["slices"] == 4
    assert {"p_low", "p_high", "mean", "std", "min", "max"} <= set(stats)
    volume, _ = slicing.normalise(data, settings.clip)
    for index, image in slices:
        assert image.shape == (20, 20) and image.dtype == np.uint8
        expected = slicing.fit(slicing.oriented_slice(volume, 1, index), 20, "pad")
        np.testing.assert_array_equal(image, expected)
    encoded = slicing.encode_png(slices[0][1])
    assert encoded[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded, slices[0][1])
