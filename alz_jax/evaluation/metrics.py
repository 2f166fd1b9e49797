"""Classification metrics at slice, scan and subject level, from per-image AD probabilities.

A scan's probability is the mean of its slices' probabilities; a subject's is the mean of its
scans'. A subject whose diagnosis differs between visits is counted once per label (its AD
visits and its NC visits are separate units), so every unit has one true label.

Also here: ROC and precision-recall areas, the decision threshold chosen on validation,
calibration (reliability bins, expected calibration error, temperature scaling). Ranking and
confusion counts take per-unit weights, so a bootstrap resample (`bootstrap.py`) is a weight
vector (how often each unit's subject was drawn).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.optimize
import scipy.special

CLASS_NAMES = ("NC", "AD")  # label 0, 1; AD is the positive class
LEVELS = ("slice", "scan", "subject")
TEMPERATURE_BOUNDS = (0.05, 20.0)


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


# ---- Ranking: ROC and precision-recall, weighted, for one or many weight vectors at once. ----


def _cumulative_counts(labels, scores, weights):
    """Weighted true/false positives at each distinct score, scores descending.

    `weights` is (B, n); returns thresholds (G,), tp and fp (B, G) counting units with score >=
    each threshold.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    w = np.asarray(weights, np.float64)[:, order]
    tp = np.cumsum(w * labels[order], axis=1)
    fp = np.cumsum(w * ~labels[order], axis=1)
    # The last position of each run of equal scores: ties enter together.
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    return sorted_scores[last], tp[:, last], fp[:, last]


def ranking_areas(labels, scores, weights) -> tuple[np.ndarray, np.ndarray]:
    """ROC AUC (trapezoid, ties counted half) and average precision (scikit-learn's step
    sum) per row of `weights`; NaN where a row has no positive or no negative weight."""
    _, tp, fp = _cumulative_counts(labels, scores, weights)
    pos, neg = tp[:, -1], fp[:, -1]
    zeros = np.zeros((tp.shape[0], 1))
    tp0, fp0 = np.hstack([zeros, tp]), np.hstack([zeros, fp])
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.sum(np.diff(fp0, axis=1) * (tp0[:, 1:] + tp0[:, :-1]) / 2, axis=1) / (pos * neg)
        precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
        ap = np.sum(np.diff(tp0, axis=1) * precision, axis=1) / pos
    undefined = (pos <= 0) | (neg <= 0)
    auc[undefined] = np.nan
    ap[pos <= 0] = np.nan
    return auc, ap


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (ties counted half); None if one class is absent."""
    auc, _ = ranking_areas(labels, scores, np.ones((1, len(labels))))
    return None if np.isnan(auc[0]) else float(auc[0])


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve as average precision (AD positive); None without
    AD units."""
    _, ap = ranking_areas(labels, scores, np.ones((1, len(labels))))
    return None if np.isnan(ap[0]) else float(ap[0])


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """ROC points (fpr, tpr) from (0, 0), one per distinct score, with their thresholds."""
    thresholds, tp, fp = _cumulative_counts(labels, scores, np.ones((1, len(labels))))
    pos, neg = max(tp[0, -1], 1), max(fp[0, -1], 1)
    return {
        "fpr": np.r_[0.0, fp[0] / neg],
        "tpr": np.r_[0.0, tp[0] / pos],
        "thresholds": np.r_[np.inf, thresholds],
    }


def pr_curve(labels: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Precision-recall points, one per distinct score (descending)."""
    _, tp, fp = _cumulative_counts(labels, scores, np.ones((1, len(labels))))
    return {"recall": tp[0] / max(tp[0, -1], 1), "precision": tp[0] / (tp[0] + fp[0])}


# ---- Metrics at a threshold. ----


def confusion_rates(tn, fp, fn, tp) -> dict[str, np.ndarray]:
    """Threshold metrics from (weighted) confusion counts; arrays broadcast, 0 where undefined."""

    def div(a, b):
        return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)

    sensitivity, specificity = div(tp, tp + fn), div(tn, tn + fp)
    precision, npv = div(tp, tp + fp), div(tn, tn + fn)
    f1_ad = div(2 * precision * sensitivity, precision + sensitivity)
    f1_nc = div(2 * npv * specificity, npv + specificity)
    return {
        "accuracy": div(tp + tn, tp + tn + fp + fn),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": precision,
        "npv": npv,
        "f1_ad": f1_ad,
        "f1_nc": f1_nc,
        "macro_f1": (f1_ad + f1_nc) / 2,
    }


def classification_metrics(labels: np.ndarray, prob_ad: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy, sensitivity (AD recall), specificity, precision, per-class
    precision/recall/F1, macro F1, confusion matrix, ROC AUC and PR AUC; AD if prob >= threshold."""
    labels = np.asarray(labels).astype(np.int64)
    predicted = (np.asarray(prob_ad) >= threshold).astype(np.int64)
    confusion = np.zeros((2, 2), np.int64)  # rows: true NC, AD; columns: predicted NC, AD
    np.add.at(confusion, (labels, predicted), 1)
    (tn, fp), (fn, tp) = confusion.astype(np.float64)
    rates = {k: float(v) for k, v in confusion_rates(tn, fp, fn, tp).items()}
    per_class = {
        "NC": {"precision": rates["npv"], "recall": rates["specificity"], "f1": rates["f1_nc"]},
        "AD": {"precision": rates["precision"], "recall": rates["sensitivity"],
               "f1": rates["f1_ad"]},
    }  # fmt: skip
    for k, name in enumerate(CLASS_NAMES):
        per_class[name]["support"] = int(confusion[k].sum())
    return {
        "n": len(labels),
        "threshold": float(threshold),
        # The NC class's F1 is in per_class (its precision, the NPV, also here).
        **{k: v for k, v in rates.items() if k != "f1_nc"},
        # Nothing called NC: no NPV (not 0, which would read as every NC call wrong).
        "npv": rates["npv"] if tn + fn else None,
        "roc_auc": roc_auc(labels, prob_ad),
        "pr_auc": pr_auc(labels, prob_ad),
        "per_class": per_class,
        "confusion_matrix": {
            "rows_true_cols_predicted": list(CLASS_NAMES),
            "counts": confusion.tolist(),
        },
    }  # fmt: skip


# ---- Aggregation to scans and subjects. ----


@dataclasses.dataclass(frozen=True)
class Units:
    """The units of one level: keys, true labels, probabilities and each unit's subject (the
    unit a bootstrap resamples)."""

    keys: list
    labels: np.ndarray
    probs: np.ndarray
    subjects: np.ndarray


def group_mean(
    keys: Sequence, labels: np.ndarray, prob_ad: np.ndarray
) -> tuple[list, np.ndarray, np.ndarray]:
    """Mean probability per (key, label) group; returns (group keys, labels, probabilities).
    Probabilities are P(AD) per unit, or K-class probability vectors (then (groups, K))."""
    sums: dict[tuple, list] = {}
    for key, label, prob in zip(keys, labels, prob_ad, strict=True):
        entry = sums.setdefault((key, int(label)), [0.0, 0])
        entry[0] = entry[0] + (float(prob) if np.ndim(prob) == 0 else np.asarray(prob, float))
        entry[1] += 1
    groups = sorted(sums)
    return (
        groups,
        np.array([label for _, label in groups], np.int64),
        np.array([sums[g][0] / sums[g][1] for g in groups], np.float64),
    )


def level_units(
    records: dict[str, np.ndarray], prob_ad: np.ndarray, subjects_known: bool
) -> dict[str, Units]:
    """Slices, scans (mean of slices) and, when subjects are known, subjects (mean of scans);
    `prob_ad` may also be K-class probabilities (n, K), averaged as vectors."""
    labels = np.asarray(records["label"]).astype(np.int64)
    subjects = np.asarray(records["subject_id"], object)
    prob_ad = np.asarray(prob_ad, np.float64)
    names = records.get("file_name", range(len(labels)))
    out = {"slice": Units(list(names), labels, prob_ad, subjects)}
    scans, scan_labels, scan_probs = group_mean(records["scan_id"], labels, prob_ad)
    subject_of_scan = dict(zip(records["scan_id"], subjects, strict=True))
    scan_subjects = np.array([subject_of_scan[scan] for scan, _ in scans], object)
    out["scan"] = Units(scans, scan_labels, scan_probs, scan_subjects)
    if subjects_known:
        groups, subject_labels, subject_probs = group_mean(scan_subjects, scan_labels, scan_probs)
        out["subject"] = Units(
            groups, subject_labels, subject_probs, np.array([s for s, _ in groups], object)
        )
    return out


def multilevel_metrics(
    records: dict[str, np.ndarray],
    prob_ad: np.ndarray,
    subjects_known: bool,
    thresholds: dict[str, float] | None = None,
) -> dict:
    """Metrics at slice, scan and (when subjects are known) subject level, each at its threshold
    (0.5 unless `thresholds` gives one for the level)."""
    thresholds = thresholds or {}
    return {
        level: classification_metrics(u.labels, u.probs, thresholds.get(level, 0.5))
        for level, u in level_units(records, prob_ad, subjects_known).items()
    }


# What a report calls the units of each level.
UNIT_NOUNS = {"slice": "images", "scan": "scans", "subject": "subjects"}


def split_counts(
    records: dict[str, np.ndarray], subjects_known: bool, class_names: Sequence[str] = ()
) -> dict:
    """How many images, scans and (when subjects are known) subjects a split holds, and, given
    `class_names` in label order, how many of each per class ("by_class"; a subject with visits
    of two classes counts in both, so the classes may add up to more than the total)."""
    labels = np.asarray(records["label"]).astype(np.int64)
    keys = {"images": np.arange(len(labels)), "scans": np.asarray(records["scan_id"], object)}
    if subjects_known:
        keys["subjects"] = np.asarray(records["subject_id"], object)
    out: dict = {unit: len(set(k.tolist())) for unit, k in keys.items()}
    if len(class_names):
        out["by_class"] = {
            name: {unit: len(set(k[labels == c].tolist())) for unit, k in keys.items()}
            for c, name in enumerate(class_names)
        }
    return out


def nll(labels: np.ndarray, prob_ad: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (validation loss, no label smoothing)."""
    prob_true = np.where(np.asarray(labels) == 1, prob_ad, 1.0 - np.asarray(prob_ad))
    return float(-np.mean(np.log(np.clip(prob_true, 1e-12, 1.0))))


# ---- The decision threshold, chosen on validation. ----


def choose_threshold(
    labels: np.ndarray, prob_ad: np.ndarray, method: str = "youden", target: float | None = None
) -> dict:
    """The decision threshold for `prob_ad >= t`, chosen on these (validation) units.

    Candidates lie midway between consecutive distinct probabilities (and beyond both ends), so
    the cut does not sit on a validation unit. 'youden' maximises sensitivity + specificity - 1;
    'sensitivity' maximises specificity subject to sensitivity >= `target`. Ties go to the
    candidate nearest 0.5. With one class only, 0.5 is returned and `defined` is False.
    """
    labels = np.asarray(labels).astype(bool)
    prob_ad = np.asarray(prob_ad, np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return {"threshold": 0.5, "method": method, "target": target, "defined": False}
    distinct, tp, fp = _cumulative_counts(labels, prob_ad, np.ones((1, len(labels))))
    above = np.nextafter(distinct[0], np.inf)
    # A midpoint of two neighbouring floats can round onto the lower one: keep it above.
    middle = np.maximum((distinct[:-1] + distinct[1:]) / 2, np.nextafter(distinct[1:], np.inf))
    candidates = np.r_[above, middle, distinct[-1] / 2]
    # Cut k (between distinct values k and k + 1) calls AD every unit at or above value k.
    sensitivity = np.r_[0.0, tp[0]] / n_pos
    specificity = 1.0 - np.r_[0.0, fp[0]] / n_neg
    nearness = -np.abs(candidates - 0.5)
    if method == "youden":
        objective = sensitivity + specificity - 1
        eligible = np.ones(len(candidates), bool)
    elif method == "sensitivity":
        objective = specificity
        eligible = sensitivity >= target - 1e-12
    else:
        raise ValueError(f"threshold method {method!r}; expected 'youden' or 'sensitivity'")
    key = np.where(eligible, objective, -np.inf)
    best = np.flatnonzero(key >= key.max() - 1e-12)
    chosen = best[np.argmax(nearness[best])]
    return {
        "threshold": float(candidates[chosen]),
        "method": method,
        "target": target,
        "defined": True,
        "validation_sensitivity": float(sensitivity[chosen]),
        "validation_specificity": float(specificity[chosen]),
    }


def parse_threshold_method(text: str) -> tuple[str, float | None]:
    """'youden' or 'sensitivity:0.9' -> (method, target); a clear error otherwise."""
    if text == "youden":
        return "youden", None
    name, _, value = text.partition(":")
    try:
        target = float(value)
    except ValueError:
        target = None
    if name != "sensitivity" or target is None or not 0.0 < target <= 1.0:
        raise ValueError(
            f"threshold {text!r}: expected 'youden' or 'sensitivity:T' with 0 < T <= 1 "
            "(e.g. sensitivity:0.9)"
        )
    return name, target


# ---- Calibration. ----


def reliability_bins(labels: np.ndarray, prob_ad: np.ndarray, n_bins: int = 10) -> dict:
    """Equal-width bins of P(AD): count, mean predicted P(AD) and observed AD fraction per bin,
    and the expected calibration error sum_b n_b/N |observed_b - predicted_b|."""
    labels = np.asarray(labels, np.float64)
    prob_ad = np.asarray(prob_ad, np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.searchsorted(edges[1:-1], prob_ad)  # bins (lo, hi], as scikit-learn's
    count = np.bincount(bin_of, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        predicted = np.bincount(bin_of, prob_ad, n_bins) / count
        observed = np.bincount(bin_of, labels, n_bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(observed[filled] - predicted[filled])) / len(labels))
    return {
        "ece": ece,
        "edges": edges.tolist(),
        "count": count.tolist(),
        "mean_predicted": [float(v) if c else None for v, c in zip(predicted, count, strict=True)],
        "observed_ad_fraction": [
            float(v) if c else None for v, c in zip(observed, count, strict=True)
        ],
    }


def sigmoid(x) -> np.ndarray:
    """P(AD) from the logit margin z_AD - z_NC (the 2-class softmax), in float64."""
    return scipy.special.expit(np.asarray(x, np.float64))


def fit_temperature(labels: np.ndarray, logit_ad: np.ndarray) -> dict:
    """The temperature T minimising the NLL of sigmoid(logit_ad / T) (Guo et al., 2017), by
    bounded search over log T; `at_bound` flags a fit that hit TEMPERATURE_BOUNDS (e.g. a
    perfectly separated validation set drives T towards 0)."""
    signs = np.where(np.asarray(labels) == 1, 1.0, -1.0)
    margins = np.asarray(logit_ad, np.float64)

    def loss(log_t: float) -> float:
        return float(np.mean(np.logaddexp(0.0, -signs * margins / np.exp(log_t))))

    lo, hi = np.log(TEMPERATURE_BOUNDS)
    result = scipy.optimize.minimize_scalar(loss, bounds=(lo, hi), method="bounded",
                                            options={"xatol": 1e-6})  # fmt: skip
    temperature = float(np.exp(result.x))
    return {
        "temperature": temperature,
        "nll_before": loss(0.0),
        "nll_after": loss(result.x),
        "at_bound": bool(min(result.x - lo, hi - result.x) < 1e-3),
    }
