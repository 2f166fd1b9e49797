"""Host-side, per-image training augmentation of single-channel uint8 images (OpenCV).

Random resized crop, flips, rotation, affine (translate, scale, shear), Gaussian blur,
brightness/contrast and random erasing, each with its probability and magnitude from the
config's `augment` section; the seed report's torchvision pipeline is expressible there
(configs/convnext_t.py). Gaussian noise is the exception: it runs on device, in float, after
normalisation (values below 0 or above 1 must survive, as in the seed pipeline; clipping them to
uint8 would bias the mostly-black background upward), see `steps.make_train_step`.

Each op takes a `np.random.Generator` that Grain seeds from the pipeline seed and the record's
global position, so augmentation is deterministic and independent of process and worker count.
Every op draws its random numbers whether or not it fires, so switching one op on or off leaves
the others' draws unchanged.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from alz_jax.data import preprocess
from alz_jax.host.errors import check_fields

BACKGROUND_VALUE = 0  # fill for pixels a warp brings in from outside the image


def random_resized_crop_box(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:  # fmt: skip
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


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """Every host augmentation op with its probability and magnitude (see `from_config`)."""

    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_prob: float = 0.0
    vflip_prob: float = 0.0
    rotate_prob: float = 0.0
    rotate_deg: float = 0.0  # angle ~ U(-rotate_deg, rotate_deg)
    affine_prob: float = 0.0
    translate: float = 0.0  # shift ~ U(-t, t) x image size, per axis
    affine_scale: tuple[float, float] = (1.0, 1.0)
    shear_deg: float = 0.0  # x shear ~ U(-shear_deg, shear_deg)
    blur_prob: float = 0.0
    blur_kernel: int = 3
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    jitter_prob: float = 0.0
    brightness: float = 0.0  # factor ~ U(1 - b, 1 + b)
    contrast: float = 0.0  # factor ~ U(1 - c, 1 + c), around the image mean
    erase_prob: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    erase_value: int = 0

    def __post_init__(self):
        def ordered(pair, low, high=None, low_open=True):
            """low < (or <=) pair[0] <= pair[1] <= high (finite if no high): a range field.
            Comparisons with NaN are False, so NaN is refused too."""
            if len(pair) != 2:
                return False
            first_ok = low < pair[0] if low_open else low <= pair[0]
            last_ok = pair[1] < math.inf if high is None else pair[1] <= high
            return first_ok and pair[0] <= pair[1] and last_ok

        def within(value, low, high):
            return low <= value <= high

        k = self.blur_kernel
        checks = [
            ("crop_scale", self.crop_scale, ordered(self.crop_scale, 0, 1), "0 < low <= high <= 1"),
            ("crop_ratio", self.crop_ratio, ordered(self.crop_ratio, 0), "0 < low <= high"),
            ("rotate_deg", self.rotate_deg, within(self.rotate_deg, 0, 180), "in [0, 180]"),
            ("translate", self.translate, within(self.translate, 0, 1),
             "in [0, 1] (a fraction of the image size)"),
            ("affine_scale", self.affine_scale, ordered(self.affine_scale, 0),
             "0 < low <= high"),
            ("shear_deg", self.shear_deg, 0 <= self.shear_deg < 90, "in [0, 90)"),
            ("blur_kernel", k, isinstance(k, int) and k >= 1 and k % 2 == 1,
             "a positive odd integer"),
            ("blur_sigma", self.blur_sigma, ordered(self.blur_sigma, 0, low_open=False),
             "0 <= low <= high"),
            ("brightness", self.brightness, 0 <= self.brightness < math.inf, ">= 0 and finite"),
            ("contrast", self.contrast, 0 <= self.contrast < math.inf, ">= 0 and finite"),
            ("erase_scale", self.erase_scale, ordered(self.erase_scale, 0, 1),
             "0 < low <= high <= 1 (fractions of the image area)"),
            ("erase_ratio", self.erase_ratio, ordered(self.erase_ratio, 0), "0 < low <= high"),
            ("erase_value", self.erase_value, within(self.erase_value, 0, 255),
             "in [0, 255] (a uint8 pixel value)"),
        ]  # fmt: skip
        for f in dataclasses.fields(self):
            if f.name.endswith("_prob"):
                value = getattr(self, f.name)
                checks.append((f.name, value, 0.0 <= value <= 1.0, "in [0, 1]"))
        check_fields("augment", checks)


def geometric_matrix(
    size: int,
    *,
    hflip: bool = False,
    vflip: bool = False,
    angle_deg: float = 0.0,
    translate_px: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    shear_deg: float = 0.0,
) -> np.ndarray:
    """2x3 forward matrix of flips, then rotation, then affine, about the image centre.

    The order of torchvision's RandomHorizontalFlip/RandomVerticalFlip, RandomRotation and
    RandomAffine, fused into one warp. Positive angles rotate counter-clockwise on screen.
    """
    c = (size - 1) / 2.0
    to_centre = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1]], np.float64)
    back = np.array([[1, 0, c], [0, 1, c], [0, 0, 1]], np.float64)
    flip = np.diag([-1.0 if hflip else 1.0, -1.0 if vflip else 1.0, 1.0])
    a = math.radians(angle_deg)
    # Image rows grow downwards, so a counter-clockwise rotation on screen uses -a here.
    rotate = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])
    shear = np.array([[1, -math.tan(math.radians(shear_deg)), 0], [0, 1, 0], [0, 0, 1]])
    affine = np.diag([scale, scale, 1.0]) @ shear
    affine[0, 2], affine[1, 2] = translate_px
    forward = back @ affine @ rotate @ flip @ to_centre
    return forward[:2].astype(np.float32)


def random_geometry(rng: np.random.Generator, image: np.ndarray, spec: AugmentSpec) -> np.ndarray:
    """Flips, rotation and affine, each with its probability, as one warp (or plain flips)."""
    size = image.shape[0]
    # Every draw always happens, so the random stream doesn't depend on which ops are active.
    hflip, vflip = rng.random() < spec.hflip_prob, rng.random() < spec.vflip_prob
    do_rotate, angle = rng.random() < spec.rotate_prob, rng.uniform(-1, 1) * spec.rotate_deg
    do_affine = rng.random() < spec.affine_prob
    shift = rng.uniform(-1, 1, 2) * spec.translate * size
    scale = rng.uniform(*spec.affine_scale)
    shear = rng.uniform(-1, 1) * spec.shear_deg
    if not (do_rotate or do_affine):
        out = image[:, ::-1] if hflip else image
        return np.ascontiguousarray(out[::-1] if vflip else out)
    matrix = geometric_matrix(
        size,
        hflip=hflip,
        vflip=vflip,
        angle_deg=angle if do_rotate else 0.0,
        translate_px=tuple(np.round(shift)) if do_affine else (0.0, 0.0),
        scale=scale if do_affine else 1.0,
        shear_deg=shear if do_affine else 0.0,
    )
    out = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=BACKGROUND_VALUE
    )
    return out.reshape(image.shape)


def random_blur(rng: np.random.Generator, image: np.ndarray, spec: AugmentSpec) -> np.ndarray:
    """Gaussian blur with sigma ~ U(blur_sigma), with probability blur_prob."""
    apply, sigma = rng.random() < spec.blur_prob, rng.uniform(*spec.blur_sigma)
    if not apply:
        return image
    k = spec.blur_kernel
    return cv2.GaussianBlur(image, (k, k), sigmaX=sigma, sigmaY=sigma).reshape(image.shape)


def random_jitter(rng: np.random.Generator, image: np.ndarray, spec: AugmentSpec) -> np.ndarray:
    """Brightness then contrast (about the image mean), with probability jitter_prob; clipped."""
    apply = rng.random() < spec.jitter_prob
    b = rng.uniform(max(0.0, 1 - spec.brightness), 1 + spec.brightness)
    c = rng.uniform(max(0.0, 1 - spec.contrast), 1 + spec.contrast)
    if not apply:
        return image
    x = image.astype(np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def random_erase_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int] | None:
    """(top, left, h, w) of torchvision RandomErasing's box, or None after 10 failed tries."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        erase_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        h = round(math.sqrt(erase_area * aspect))
        w = round(math.sqrt(erase_area / aspect))
        if h < height and w < width:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return None


def random_erase(rng: np.random.Generator, image: np.ndarray, spec: AugmentSpec) -> np.ndarray:
    """Sets a random box to erase_value with probability erase_prob."""
    if not rng.random() < spec.erase_prob:
        return image
    box = random_erase_box(rng, image.shape[0], image.shape[1], spec.erase_scale, spec.erase_ratio)
    if box is None:
        return image
    top, left, h, w = box
    image = image.copy()
    image[top : top + h, left : left + w] = spec.erase_value
    return image


def augment(rng: np.random.Generator, square: np.ndarray, size: int, spec: AugmentSpec):
    """The host training augmentation of a padded square uint8 image, output (size, size, 1).

    Random resized crop and resize first (area interpolation when shrinking, so a large
    downscale doesn't alias), then flips/rotation/affine as one warp at the output size, blur,
    brightness/contrast, random erasing.
    """
    side = square.shape[0]
    box = random_resized_crop_box(rng, side, side, spec.crop_scale, spec.crop_ratio)
    image = preprocess.to_model_input(square, size, box)
    image = random_geometry(rng, image, spec)
    image = random_blur(rng, image, spec)
    image = random_jitter(rng, image, spec)
    return random_erase(rng, image, spec)
