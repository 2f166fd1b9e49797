"""Graded image perturbations for the robustness panel of `python -m alz_jax.compare`.

Each perturbation maps a stored 2-D uint8 slice to another (numpy/OpenCV, rounded and clipped to
[0, 255]) at a level in its own units; the clean level (the identity) returns the image as it
is. Randomness (the noise, the bias field's shape, the rotation's direction) comes from a key
per image: (seed, perturbation, the image's position in the split), never from the batch or the
level, so that a result does not depend on batching, and the levels of one perturbation differ
only in strength (the same noise pattern, scaled).

The perturbed images enter the one evaluation path unchanged: `PerturbedData` stands in for the
prepared data set in `reports.predict_split_multi`, and its source perturbs each image on read,
before the evaluation preprocessing (pad to a square, resize to the run's image size), as if
the stored slice itself had been degraded.

| name | level | clean | what |
| --- | --- | --- | --- |
| noise | sigma in [0, 1] pixel units | 0 | + N(0, (255 sigma)^2) per pixel |
| scale | factor > 0 | 1 | intensity x factor |
| gamma | gamma > 0 | 1 | 255 (I / 255)^gamma |
| bias_field | amplitude a >= 0 | 0 | x exp(a s), s a random cubic in x, y: mean 0, max abs 1 |
| blur | sigma in pixels >= 0 | 0 | Gaussian blur (OpenCV) |
| jpeg | quality 1-100 | none | JPEG re-compression at that quality |
| rotation | degrees | 0 | rotation about the centre, random direction, black corners |
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from alz_jax.data import preprocess
from alz_jax.host.errors import UserError

# The bias field is a polynomial of this order in the image coordinates (MRI bias fields are
# smooth; a cubic gives a few broad bright and dark regions across a slice).
BIAS_FIELD_ORDER = 3
# A perturbed image reaches the pipeline as an uncompressed BMP: lossless, and far cheaper to
# encode than PNG (the pipeline's decoder reads either).
_LOSSLESS = ".bmp"


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(image + rng.standard_normal(image.shape) * (255.0 * sigma))


def _scale(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    del rng
    return _to_uint8(image.astype(np.float64) * factor)


def _gamma(image: np.ndarray, gamma: float, rng: np.random.Generator) -> np.ndarray:
    del rng
    return _to_uint8(255.0 * (image.astype(np.float64) / 255.0) ** gamma)


@functools.lru_cache(maxsize=8)
def _monomials(h: int, w: int) -> np.ndarray:
    """x^i y^j for i + j <= BIAS_FIELD_ORDER over an h x w grid scaled to [-1, 1]: (terms, h, w).
    Cached: every slice of a data set has one or a few shapes."""
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    powers = [(i, j) for i in range(BIAS_FIELD_ORDER + 1) for j in range(BIAS_FIELD_ORDER + 1 - i)]
    return np.stack([x**i * y**j for i, j in powers])


def bias_field(shape: tuple[int, int], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field exp(a s) over an image of `shape`: s is a polynomial of
    order BIAS_FIELD_ORDER in the coordinates (scaled to [-1, 1]) with random normal
    coefficients, shifted to mean 0 and scaled to max |s| = 1, so the field spans at most
    [exp(-a), exp(a)] with geometric mean 1. The same `rng` state gives the same shape at every
    amplitude."""
    basis = _monomials(*shape)
    s = np.tensordot(rng.standard_normal(len(basis)), basis, axes=1)
    s = s - s.mean()
    s = s / max(np.abs(s).max(), 1e-12)
    return np.exp(amplitude * s)


def _bias(image: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(image * bias_field(image.shape, amplitude, rng))


def _blur(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    del rng
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)


def jpeg_bytes(image: np.ndarray, quality: float) -> bytes:
    """The image as a JPEG at `quality` (OpenCV's encoder)."""
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape} image as JPEG")
    return buffer.tobytes()


def _jpeg(image: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    del rng
    return preprocess.decode_image(jpeg_bytes(image, quality), f"JPEG at quality {quality}")


def rotation_angle(degrees: float, rng: np.random.Generator) -> float:
    """The signed angle an image is rotated by: `degrees`, counter-clockwise or clockwise as
    the image's key draws."""
    return float(degrees) * (1.0 if rng.random() < 0.5 else -1.0)


def _rotate(image: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), rotation_angle(degrees, rng), 1.0)
    return cv2.warpAffine(
        image,
        matrix,
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=preprocess.BACKGROUND,
    )


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """One kind of perturbation: its level's meaning, clean level, defaults and range."""

    name: str
    parameter: str  # what a level is, for tables and axes
    clean: float | None  # the identity level (None: no re-compression)
    default_levels: tuple[float, ...]
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
    valid: Callable[[float], bool]
    expected: str  # the valid range, in words
    descending: bool = False  # levels listed from high to low (JPEG quality)

    def sort_key(self, level: float | None) -> float:
        """Where a level sits on the curve's axis (the clean level of JPEG above quality 100)."""
        value = 101.0 if level is None else float(level)
        return -value if self.descending else value


PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (  # name, what a level is, clean level, default levels, apply, valid, its range
        Perturbation("noise", "sigma (fraction of 255)", 0.0, (0.01, 0.02, 0.05, 0.1, 0.2),
                     _noise, lambda v: 0 <= v <= 1, "a sigma in [0, 1]"),
        Perturbation("scale", "intensity factor", 1.0, (0.5, 0.75, 1.25, 1.5),
                     _scale, lambda v: 0 < v <= 10, "a factor in (0, 10]"),
        Perturbation("gamma", "gamma", 1.0, (0.5, 0.75, 1.5, 2.0),
                     _gamma, lambda v: 0 < v <= 10, "a gamma in (0, 10]"),
        Perturbation("bias_field", "amplitude (log of the largest gain)", 0.0, (0.1, 0.2, 0.3, 0.5),
                     _bias, lambda v: 0 <= v <= 3, "an amplitude in [0, 3]"),
        Perturbation("blur", "sigma (pixels of the stored image)", 0.0, (0.5, 1.0, 2.0, 3.0),
                     _blur, lambda v: 0 <= v <= 50, "a sigma in [0, 50] pixels"),
        Perturbation("jpeg", "JPEG quality", None, (90, 70, 50, 30, 10),
                     _jpeg, lambda v: float(v).is_integer() and 1 <= v <= 100,
                     "an integer quality in [1, 100]", descending=True),
        Perturbation("rotation", "degrees (either direction)", 0.0, (2.0, 5.0, 10.0, 15.0),
                     _rotate, lambda v: 0 <= v <= 180, "degrees in [0, 180]"),
    )
}  # fmt: skip


def _stream(name: str) -> int:
    # A stable number per perturbation (crc32 of its name): keys don't move when one is added.
    return zlib.crc32(name.encode())


def image_rng(seed: int, name: str, index: int) -> np.random.Generator:
    """The generator of image `index` (its position in the split) under perturbation `name`."""
    return np.random.default_rng([int(seed), _stream(name), int(index)])


def is_clean(name: str, level: float | None) -> bool:
    """Whether `level` is perturbation `name`'s identity."""
    clean = PERTURBATIONS[name].clean
    return level is None if clean is None else level is not None and float(level) == clean


def perturb(image: np.ndarray, name: str, level: float | None, seed: int, index: int) -> np.ndarray:
    """Image `index` of a split (2-D uint8) under perturbation `name` at `level`; the clean
    level returns the image itself."""
    if is_clean(name, level):
        return image
    return PERTURBATIONS[name].apply(image, float(level), image_rng(seed, name, index))


def perturbed_bytes(
    image: np.ndarray, name: str, level: float | None, seed: int, index: int
) -> bytes:
    """The perturbed image as the bytes the pipeline decodes: the JPEG itself for `jpeg` (what
    a re-compressed file would hold), else a lossless BMP."""
    if name == "jpeg" and not is_clean(name, level):
        return jpeg_bytes(image, level)
    ok, buffer = cv2.imencode(_LOSSLESS, perturb(image, name, level, seed, index))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape} image as {_LOSSLESS}")
    return buffer.tobytes()


def curve_levels(name: str, levels: Sequence[float]) -> list[float | None]:
    """The levels of a curve: the clean level and `levels`, each once, along the axis."""
    p = PERTURBATIONS[name]
    unique: list[float | None] = [p.clean]
    for level in levels:
        if level not in unique:
            unique.append(level)
    return sorted(unique, key=p.sort_key)


def level_text(level: float | None) -> str:
    """A level for a table header or an axis tick ('clean' for JPEG's none)."""
    if level is None:
        return "clean"
    return f"{level:g}"


def parse_levels(text: str) -> dict[str, tuple[float, ...]]:
    """--levels: 'name=v1,v2;name=v1' -> {name: levels}; a clear error naming what is wrong."""
    out: dict[str, tuple[float, ...]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, equals, values = part.partition("=")
        name = name.strip()
        if name not in PERTURBATIONS or not equals:
            raise UserError(
                f"--levels: {part!r}; expected NAME=V1,V2,... separated by ';' with NAME one of "
                f"{', '.join(PERTURBATIONS)} (e.g. noise=0.05,0.1;jpeg=50,10)."
            )
        try:
            levels = tuple(float(v) for v in values.split(",") if v.strip())
        except ValueError:
            levels = ()
        bad = [v for v in levels if not (math.isfinite(v) and PERTURBATIONS[name].valid(v))]
        if not levels or bad:
            raise UserError(
                f"--levels: {name}={values!r}; expected one or more comma-separated levels, "
                f"each {PERTURBATIONS[name].expected}."
            )
        out[name] = levels
    return out


def parse_perturbations(text: str) -> list[str]:
    """--perturbations: 'all', 'none' or a comma-separated subset of PERTURBATIONS."""
    text = text.strip()
    if text == "all":
        return list(PERTURBATIONS)
    if text in ("none", ""):
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise UserError(
            f"--perturbations={text}: unknown {', '.join(unknown)}; expected 'all', 'none' or "
            f"a comma-separated subset of {', '.join(PERTURBATIONS)}."
        )
    return list(dict.fromkeys(names))


@dataclasses.dataclass(frozen=True)
class PerturbedSource:
    """A split's random-access source whose images are perturbed when read (record `index`
    keyed by its position in the split); other fields pass through."""

    source: Any
    name: str
    level: float | None
    seed: int

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        record = self.source[index]
        if is_clean(self.name, self.level):
            return record
        record = dict(record)
        label = record.get("file_name", index)
        image = preprocess.decode_image(record["image"], str(label))
        record["image"] = perturbed_bytes(image, self.name, self.level, self.seed, int(index))
        return record


@dataclasses.dataclass(frozen=True)
class PerturbedData:
    """A prepared data set seen through a perturbation: what `reports.predict_split_multi`
    reads of it (`num_examples`, `records`, `source`)."""

    data: Any
    name: str
    level: float | None
    seed: int

    def num_examples(self, split: str) -> int:
        """Images in `split` (unchanged)."""
        return self.data.num_examples(split)

    def records(self, split: str) -> dict:
        """The split's records (unchanged): its scans, for bags and 2.5D neighbours."""
        return self.data.records(split)

    def source(self, split: str) -> PerturbedSource:
        """The split's source, perturbed on read."""
        return PerturbedSource(self.data.source(split), self.name, self.level, self.seed)
