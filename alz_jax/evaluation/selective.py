"""Selective prediction (NumPy): the risk-coverage curve, accuracy at fixed abstention rates,
and the abstention ("refer") threshold fixed on validation.

Units (scans or subjects) are ordered by confidence, the probability of the called class,
descending with ties broken by unit index, so every number here is deterministic. A rate r of n
units abstains on exactly floor(r * n) of them (r in exact decimal arithmetic: 0.1 of 30 is 3).
The formulas are in docs/uncertainty.md.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

import numpy as np

from alz_jax.host.errors import UserError

RATES = (0.05, 0.1, 0.2)


def _abstained(rate: float, n: int) -> int:
    """floor(rate * n) with `rate` read as the decimal it was written as."""
    return math.floor(Fraction(repr(float(rate))) * n)


def confidence(probs: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(n,) the probability each unit gives its called class."""
    probs = np.asarray(probs, np.float64)
    predicted = np.asarray(predicted).astype(np.int64)
    return probs[np.arange(len(predicted)), predicted]


def _order(conf: np.ndarray) -> np.ndarray:
    """Unit indices by confidence, most confident first, ties by index."""
    return np.argsort(-np.asarray(conf, np.float64), kind="stable")


def _curves(
    labels: np.ndarray, predicted: np.ndarray, conf: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, balanced accuracy), each (n,): entry k-1 over the k most confident units;
    balanced accuracy is the mean recall over the classes present among those k."""
    order = _order(conf)
    labels = np.asarray(labels).astype(np.int64)[order]
    correct = (np.asarray(predicted).astype(np.int64)[order] == labels).astype(np.float64)
    k = np.arange(1, len(labels) + 1)
    one_hot = np.eye(num_classes)[labels]  # (n, K)
    seen = np.cumsum(one_hot, axis=0)
    hits = np.cumsum(one_hot * correct[:, None], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(seen > 0, hits / seen, np.nan)
    return np.cumsum(correct) / k, np.nanmean(recall, axis=1)


def risk_coverage(
    labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, num_classes: int
) -> dict:
    """The accuracy-coverage curve: for k = 1..n, coverage k/n and the accuracy and balanced
    accuracy of the k most confident units; area_* is the mean over k of each (the area under
    the step curve against coverage)."""
    n = len(labels)
    if not n:
        return {"coverage": [], "accuracy": [], "balanced_accuracy": [], "confidence": [],
                "area_accuracy": None, "area_balanced_accuracy": None, "n": 0}  # fmt: skip
    accuracy, balanced = _curves(labels, predicted, confidence, num_classes)
    return {
        "coverage": (np.arange(1, n + 1) / n).tolist(),
        "accuracy": accuracy.tolist(), "balanced_accuracy": balanced.tolist(),
        "confidence": np.asarray(confidence, np.float64)[_order(confidence)].tolist(),
        "area_accuracy": float(accuracy.mean()),
        "area_balanced_accuracy": float(balanced.mean()), "n": n,
    }  # fmt: skip


def accuracy_at_abstention(
    labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, num_classes: int,
    rates: tuple[float, ...] = RATES,
) -> list[dict]:  # fmt: skip
    """Per rate: {rate, abstained, answered, accuracy, balanced_accuracy} when abstaining on the
    floor(rate * n) least confident units (the last ones in confidence order, ties by index);
    accuracies None when no unit is answered."""
    for rate in rates:
        _check_rate(rate)
    n = len(labels)
    accuracy, balanced = _curves(labels, predicted, confidence, num_classes) if n else ([], [])
    out = []
    for rate in rates:
        abstained = _abstained(rate, n)
        answered = n - abstained
        out.append({
            "rate": float(rate), "abstained": abstained, "answered": answered,
            "accuracy": float(accuracy[answered - 1]) if answered else None,
            "balanced_accuracy": float(balanced[answered - 1]) if answered else None,
        })  # fmt: skip
    return out


def _check_rate(rate: float) -> None:
    """A UserError naming eval.abstain_rate unless `rate` is a number in [0, 1)."""
    ok = isinstance(rate, numbers.Real) and not isinstance(rate, bool) and 0 <= rate < 1
    if not ok:
        raise UserError(f"eval.abstain_rate = {rate!r}: expected a number in [0, 1), the share "
                        "of validation units answered \"refer\" (0: answer all).")  # fmt: skip


def abstention_threshold(confidence: np.ndarray, rate: float) -> float:
    """The confidence threshold fixed on validation: units answer iff confidence >= threshold.
    It is the (m + 1)-th smallest validation confidence with m = floor(rate * n), so exactly m
    units (a share floor(rate * n) / n) are referred there when confidences are distinct (fewer
    on a tie at the threshold, which is answered); -inf (answer all) when m is 0."""
    _check_rate(rate)
    conf = np.sort(np.asarray(confidence, np.float64).ravel())
    if rate == 0:  # answer all, whatever validation holds
        return -math.inf
    if not len(conf):
        raise UserError(f"eval.abstain_rate = {rate!r}: no validation units to fix the "
                        "abstention threshold on; set eval.abstain_rate = 0.")  # fmt: skip
    if not np.all(np.isfinite(conf)):
        raise ValueError("expected finite confidences")
    m = _abstained(rate, len(conf))
    return -math.inf if m == 0 else float(conf[m])


def refer(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """(n,) bool, True where a unit is referred (its confidence is below `threshold`)."""
    return np.asarray(confidence, np.float64) < threshold
