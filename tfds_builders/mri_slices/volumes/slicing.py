"""A RAS volume's 2D slices as the settings ask: which slice indices along the axis, per-volume
intensity normalisation into 0..255, each slice turned for display and fitted to the stored
square size, and PNG encoding.

Every function is pure (arrays in, arrays out); `cut` is the whole pipeline for one volume.
"""

from __future__ import annotations

import cv2
import numpy as np

from .reading import VolumeError
from .settings import AXES, VolumeSettings


def _centre(data: np.ndarray, axis: int, centre: str, source: str) -> int:
    """The window's centre index: the axis's middle (length // 2), or the brain's intensity
    centre of mass along it (intensities clipped at 0; as scipy.ndimage.center_of_mass, rounded
    half up)."""
    length = data.shape[axis]
    if centre != "mass":
        return length // 2
    others = tuple(a for a in range(data.ndim) if a != axis)
    profile = np.clip(data, 0, None).sum(axis=others, dtype=np.float64)
    total = float(profile.sum())
    if total <= 0:
        raise VolumeError(
            f"{source}: blank volume: no positive intensity, so no centre of mass; expected a "
            "brain (or --config.data.volume_centre=middle)",
            "blank volume",
        )
    mass = float(np.dot(np.arange(length), profile)) / total
    return int(np.floor(mass + 0.5))


def slice_indices(
    data: np.ndarray, settings: VolumeSettings, source: str = "the volume"
) -> list[int]:
    """The slice indices along settings.axis (RAS: sagittal 0, coronal 1, axial 2) of a RAS
    volume, increasing.

    The range is, with settings.window > 0, `window` slices centred on `_centre` (from centre -
    window // 2), shifted to lie inside the volume (the whole axis where the window is longer);
    else ClinicaDL's rule: the axis without `discard` slices at each end. Then every `step`-th
    slice of the range, from its first. VolumeError ("slice range", naming `source`) where no
    slice is left.
    """
    axis = AXES.index(settings.axis)
    length = data.shape[axis]
    if settings.window > 0:
        start = _centre(data, axis, settings.centre, source) - settings.window // 2
        start = max(0, min(start, length - settings.window))
        stop = min(length, start + settings.window)
        rule = f"--config.data.volume_window={settings.window}"
    else:
        start, stop = settings.discard, length - settings.discard
        rule = f"--config.data.volume_discard={settings.discard} at each end"
    indices = list(range(start, stop, settings.step))
    if not indices:
        raise VolumeError(
            f"{source}: no slices left: its {settings.axis} axis has {length} slices and "
            f"{rule}; expected a smaller volume_discard (or a volume_window) for this volume",
            "slice range",
        )
    return indices


def _stat(value: float) -> float:
    """A statistic rounded to 4 significant digits (reports compare them between cohorts)."""
    return float(f"{float(value):.4g}")


def normalise(
    data: np.ndarray, clip: tuple[float, float], source: str = "the volume"
) -> tuple[np.ndarray, dict]:
    """The volume clipped at its (low, high) intensity percentiles (over every voxel) and scaled
    linearly into uint8 0..255 (rounded), and the stats {"p_low", "p_high", "mean", "std", "min",
    "max"} of the original intensities (4 significant digits). VolumeError ("blank volume")
    where the two percentiles are equal (a constant volume, or one almost all background)."""
    p_low, p_high = (float(p) for p in np.percentile(data, list(clip)))
    if not p_high > p_low:
        raise VolumeError(
            f"{source}: blank volume: its {clip[0]:g}th and {clip[1]:g}th intensity percentiles "
            f"are both {p_low:g}; expected a volume with contrast (--config.data.volume_clip)",
            "blank volume",
        )
    stats = {
        "p_low": _stat(p_low),
        "p_high": _stat(p_high),
        "mean": _stat(data.mean(dtype=np.float64)),
        "std": _stat(data.std(dtype=np.float64)),
        "min": _stat(data.min()),
        "max": _stat(data.max()),
    }
    scaled = (np.clip(data, p_low, p_high) - p_low) * (255.0 / (p_high - p_low))
    return np.rint(scaled).astype(np.uint8), stats


def oriented_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice `index` along RAS `axis` of a RAS volume, turned for display (rows top to bottom,
    columns left to right):

    - sagittal (0): superior at the top, anterior on the left (as FSLeyes and ITK-SNAP show it);
    - coronal (1): superior at the top, the patient's right on the left (radiological);
    - axial (2): anterior at the top, the patient's right on the left (radiological).

    Each is the slice transposed and flipped on both axes; the same for every file because the
    input is RAS whatever the file's own orientation.
    """
    return np.ascontiguousarray(np.take(volume, index, axis=axis).T[::-1, ::-1])


def fit(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    """A size x size uint8 image: mode "pad" scales so that the longer side is `size` (the
    aspect kept) and pads the shorter side with 0, centred (the odd pixel after); "resize"
    stretches. Shrinking interpolates by area, growing linearly (OpenCV)."""
    height, width = image.shape
    if mode == "resize":
        shape = (size, size)
    else:
        scale = size / max(height, width)
        shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    if shape != (height, width):
        growing = shape[0] * shape[1] > height * width
        flag = cv2.INTER_LINEAR if growing else cv2.INTER_AREA
        image = cv2.resize(image, (shape[1], shape[0]), interpolation=flag)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - shape[0]) // 2, (size - shape[1]) // 2
    out[top : top + shape[0], left : left + shape[1]] = image
    return out


def cut(
    data: np.ndarray, settings: VolumeSettings, source: str = "the volume"
) -> tuple[list[tuple[int, np.ndarray]], dict]:
    """One RAS volume's slices as the settings ask: [(slice index, size x size uint8 image)],
    and its stats (`normalise`'s, "shape": the RAS volume's shape, "slices": how many).
    VolumeError (naming `source`, e.g. the file) for an empty slice range or a blank volume."""
    axis = AXES.index(settings.axis)
    indices = slice_indices(data, settings, source)
    volume, stats = normalise(data, settings.clip, source)
    slices = [
        (i, fit(oriented_slice(volume, axis, i), settings.size, settings.fit)) for i in indices
    ]
    return slices, {**stats, "shape": list(data.shape), "slices": len(slices)}


def encode_png(image: np.ndarray) -> bytes:
    """A 2D uint8 image as PNG bytes (lossless)."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} {image.dtype} image as PNG")
    return encoded.tobytes()
