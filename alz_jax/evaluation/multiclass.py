"""Classification metrics for K >= 3 ordered classes (dementia stages), at slice, scan and
subject level, from per-image class probabilities.

The binary path (`metrics.py`) stays as it is; this module is its K-class counterpart. The
predicted class is the argmax of the probabilities (ties to the lowest index, as numpy's
argmax): there is no threshold to choose on validation. A scan's probability vector is the mean
of its slices'; a subject's is the mean of its scans'. As in `metrics.level_units`, a subject
whose label differs between visits is counted once per label.

Every confusion-based metric is computed from (weighted) confusion matrices stacked along a
leading axis, and the one-vs-rest ROC areas from `metrics.ranking_areas`, which takes weights:
a bootstrap resample over subjects is then one weight vector, and the point estimate is the
resample that weights every unit once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.optimize
import scipy.special

from alz_jax.evaluation import metrics

LEVELS = metrics.LEVELS


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits (n, K), row-wise, in float64."""
    return scipy.special.softmax(np.asarray(logits, np.float64), axis=-1)


def nll(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (validation loss, no label smoothing)."""
    labels = np.asarray(labels).astype(np.int64)
    prob_true = np.asarray(probs, np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(prob_true, 1e-12, 1.0))))


def fit_temperature(labels: np.ndarray, logits: np.ndarray) -> dict:
    """The temperature T minimising the NLL of softmax(logits / T) (Guo et al., 2017), by bounded
    search over log T within metrics.TEMPERATURE_BOUNDS; `at_bound` flags a fit that hit a bound
    (a perfectly separated validation set drives T towards 0)."""
    labels = np.asarray(labels).astype(np.int64)
    logits = np.asarray(logits, np.float64)
    rows = np.arange(len(labels))
    # Other classes' logits minus the true one's: the NLL is log(1 + sum exp(others / T)),
    # computed as logaddexp(0, .) so that a nearly separated set keeps its tiny losses (as the
    # binary fit does) instead of rounding them to 0 and stopping the search early.
    others = logits - logits[rows, labels][:, None]
    others[rows, labels] = -np.inf

    def loss(log_t: float) -> float:
        rest = scipy.special.logsumexp(others / np.exp(log_t), axis=1)
        return float(np.mean(np.logaddexp(0.0, rest)))

    lo, hi = np.log(metrics.TEMPERATURE_BOUNDS)
    result = scipy.optimize.minimize_scalar(loss, bounds=(lo, hi), method="bounded",
                                            options={"xatol": 1e-6})  # fmt: skip
    return {
        "temperature": float(np.exp(result.x)),
        "nll_before": loss(0.0),
        "nll_after": loss(result.x),
        "at_bound": bool(min(result.x - lo, hi - result.x) < 1e-3),
    }


# ---- Scores from confusion matrices, for one or many weightings at once. ----


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, 0 where b is 0 (scikit-learn's zero_division=0)."""
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b > 0)


def confusion_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from confusion matrices (..., K, K), rows true, columns predicted; NaN where a
    metric is undefined (no unit; kappa with no expected disagreement).

    Per class: precision, recall and F1 (0 where undefined, as scikit-learn with
    zero_division=0). Balanced accuracy averages recall over the classes present in the labels;
    macro F1 averages F1 over the classes present in the labels or the predictions (both as
    scikit-learn does when not given `labels`); weighted F1 weights F1 by support. The kappas'
    quadratic and linear weights are by class index, so the stages keep their distances when one
    is absent; MAE is the mean distance in classes between truth and call, within-one the share
    of calls at most one class away (both read the class order as an ordinal scale).
    """
    confusion = np.asarray(confusion, np.float64)
    k = confusion.shape[-1]
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    support, predicted = confusion.sum(-1), confusion.sum(-2)
    total = support.sum(-1)
    f1 = _divide(2 * tp, support + predicted)  # = 2 tp / (2 tp + fp + fn)
    recall = _divide(tp, support)
    present, seen = support > 0, (support + predicted) > 0
    distance = np.abs(np.arange(k)[:, None] - np.arange(k)[None, :]).astype(np.float64)
    safe_total = np.where(total > 0, total, 1)[..., None, None]
    expected = support[..., :, None] * predicted[..., None, :] / safe_total

    def kappa(weights: np.ndarray) -> np.ndarray:
        observed_cost = np.sum(weights * confusion, axis=(-2, -1))
        expected_cost = np.sum(weights * expected, axis=(-2, -1))
        return np.where(expected_cost > 0, 1 - observed_cost / expected_cost, np.nan)

    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy": np.where(total > 0, tp.sum(-1) / total, np.nan),
            "balanced_accuracy": np.sum(recall * present, -1) / present.sum(-1),
            "macro_f1": np.sum(f1 * seen, -1) / seen.sum(-1),
            "weighted_f1": np.sum(f1 * support, -1) / total,
            "quadratic_kappa": kappa(distance**2 / max(k - 1, 1) ** 2),
            "linear_kappa": kappa(distance / max(k - 1, 1)),
            # Ordinal errors in stages: the mean distance, and the share at most one away.
            "mae": np.where(total > 0, np.sum(distance * confusion, (-2, -1)) / total, np.nan),
            "within_one": np.where(
                total > 0, np.sum((distance <= 1) * confusion, (-2, -1)) / total, np.nan
            ),
            "precision": _divide(tp, predicted),
            "recall": recall,
            "f1": f1,
        }


def ovr_areas(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC per class (columns) for each row of `weights`: (B, K), NaN where a
    class has no positive or no negative weight."""
    return np.stack(
        [
            metrics.ranking_areas(labels == c, probs[:, c], weights)[0]
            for c in range(probs.shape[1])
        ],
        axis=1,
    )


def _optional(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def class_names_or_indices(class_names: Sequence[str] | None, k: int) -> list[str]:
    """The class names, or "0".."K-1" when none are given; refuses a count that isn't K."""
    names = [str(c) for c in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} probability columns")
    return names


def classification_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str] | None = None,
    n_bins: int = 10,
    predicted: np.ndarray | None = None,
) -> dict:
    """Accuracy, balanced accuracy, macro and weighted F1, the kappas, MAE and within-one
    accuracy, macro one-vs-rest ROC AUC (None when a class is absent from the labels), top-label
    ECE (`n_bins` bins), per-class precision, recall, F1, support and one-vs-rest AUC, and the
    K x K confusion matrix; the predicted class is `predicted` (the argmax when not given).
    Without `class_names` the classes are named "0".."K-1"."""
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, np.float64)
    k = probs.shape[1]
    names = class_names_or_indices(class_names, k)
    called = np.argmax(probs, axis=1) if predicted is None else np.asarray(predicted, np.int64)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, called), 1)
    scores = confusion_scores(confusion)
    aucs = ovr_areas(labels, probs, np.ones((1, len(labels))))[0]
    per_class = {
        name: {
            "precision": float(scores["precision"][c]),
            "recall": float(scores["recall"][c]),
            "f1": float(scores["f1"][c]),
            "support": int(confusion[c].sum()),
            "roc_auc_ovr": _optional(aucs[c]),
        }
        for c, name in enumerate(names)
    }
    return {
        "n": len(labels),
        # The scalars of the matrix (per-class arrays aside).
        **{name: _optional(v) for name, v in scores.items() if np.ndim(v) == 0},
        # scikit-learn cannot compute it when a class is absent: neither do we.
        "roc_auc_ovr_macro": None if np.isnan(aucs).any() else float(np.mean(aucs)),
        "ece": reliability_bins(labels, probs, n_bins)["ece"],
        "per_class": per_class,
        "confusion_matrix": {"rows_true_cols_predicted": names, "counts": confusion.tolist()},
    }


# ---- Calibration. ----


def reliability_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict:
    """Top-label reliability: equal-width bins (lo, hi] of the confidence (the largest
    probability), with count, mean confidence and accuracy per bin, and the expected calibration
    error sum_b n_b/N |accuracy_b - confidence_b|."""
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, np.float64)
    confidence = probs.max(axis=1)
    correct = (np.argmax(probs, axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.searchsorted(edges[1:-1], confidence)  # bins (lo, hi], as metrics' binary bins
    count = np.bincount(bin_of, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(bin_of, confidence, n_bins) / count
        accuracy = np.bincount(bin_of, correct, n_bins) / count
    filled = count > 0
    gaps = count[filled] * np.abs(accuracy[filled] - mean_confidence[filled])
    return {
        "ece": float(np.sum(gaps) / max(len(labels), 1)),
        "edges": edges.tolist(),
        "count": count.tolist(),
        "mean_confidence": [
            float(v) if c else None for v, c in zip(mean_confidence, count, strict=True)
        ],
        "accuracy": [float(v) if c else None for v, c in zip(accuracy, count, strict=True)],
    }


# ---- Aggregation to scans and subjects: metrics.level_units, which averages vectors too. ----


def multilevel_metrics(
    records: dict[str, np.ndarray],
    probs: np.ndarray,
    subjects_known: bool,
    class_names: Sequence[str] | None = None,
    decide=None,
) -> dict:
    """classification_metrics at slice, scan and (when subjects are known) subject level, each
    unit called by `decide(probs)` (the argmax when not given)."""
    return {
        level: classification_metrics(
            u.labels, u.probs, class_names, predicted=None if decide is None else decide(u.probs)
        )
        for level, u in metrics.level_units(records, probs, subjects_known).items()
    }
