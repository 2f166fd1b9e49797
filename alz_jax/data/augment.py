"""Host-side, per-image training augmentation on uint8 numpy images (random resized crop, flips).

Each op takes a `np.random.Generator` that Grain seeds from the pipeline seed and the record's
global position, so augmentation is deterministic and independent of process and worker count.
"""

from __future__ import annotations

import math

import numpy as np


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop with area fraction in `scale` and aspect ratio in `ratio`.

    torchvision's RandomResizedCrop.get_params: 10 tries with log-uniform aspect ratio, then a
    centre crop clamped to the ratio range.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_flips(
    rng: np.random.Generator, image: np.ndarray, hflip_prob: float, vflip_prob: float
) -> np.ndarray:
    """Flips left-right with probability hflip_prob and top-bottom with vflip_prob."""
    # Both draws always happen so the random stream doesn't depend on the probabilities' values.
    do_h, do_v = rng.random() < hflip_prob, rng.random() < vflip_prob
    if do_h:
        image = image[:, ::-1]
    if do_v:
        image = image[::-1]
    return np.ascontiguousarray(image)
