"""Near-duplicate slices across splits, found without subject IDs.

Public dementia-stage slice collections (e.g. Kaggle's "Alzheimer's Dataset, 4 class of
images") were split into train and test by image, so adjacent slices of one brain sit on both
sides and the near-perfect accuracies reported on them are inflated. Such a collection has no
subject IDs; this module finds the leak from the pixels: every image gets a small signature
(`signature`), the similarity of two images is the dot product of their signatures, and a test
image whose best train similarity reaches a threshold (`DEFAULT_THRESHOLD`) has a near-identical
train image, which in practice is an adjacent slice (±1..±3) of the same scan, or a copy.

The signature is band-passed on purpose: at a coarse scale all brains at one slice position look
alike (on plain 32x32 pixels another person's phantom brain scores up to 0.98, a slice 3 apart
in the same scan 0.995), while the gyral pattern at the scale of millimetres is individual. The
threshold was calibrated on brain-like phantoms with known subjects (`calibrate`, run by
`python -m alz_jax.leakage_calibration`); docs/leakage.md has the numbers, the cost and the
limits. numpy and OpenCV only (the builder stores the pairs; no TensorFlow or JAX needed).
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterable

import cv2
import numpy as np

from . import progress, synthetic

# The image is first area-resized to GRID x GRID (the whole frame: within one collection every
# image shares the frame, and a resized copy maps onto the same grid), then the band below
# BAND_SIGMA grid cells is removed and the result is area-resized to SIDE x SIDE. On a ~200 mm
# field of view the kept band is ~6..20 mm: gyri, not the head outline, ventricles' position or
# intensity trends. Chosen by measurement (docs/leakage.md): with sigma 2..4 slices up to 8 apart
# stay more alike than any other subject, with 6 or plain pixels fewer; cropping to the brain's
# bounding box first is worse (the box jitters between slices: adjacent slices lose more than
# other subjects do). Sigma 3 is the middle of that plateau.
GRID = 64
BAND_SIGMA = 3.0
SIDE = 32
DIMS = SIDE * SIDE
# Inside the gap that `calibrate` measured for seeds 0, 1 and 2 (highest other-subject similarity
# 0.886, lowest by-image positive 0.943, slices 3 apart >= 0.975), towards its low end: real
# adjacent slices are expected to be less alike than the phantoms' (docs/leakage.md).
DEFAULT_THRESHOLD = 0.90
METHOD = (
    f"bandpass-v1: whole frame INTER_AREA to {GRID}x{GRID}, minus its Gaussian blur "
    f"(sigma {BAND_SIGMA:g} cells), INTER_AREA to {SIDE}x{SIDE}, zero mean, unit L2 norm; "
    "similarity = dot product (cosine)"
)
# Kaggle's Alzheimer's slices are 176 wide x 208 high; the phantoms are 256 x 240.
KAGGLE_SIZE = (176, 208)
_QUANTILES = {"min": 0.0, "q01": 0.01, "q05": 0.05, "median": 0.5, "q95": 0.95, "q99": 0.99}


def signature(pixels: np.ndarray) -> np.ndarray:
    """The float32 (DIMS,) signature of one decoded 8-bit grayscale image (HxW, any size).

    Unit norm and zero mean, so the dot product of two signatures is their correlation; a blank
    (constant) image gets the zero vector, which matches nothing.
    """
    image = np.asarray(pixels)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty HxW grayscale image, got shape {image.shape}")
    grid = cv2.resize(image, (GRID, GRID), interpolation=cv2.INTER_AREA).astype(np.float32)
    band = grid - cv2.GaussianBlur(grid, (0, 0), BAND_SIGMA)
    small = cv2.resize(band, (SIDE, SIDE), interpolation=cv2.INTER_AREA).ravel()
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    # Below this the image has no structure left (blank or flat): no signature, no match.
    return small / norm if norm > 1e-3 else np.zeros(DIMS, np.float32)


def signatures(images: Iterable[np.ndarray]) -> np.ndarray:
    """The (n, DIMS) float32 signatures of decoded grayscale images."""
    rows = [signature(image) for image in images]
    return np.stack(rows) if rows else np.zeros((0, DIMS), np.float32)


def best_matches(
    query: np.ndarray, reference: np.ndarray, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Per query row, the best similarity to any reference row and that row's index.

    float32 matrix products over `chunk` query rows at a time, so memory is
    chunk x len(reference) x 4 bytes (86 MB for 21,000 references); 9,000 x 21,000 signatures of
    1,024 dimensions took 4.5 s on 2 CPU cores (docs/leakage.md).
    """
    q = np.ascontiguousarray(query, np.float32)
    ref = np.ascontiguousarray(reference, np.float32)
    if len(ref) == 0:
        raise ValueError("best_matches needs at least one reference row")
    best = np.empty(len(q), np.float32)
    index = np.empty(len(q), np.int64)
    for start in range(0, len(q), chunk):
        block = q[start : start + chunk] @ ref.T
        top = np.argmax(block, axis=1)
        index[start : start + chunk] = top
        best[start : start + chunk] = np.take_along_axis(block, top[:, None], axis=1)[:, 0]
        del block  # freed before the next block is allocated: one block at a time in memory
    return best, index


# The pair search's filter: the signatures' top PRUNE_RANK principal directions (from every
# n // PRUNE_SAMPLE-th signature) bound each pair's similarity from above, and only the columns
# whose bound reaches the threshold are compared in full (see pairs_above). 64 directions keep
# a few hundred columns per row block on brain slices (measured on the 86k-image benchmark).
PRUNE_RANK = 64
PRUNE_SAMPLE = 4096
# The bound's allowance for float32 rounding (similarities of unit vectors are at most 1).
_BOUND_SLACK = 1e-3


def _coarse(sig: np.ndarray) -> np.ndarray:
    """(n, PRUNE_RANK + 1) vectors whose dot products bound the signatures' from above.

    With P the projection onto orthonormal directions and R = s - P s the rest,
    a . b = Pa . Pb + Ra . Rb <= Pa . Pb + |Ra| |Rb| (Cauchy-Schwarz): so [Pa, |Ra|] . [Pb, |Rb|]
    is at least a . b, for any directions; principal ones make it tight."""
    sample = sig[:: max(1, len(sig) // PRUNE_SAMPLE)].astype(np.float64)
    _, vectors = np.linalg.eigh(sample.T @ sample)  # ascending eigenvalues
    basis = np.ascontiguousarray(vectors[:, ::-1][:, : min(PRUNE_RANK, sig.shape[1])], np.float32)
    # float32 products (no float64 copy of all signatures): their rounding, ~1e-6, is far
    # inside the bound's slack.
    projected = (sig @ basis).astype(np.float64)
    norms = np.einsum("ij,ij->i", sig, sig).astype(np.float64)
    rest = np.sqrt(np.maximum(norms - np.sum(projected**2, axis=1), 0.0))
    return np.ascontiguousarray(np.concatenate([projected, rest[:, None]], axis=1), np.float32)


def pairs_above(
    signatures: np.ndarray,
    groups: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    chunk: int = 256,
) -> np.ndarray:
    """All pairs (i, j), i < j, of different groups whose similarity reaches `threshold`.

    Groups are scan IDs: slices of one scan are always alike, so they are never paired (a
    collection without IDs gives every image its own group). Returns (p, 2) int64 sorted by i,
    then j: exactly the pairs of comparing every pair (tests/test_near_duplicates.py,
    tests/test_progress_phases.py), in less time. Per block of `chunk` rows, an upper bound of
    each similarity (`_coarse`, 65 numbers per image instead of 1,024) picks the columns that
    can reach the threshold, and only those are compared in full (float32 matrix products as
    before). On brain slices that leaves a few hundred columns per block: the 86,437 images of
    the OASIS-sized benchmark took 18 s (998,728 pairs, 601 MiB peak), and 36 to 45 s on the
    loaded machine where comparing all took 417 s. Where the bound spares more than half the
    columns (random signatures) the rest is compared in full, as without the filter (about 15%
    slower than that: docs/performance.md). Memory: chunk x n x 5 bytes for a block's bounds,
    4 x chunk x n x 5 bytes for a block of the full comparison, plus the pairs.
    """
    sig = np.ascontiguousarray(signatures, np.float32)
    codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    if len(codes) != len(sig):
        raise ValueError(f"{len(sig)} signatures but {len(codes)} groups")
    found = [np.zeros((0, 2), np.int64)]
    n = len(sig)
    if n < 2:
        return found[0]
    coarse = _coarse(sig)
    slack = _BOUND_SLACK * max(1.0, float(np.max(np.sum(coarse**2, axis=1))))
    counter = progress.Progress("Near-duplicate search", n * (n + 1) // 2, unit="pairs")
    start, filtering = 0, True
    while start < n:
        # Once the filter spares less than half the columns (random-like signatures), the rest
        # is compared in full, in blocks of 4 x chunk rows (skipping the filter is always exact).
        stop = min(start + (chunk if filtering else 4 * chunk), n)
        cols, candidates = np.arange(start, n), sig[start:]
        if filtering:
            # Only columns from `start` on: the blocks to the left were covered by earlier rows.
            bound = coarse[start:stop] @ coarse[start:].T >= threshold - slack
            spared = np.flatnonzero(bound.any(axis=0)) + start
            del bound
            filtering = 2 * len(spared) <= n - start
            if filtering:
                cols, candidates = spared, sig[spared]
        rows, k = np.nonzero(sig[start:stop] @ candidates.T >= threshold)
        rows += start
        cols = cols[k]
        keep = (cols > rows) & (codes[rows] != codes[cols])
        found.append(np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64))
        # The block's pairs on or above the diagonal: what this search answers for.
        counter.update((stop - start) * (n - start) - (stop - start) * (stop - start - 1) // 2)
        start = stop
    counter.finish()
    return np.concatenate(found)


def matched_test(
    test_positions: np.ndarray, train_positions: np.ndarray, pairs: np.ndarray
) -> np.ndarray:
    """For each test position, whether some pair links it to a train position (bool array)."""
    test = np.asarray(test_positions, np.int64)
    train = np.asarray(train_positions, np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    first, second = pairs[:, 0], pairs[:, 1]
    # The partners of train images, whichever column they are in.
    linked = np.concatenate([first[np.isin(second, train)], second[np.isin(first, train)]])
    return np.isin(test, linked)


def cross_split_summary(
    test_positions: np.ndarray, train_positions: np.ndarray, pairs: np.ndarray, threshold: float
) -> dict:
    """How many test images have a near-identical train image, as stored in reports.

    Positions index the arrays `pairs` indexes (as `pairs_above` returns them, at `threshold`).
    """
    test = np.unique(np.asarray(test_positions, np.int64))
    matched = int(matched_test(test, train_positions, pairs).sum())
    return {
        "method": METHOD,
        "threshold": float(threshold),
        "test_images": len(test),
        "test_images_with_train_match": matched,
        "share": matched / len(test) if len(test) else 0.0,
    }


def subject_agreement(test_subjects: np.ndarray, flagged: np.ndarray, train_subjects: set) -> dict:
    """Where subject IDs exist: how the flags agree with "this test image's subject is in train".

    `test_subjects` and `flagged` are per test image. A flag on an image whose subject is not in
    train is a false alarm (or an unlabelled duplicate); a shared-subject image without a flag is
    one the check missed, or a slice of another visit (a new pose, which the check does not
    claim to match; docs/leakage.md). Rates are None where their denominator is 0.
    """
    flagged = np.asarray(flagged, bool)
    shared = np.array([s in train_subjects for s in test_subjects], bool).reshape(flagged.shape)
    n_shared, n_other = int(shared.sum()), int((~shared).sum())
    flagged_shared = int((flagged & shared).sum())
    flagged_other = int((flagged & ~shared).sum())
    return {
        "test_images": len(flagged),
        "shared_subject_images": n_shared,
        "flagged_shared": flagged_shared,
        "flagged_not_shared": flagged_other,
        "shared_not_flagged": n_shared - flagged_shared,
        "flag_rate_shared": flagged_shared / n_shared if n_shared else None,
        "flag_rate_not_shared": flagged_other / n_other if n_other else None,
    }


# ----------------------------------------------------------------------------------------------
# Calibration on phantoms with known subjects.


@dataclasses.dataclass(frozen=True)
class PhantomSet:
    """Decoded phantom slices with the subject, scan and slice index of each."""

    images: list[np.ndarray]
    subject: np.ndarray
    scan: np.ndarray
    slice_index: np.ndarray


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpeg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def phantom_set(
    seed: int,
    subjects: int = 40,
    slices: int = 20,
    visits: int = 1,
    resize_share: float = 0.5,
    aligned: bool = False,
    jpeg_quality: int = 92,
) -> PhantomSet:
    """Phantom scans of known subjects (synthetic.render_scan), JPEG round-tripped like the
    generator's files, a `resize_share` of them also resized to Kaggle's 176x208 and re-encoded.

    Each subject has its own anatomy and a severity in 0.1..0.9; each visit is a new scan (new
    pose, gain, bias field, noise) of the same slice window. `aligned` renders every scan from
    one generator state with head size 1: pose, intensity and noise are shared and only the
    anatomy differs, the worst case of a registered collection.
    """
    rng = np.random.default_rng([seed, 1])
    images, subject, scan, index = [], [], [], []
    for s in range(subjects):
        anatomy = synthetic.random_anatomy(rng)
        if aligned:
            anatomy["scale"] = 1.0
        severity = float(rng.uniform(0.1, 0.9))
        start = int(rng.integers(67, 96))
        positions = np.arange(start, start + slices)
        for visit in range(visits):
            scan_rng = np.random.default_rng([seed, 2]) if aligned else rng
            stack = synthetic.render_scan(scan_rng, severity, anatomy, positions)
            for position, rendered in zip(positions, stack, strict=True):
                image = _jpeg(rendered, jpeg_quality)
                if rng.random() < resize_share:
                    resized = cv2.resize(image, KAGGLE_SIZE, interpolation=cv2.INTER_AREA)
                    image = _jpeg(resized, jpeg_quality)
                images.append(image)
                subject.append(s)
                scan.append(s * visits + visit)
                index.append(int(position))
    return PhantomSet(images, np.array(subject), np.array(scan), np.array(index))


def split_by_image(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random 70% train / 15% test positions of n images (15% validation left out)."""
    order = rng.permutation(n)
    return np.sort(order[: int(0.7 * n)]), np.sort(order[int(0.85 * n) :])


def split_by_subject(
    subject: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Train / test positions of a random 70/15/15 split of the subjects."""
    ids = rng.permutation(np.unique(subject))
    train = ids[: int(0.7 * len(ids))]
    test = ids[int(0.85 * len(ids)) :]
    return np.flatnonzero(np.isin(subject, train)), np.flatnonzero(np.isin(subject, test))


def _quantiles(values: np.ndarray) -> dict:
    out = {k: round(float(np.quantile(values, q)), 4) for k, q in _QUANTILES.items()}
    return {"n": len(values), **out, "max": round(float(values.max()), 4)}


def _choose_threshold(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, str]:
    """Midway in the gap if the distributions separate, else the threshold of best Youden's J."""
    if positives.min() > negatives.max():
        return float(positives.min() + negatives.max()) / 2, "midway in the gap"
    candidates = np.unique(np.concatenate([positives, negatives]))
    youden = [np.mean(positives >= t) - np.mean(negatives >= t) for t in candidates]
    return float(candidates[int(np.argmax(youden))]), "maximum Youden's J"


def _best_train(sig: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Each split's test images' best train similarity, pooled over the splits."""
    return np.concatenate([best_matches(sig[test], sig[train])[0] for train, test in splits])


def _perturbed(image: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """The image after an intensity change or a small misregistration."""
    if kind == "intensity":  # gain 0.8..1.2 and gamma 0.7..1.4
        scaled = rng.uniform(0.8, 1.2) * (image / 255.0) ** rng.uniform(0.7, 1.4)
        return np.clip(255.0 * scaled, 0, 255).astype(np.uint8)
    # Shifted by up to 2 pixels and rotated by up to 2 degrees.
    h, w = image.shape
    warp = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-2, 2), 1.0)
    warp[:, 2] += rng.uniform(-2, 2, 2)
    return cv2.warpAffine(image, warp, (w, h), flags=cv2.INTER_LINEAR)


def _slice_distance(data: PhantomSet, sig: np.ndarray, max_distance: int = 6) -> dict:
    """Similarity of two slices k apart in one scan, per k: how far "adjacent" reaches."""
    position = {
        (int(scan), int(index)): i
        for i, (scan, index) in enumerate(zip(data.scan, data.slice_index, strict=True))
    }
    out = {}
    for k in range(1, max_distance + 1):
        sims = np.array(
            [
                sig[i] @ sig[position[(s, x + k)]]
                for (s, x), i in position.items()
                if (s, x + k) in position
            ]
        )
        out[str(k)] = {
            "min": round(float(sims.min()), 4),
            "median": round(float(np.median(sims)), 4),
        }
    return out


def _rate(values: np.ndarray, threshold: float) -> float:
    return round(float(np.mean(values >= threshold)), 4)


def calibrate(
    seed: int = 0, subjects: int = 60, slices: int = 20, splits: int = 10, resize_share: float = 0.5
) -> dict:
    """Measures the signature on phantoms of known subjects and chooses a threshold.

    Positives: each test image's best train similarity when the images are split at random
    (70/15/15, `splits` times); negatives: the same when the subjects are split. Also: the
    similarity by slice distance, the flag rates (at DEFAULT_THRESHOLD) after intensity changes
    and a small misregistration of the test images, for a second visit of each subject (a new
    scan of the same slices) against the first, and for negatives of an aligned set (shared
    pose and intensity, the worst case of a registered collection). Deterministic by seed.
    """
    data = phantom_set(seed, subjects, slices, resize_share=resize_share)
    sig = signatures(data.images)
    rng = np.random.default_rng([seed, 3])
    by_image = [split_by_image(len(sig), rng) for _ in range(splits)]
    by_subject = [split_by_subject(data.subject, rng) for _ in range(splits)]
    positives, negatives = _best_train(sig, by_image), _best_train(sig, by_subject)
    threshold, rule = _choose_threshold(positives, negatives)
    at = DEFAULT_THRESHOLD
    report = {
        "method": METHOD,
        "seed": seed,
        "images": len(sig),
        "subjects": subjects,
        "slices_per_scan": slices,
        "resized_to_176x208": int(sum(image.shape == KAGGLE_SIZE[::-1] for image in data.images)),
        "splits": splits,
        "positives_by_image_split": _quantiles(positives),
        "negatives_by_subject_split": _quantiles(negatives),
        "gap": round(float(positives.min() - negatives.max()), 4),
        "threshold": round(threshold, 4),
        "threshold_rule": rule,
        "flag_rate_by_image": _rate(positives, threshold),
        "flag_rate_by_subject": _rate(negatives, threshold),
        "default_threshold": at,
        "flag_rate_by_image_at_default": _rate(positives, at),
        "flag_rate_by_subject_at_default": _rate(negatives, at),
        "similarity_by_slice_distance": _slice_distance(data, sig),
    }
    report["robustness_at_default"] = {
        **_perturbations(data, sig, by_image, by_subject, seed),
        "second_visit": _second_visit(seed, subjects, slices),
        "aligned": _aligned(seed, subjects, slices, splits),
    }
    return report


def _perturbations(
    data: PhantomSet,
    sig: np.ndarray,
    by_image: list[tuple[np.ndarray, np.ndarray]],
    by_subject: list[tuple[np.ndarray, np.ndarray]],
    seed: int,
) -> dict:
    """Flag rates at DEFAULT_THRESHOLD when the test images' intensity changes (gain, gamma) or
    they are slightly misregistered, against the unchanged train images."""
    out = {}
    for kind in ("intensity", "misregistration"):
        rng = np.random.default_rng([seed, 4])
        changed = signatures(_perturbed(image, rng, kind) for image in data.images)
        pos = np.concatenate([best_matches(changed[te], sig[tr])[0] for tr, te in by_image])
        neg = np.concatenate([best_matches(changed[te], sig[tr])[0] for tr, te in by_subject])
        out[kind] = {
            "positives": _quantiles(pos),
            "flag_rate_by_image": _rate(pos, DEFAULT_THRESHOLD),
            "flag_rate_by_subject": _rate(neg, DEFAULT_THRESHOLD),
        }
    return out


def _second_visit(seed: int, subjects: int, slices: int) -> dict:
    """A second scan (new pose, intensity, noise; same anatomy and slices) of every subject:
    its slices' best similarity to the same subject's first scan, and to any first scan."""
    visits = phantom_set(seed + 1000, subjects, slices, visits=2)
    sig = signatures(visits.images)
    first, second = np.flatnonzero(visits.scan % 2 == 0), np.flatnonzero(visits.scan % 2 == 1)
    own = np.array(
        [
            best_matches(sig[[i]], sig[first[visits.subject[first] == visits.subject[i]]])[0][0]
            for i in second
        ]
    )
    best, index = best_matches(sig[second], sig[first])
    return {
        "own_first_visit": _quantiles(own),
        "flag_rate_own": _rate(own, DEFAULT_THRESHOLD),
        "any_first_visit": _quantiles(best),
        "flag_rate_any": _rate(best, DEFAULT_THRESHOLD),
        "best_is_same_subject": round(
            float(np.mean(visits.subject[first][index] == visits.subject[second])), 4
        ),
    }


def _aligned(seed: int, subjects: int, slices: int, splits: int) -> dict:
    """The by-subject and by-image flag rates on an aligned set (`phantom_set(aligned=True)`)."""
    data = phantom_set(seed + 2000, subjects, slices, aligned=True)
    sig = signatures(data.images)
    rng = np.random.default_rng([seed, 5])
    neg = _best_train(sig, [split_by_subject(data.subject, rng) for _ in range(splits)])
    pos = _best_train(sig, [split_by_image(len(sig), rng) for _ in range(splits)])
    return {
        "positives_by_image_split": _quantiles(pos),
        "negatives_by_subject_split": _quantiles(neg),
        "flag_rate_by_image": _rate(pos, DEFAULT_THRESHOLD),
        "flag_rate_by_subject": _rate(neg, DEFAULT_THRESHOLD),
    }


def format_table(report: dict) -> str:
    """A calibration report (`calibrate`) as a plain-text table."""
    lines = [*textwrap.wrap(f"method: {report['method']}", 120, subsequent_indent="  "), ""]
    lines.append(
        f"{'best train similarity':38s} {'n':>5s} "
        + " ".join(f"{k:>7s}" for k in [*_QUANTILES, "max"])
    )
    rows = [
        ("positives (split by image)", report["positives_by_image_split"]),
        ("negatives (split by subject)", report["negatives_by_subject_split"]),
    ]
    robust = report["robustness_at_default"]
    rows += [
        (f"positives after {k}", robust[k]["positives"]) for k in ("intensity", "misregistration")
    ]
    rows.append(("second visit vs own first visit", robust["second_visit"]["own_first_visit"]))
    rows.append(("aligned set, negatives", robust["aligned"]["negatives_by_subject_split"]))
    for name, q in rows:
        values = " ".join(f"{q[k]:7.3f}" for k in [*_QUANTILES, "max"])
        lines.append(f"{name:38s} {q['n']:5d} {values}")
    lines.append("")
    lines.append(
        f"threshold {report['threshold']:.3f} ({report['threshold_rule']}): flagged "
        f"{report['flag_rate_by_image']:.1%} by image, "
        f"{report['flag_rate_by_subject']:.1%} by subject"
    )
    lines.append(
        f"DEFAULT_THRESHOLD {report['default_threshold']:.3f}: flagged "
        f"{report['flag_rate_by_image_at_default']:.1%} by image, "
        f"{report['flag_rate_by_subject_at_default']:.1%} by subject"
    )
    lines.append(
        f"  after intensity changes {robust['intensity']['flag_rate_by_image']:.1%} / "
        f"{robust['intensity']['flag_rate_by_subject']:.1%}; after misregistration "
        f"{robust['misregistration']['flag_rate_by_image']:.1%} / "
        f"{robust['misregistration']['flag_rate_by_subject']:.1%}; second visits "
        f"{robust['second_visit']['flag_rate_own']:.1%}; aligned set "
        f"{robust['aligned']['flag_rate_by_image']:.1%} / "
        f"{robust['aligned']['flag_rate_by_subject']:.1%}"
    )
    distance = report["similarity_by_slice_distance"]
    lines += textwrap.wrap(
        "slices k apart in one scan, min (median): "
        + ", ".join(f"k={k} {v['min']:.3f} ({v['median']:.3f})" for k, v in distance.items()),
        120,
        subsequent_indent="  ",
    )
    return "\n".join(lines)
