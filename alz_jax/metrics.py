"""Classification metrics at slice, scan and subject level, from per-image AD probabilities.

A scan's probability is the mean of its slices' probabilities; a subject's is the mean of its
scans'. A subject whose diagnosis differs between visits is counted once per label (its AD
visits and its NC visits are separate units), so every unit has one true label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLASS_NAMES = ("NC", "AD")  # label 0, 1; AD is the positive class


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with ties counted half); None if one class."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = np.asarray(scores)[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(labels: np.ndarray, prob_ad: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, per-class precision/recall/F1, confusion matrix, sensitivity, specificity, AUC."""
    labels = np.asarray(labels).astype(np.int64)
    predicted = (np.asarray(prob_ad) >= threshold).astype(np.int64)
    confusion = np.zeros((2, 2), np.int64)  # rows: true NC, AD; columns: predicted NC, AD
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    for k, name in enumerate(CLASS_NAMES):
        tp = confusion[k, k]
        precision = _safe_div(tp, confusion[:, k].sum())
        recall = _safe_div(tp, confusion[k, :].sum())
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _safe_div(2 * precision * recall, precision + recall),
            "support": int(confusion[k, :].sum()),
        }
    sensitivity, specificity = per_class["AD"]["recall"], per_class["NC"]["recall"]
    return {
        "n": len(labels),
        "accuracy": _safe_div(np.trace(confusion), confusion.sum()),
        "balanced_accuracy": (sensitivity + specificity) / 2.0,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "macro_f1": float(np.mean([per_class[c]["f1"] for c in CLASS_NAMES])),
        "roc_auc": roc_auc(labels, prob_ad),
        "per_class": per_class,
        "confusion_matrix": {
            "rows_true_cols_predicted": list(CLASS_NAMES),
            "counts": confusion.tolist(),
        },
        "threshold": threshold,
    }


def group_mean(
    keys: Sequence, labels: np.ndarray, prob_ad: np.ndarray
) -> tuple[list, np.ndarray, np.ndarray]:
    """Mean probability per (key, label) group; returns (group keys, labels, probabilities)."""
    sums: dict[tuple, list] = {}
    for key, label, prob in zip(keys, labels, prob_ad, strict=True):
        entry = sums.setdefault((key, int(label)), [0.0, 0])
        entry[0] += float(prob)
        entry[1] += 1
    groups = sorted(sums)
    return (
        groups,
        np.array([label for _, label in groups], np.int64),
        np.array([sums[g][0] / sums[g][1] for g in groups], np.float64),
    )


def multilevel_metrics(
    records: dict[str, np.ndarray], prob_ad: np.ndarray, subjects_known: bool
) -> dict:
    """Metrics at slice, scan and (when subjects are known) subject level."""
    labels = records["label"]
    out = {"slice": classification_metrics(labels, prob_ad)}
    scans, scan_labels, scan_probs = group_mean(records["scan_id"], labels, prob_ad)
    out["scan"] = classification_metrics(scan_labels, scan_probs)
    if subjects_known:
        subject_of_scan = dict(zip(records["scan_id"], records["subject_id"], strict=True))
        subject_keys = [subject_of_scan[scan] for scan, _ in scans]
        _, subject_labels, subject_probs = group_mean(subject_keys, scan_labels, scan_probs)
        out["subject"] = classification_metrics(subject_labels, subject_probs)
    return out


def nll(labels: np.ndarray, prob_ad: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (validation loss, no label smoothing)."""
    prob_true = np.where(np.asarray(labels) == 1, prob_ad, 1.0 - np.asarray(prob_ad))
    return float(-np.mean(np.log(np.clip(prob_true, 1e-12, 1.0))))
