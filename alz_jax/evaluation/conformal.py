"""Split-conformal prediction sets (NumPy): scores, the finite-sample quantile, marginal and
class-conditional (Mondrian) calibration, ordinal (contiguous) sets and their summaries.

Everything works on units (scans or subjects) whose class probabilities the caller has already
averaged, so a subject's slices are never treated as independent calibration points. The
formulas and their sources are in docs/uncertainty.md ("Prediction sets and selective
prediction: the formulas").
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Any

import numpy as np

from alz_jax.host.errors import UserError

SCORES = ("lac", "aps")
CALIBRATIONS = ("marginal", "class")
# Scores that are equal in exact arithmetic can differ in the last bits (an APS mass summed in
# another order: 0.9999999999999999 against 1.0); a label within this of its quantile is in.
TOLERANCE = 1e-12


def _exact(alpha: float) -> Fraction:
    """`alpha` as the decimal it was written as (0.1 -> 1/10, not the binary float's value), so
    that ranks such as ceil(10 * 0.9) come out exact."""
    return Fraction(repr(float(alpha)))


def quantile_rank(n: int, alpha: float) -> int:
    """ceil((n + 1)(1 - alpha)) in exact rational arithmetic: the rank of the conformal
    quantile among n calibration scores."""
    return math.ceil((n + 1) * (1 - _exact(alpha)))


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The quantile_rank-th smallest of `scores` (the exact finite-sample quantile, at level
    ceil((n + 1)(1 - alpha)) / n); math.inf when that rank exceeds n (too few units)."""
    scores = np.sort(np.asarray(scores, np.float64).ravel())
    rank = quantile_rank(len(scores), alpha)
    return math.inf if rank > len(scores) else float(scores[rank - 1])


def units_needed(alpha: float) -> int:
    """The smallest n whose conformal quantile is finite: (n + 1)(1 - alpha) <= n, i.e.
    n >= 1/alpha - 1."""
    return max(math.ceil(1 / _exact(alpha) - 1), 0)


def _check_probs(probs: np.ndarray) -> np.ndarray:
    """`probs` as float64 (n, K), refused when not finite or not two-dimensional."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or not np.all(np.isfinite(probs)):
        raise ValueError(f"expected finite class probabilities of shape (n, K), got {probs.shape}")
    return probs


def _aps_scores(probs: np.ndarray) -> np.ndarray:
    """Non-randomised APS: the mass of the classes ranked at or above y (descending probability,
    ties by the lower class index first)."""
    order = np.argsort(-probs, axis=1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    scores = np.empty_like(probs)
    np.put_along_axis(scores, order, cumulative, axis=1)
    return scores


def _ordinal_aps_scores(probs: np.ndarray) -> np.ndarray:
    """Ordinal APS: grow an interval of classes from the most probable one (lowest index on a
    tie), each step adding the neighbour with the larger probability (the lower one on a tie);
    a class scores the interval's mass when it first joins."""
    n, k = probs.shape
    rows = np.arange(n)
    lo = np.argmax(probs, axis=1)  # argmax takes the first maximum: ties by index
    hi = lo.copy()
    mass = probs[rows, lo].copy()
    scores = np.empty_like(probs)
    scores[rows, lo] = mass
    for _ in range(k - 1):
        left = np.where(lo > 0, probs[rows, np.maximum(lo - 1, 0)], -np.inf)
        right = np.where(hi < k - 1, probs[rows, np.minimum(hi + 1, k - 1)], -np.inf)
        take_left = left >= right
        lo = np.where(take_left, lo - 1, lo)
        hi = np.where(take_left, hi, hi + 1)
        added = np.where(take_left, lo, hi)
        mass = mass + probs[rows, added]
        scores[rows, added] = mass
    return scores


def label_scores(probs: np.ndarray, score: str, ordinal: bool = False) -> np.ndarray:
    """(n, K) nonconformity scores of every candidate label: "lac" 1 - p_y (ordinal too);
    "aps" the non-randomised APS mass, or with `ordinal` the ordinal APS interval mass."""
    probs = _check_probs(probs)
    if score == "lac":
        return 1.0 - probs
    if score == "aps":
        return _ordinal_aps_scores(probs) if ordinal else _aps_scores(probs)
    raise UserError(f"eval.conformal_score = {score!r}: expected one of {', '.join(SCORES)}.")


def _check_settings(alpha: Any, score: Any, calibration: Any) -> None:
    """UserErrors naming the setting for an alpha outside (0, 1) or an unknown score or
    calibration."""
    ok = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool) and 0 < alpha < 1
    if not ok:
        raise UserError(f"eval.conformal_alpha = {alpha!r}: expected a number in (0, 1), the "
                        "share of units whose set may miss the true class (e.g. 0.1).")  # fmt: skip
    if score not in SCORES:
        raise UserError(f"eval.conformal_score = {score!r}: expected one of {', '.join(SCORES)}.")
    if calibration not in CALIBRATIONS:
        raise UserError(f"eval.conformal_calibration = {calibration!r}: expected one of "
                        f"{', '.join(CALIBRATIONS)} (class: one quantile per class).")  # fmt: skip


def calibrate(
    probs: np.ndarray, labels: np.ndarray, alpha: float, score: str = "aps",
    calibration: str = "marginal", ordinal: bool = False,
) -> dict:  # fmt: skip
    """Calibrates on (probs (n, K), labels (n,)) of calibration units. Returns {score, alpha,
    calibration, ordinal, num_classes, quantiles: [q] or one per class (None for inf), units:
    the units behind each quantile, class_units: units per class, needed: units_needed(alpha),
    short_classes: classes with fewer units than needed}."""
    _check_settings(alpha, score, calibration)
    probs = _check_probs(probs)
    labels = np.asarray(labels).astype(np.int64)
    n, k = probs.shape
    if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= k)):
        raise ValueError(f"expected {n} labels in [0, {k}), got shape {labels.shape}")
    true_scores = label_scores(probs, score, ordinal)[np.arange(n), labels]
    class_units = np.bincount(labels, minlength=k)
    if calibration == "marginal":
        quantiles, units = [conformal_quantile(true_scores, alpha)], [n]
    else:
        quantiles = [conformal_quantile(true_scores[labels == c], alpha) for c in range(k)]
        units = class_units.tolist()
    needed = units_needed(alpha)
    return {
        "score": score, "alpha": float(alpha), "calibration": calibration,
        "ordinal": bool(ordinal), "num_classes": k,
        "quantiles": [None if math.isinf(q) else q for q in quantiles],
        "units": [int(u) for u in units], "class_units": class_units.tolist(), "needed": needed,
        "short_classes": [c for c in range(k) if class_units[c] < needed],
    }  # fmt: skip


def contiguous_hull(sets: np.ndarray) -> np.ndarray:
    """Each row's set widened to the range from its lowest to its highest member (empty rows
    stay empty)."""
    sets = np.asarray(sets, bool)
    k = sets.shape[1]
    any_member = sets.any(axis=1)
    lo = np.argmax(sets, axis=1)
    hi = k - 1 - np.argmax(sets[:, ::-1], axis=1)
    column = np.arange(k)
    return any_member[:, None] & (column >= lo[:, None]) & (column <= hi[:, None])


def prediction_sets(probs: np.ndarray, calibrated: dict, nonempty: bool = True) -> np.ndarray:
    """(n, K) bool: label y is in a unit's set iff its score is at most its quantile (the one
    marginal quantile, or class y's; up to TOLERANCE); ordinal sets are widened to contiguous
    ranges. An APS set always holds the most probable class (`nonempty`; the lower on a tie):
    the non-randomised score leaves a unit whose top probability exceeds the quantile with no
    class at all, and a clinician reads an empty set as nonsense, so the top class is added,
    which can only raise coverage (Angelopoulos et al.'s allow_zero_sets=False)."""
    probs = _check_probs(probs)
    if probs.shape[1] != calibrated["num_classes"]:
        raise ValueError(f"expected {calibrated['num_classes']} class probabilities per unit "
                         f"(the calibration's), got {probs.shape[1]}")  # fmt: skip
    q = np.array([math.inf if v is None else v for v in calibrated["quantiles"]], np.float64)
    scores = label_scores(probs, calibrated["score"], calibrated["ordinal"])
    sets = scores <= q[None, :] + TOLERANCE
    if nonempty and calibrated["score"] == "aps":
        sets[np.arange(len(probs)), np.argmax(probs, axis=1)] = True
    return contiguous_hull(sets) if calibrated["ordinal"] else sets


def set_summary(sets: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Coverage (overall and per class, None where a class has no unit), mean set size, share
    of singletons and of empty sets, and n, of `sets` (n, K) against the true `labels`."""
    sets = np.asarray(sets, bool)
    labels = np.asarray(labels).astype(np.int64)
    n = len(labels)
    covered = sets[np.arange(n), labels]
    sizes = sets.sum(axis=1)

    def mean(x: np.ndarray) -> float | None:
        return float(x.mean()) if len(x) else None

    return {
        "coverage": mean(covered),
        "coverage_per_class": [mean(covered[labels == c]) for c in range(num_classes)],
        "mean_set_size": mean(sizes), "singleton_share": mean(sizes == 1),
        "empty_share": mean(sizes == 0), "n": n,
    }  # fmt: skip


def set_scores(sets: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted set summaries for each row of `weights` (B, n) (bootstrap resamples): coverage,
    set_size, singleton, empty, and coverage_class<c> per class (NaN where the weights hold no
    unit of class c); each (B,)."""
    sets = np.asarray(sets, bool)
    labels = np.asarray(labels).astype(np.int64)
    weights = np.atleast_2d(np.asarray(weights, np.float64))
    n = len(labels)
    covered = sets[np.arange(n), labels].astype(np.float64)
    sizes = sets.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = weights.sum(axis=1)
        out = {
            "coverage": weights @ covered / total, "set_size": weights @ sizes / total,
            "singleton": weights @ (sizes == 1) / total, "empty": weights @ (sizes == 0) / total,
        }  # fmt: skip
        for c in range(sets.shape[1]):
            in_class = (labels == c).astype(np.float64)
            out[f"coverage_class{c}"] = weights @ (covered * in_class) / (weights @ in_class)
    return out


def format_set(row: np.ndarray, class_names: list[str] | tuple[str, ...], ordinal: bool) -> str:
    """A set as text: "{Mild, Moderate}"; ordinal ranges as "VeryMild..Mild" or one name (a
    non-contiguous ordinal set keeps the braces rather than hide a gap); "{}" when empty."""
    members = [int(i) for i in np.flatnonzero(np.asarray(row, bool))]
    if not members:
        return "{}"
    contiguous = members[-1] - members[0] + 1 == len(members)
    if ordinal and contiguous:
        first, last = class_names[members[0]], class_names[members[-1]]
        return first if len(members) == 1 else f"{first}..{last}"
    return "{" + ", ".join(class_names[i] for i in members) + "}"


def warning_text(calibrated: dict, class_names: list[str] | tuple[str, ...]) -> str | None:
    """The warning (one line per short class, or one for the whole set) when calibration units
    are too few for alpha, whose sets then hold every class; None when there are enough."""
    alpha, needed = calibrated["alpha"], calibrated["needed"]
    if calibrated["calibration"] == "marginal":
        n = calibrated["units"][0]
        if n >= needed:
            return None
        return (f"warning: conformal calibration has {n} units; alpha {alpha:g} needs at least "
                f"{needed}, so every prediction set holds every class.")  # fmt: skip
    lines = [
        f"warning: conformal class {class_names[c]} has {calibrated['class_units'][c]} "
        f"calibration units; alpha {alpha:g} needs at least {needed} per class, so every set "
        f"holds {class_names[c]}."
        for c in calibrated["short_classes"]
    ]
    return "\n".join(lines) or None
