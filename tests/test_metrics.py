"""Metric arithmetic against scikit-learn, and aggregation to scan and subject level."""

import numpy as np
import pytest
from sklearn import metrics as skm

from alz_jax import metrics


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    prob = np.clip(0.35 * labels + rng.uniform(0, 0.65, 400), 0, 1)
    prob[:20] = 0.5  # ties at the threshold and in the ranking
    return labels, prob


def test_classification_metrics_match_sklearn(predictions):
    labels, prob = predictions
    m = metrics.classification_metrics(labels, prob)
    predicted = (prob >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, predicted))
    p, r, f, s = skm.precision_recall_fscore_support(labels, predicted, labels=[0, 1])
    for k, name in enumerate(("NC", "AD")):
        assert m["per_class"][name]["precision"] == pytest.approx(p[k])
        assert m["per_class"][name]["recall"] == pytest.approx(r[k])
        assert m["per_class"][name]["f1"] == pytest.approx(f[k])
        assert m["per_class"][name]["support"] == s[k]
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, predicted, average="macro"))
    assert m["confusion_matrix"]["counts"] == skm.confusion_matrix(labels, predicted).tolist()
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, prob))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(labels, predicted))


def test_auc_undefined_with_one_class():
    assert metrics.roc_auc(np.ones(5), np.linspace(0, 1, 5)) is None


def test_scan_and_subject_aggregation_by_hand():
    records = {
        "scan_id": np.array(["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s4"], object),
        "subject_id": np.array(["A", "A", "A", "A", "B", "B", "C", "C"], object),
        "label": np.array([1, 1, 1, 1, 0, 0, 1, 1]),
    }
    prob = np.array([0.9, 0.5, 0.2, 0.3, 0.6, 0.2, 0.45, 0.5])
    out = metrics.multilevel_metrics(records, prob, subjects_known=True)
    # Slices: 0.9, 0.5, 0.5 (AD right); 0.2, 0.3, 0.45 (AD wrong); 0.6 (NC wrong), 0.2 (NC right).
    assert out["slice"]["accuracy"] == pytest.approx(4 / 8)
    # Scans: s1 0.7 (AD, right), s2 0.25 (AD, wrong), s3 0.4 (NC, right), s4 0.475 (AD, wrong).
    assert out["scan"]["n"] == 4
    assert out["scan"]["accuracy"] == pytest.approx(2 / 4)
    assert out["scan"]["confusion_matrix"]["counts"] == [[1, 0], [2, 1]]
    # Subjects: A = mean(0.7, 0.25) = 0.475 (AD, wrong), B 0.4 (NC, right), C 0.475 (wrong).
    assert out["subject"]["n"] == 3
    assert out["subject"]["accuracy"] == pytest.approx(1 / 3)


def test_subject_with_changed_diagnosis_counts_once_per_label():
    records = {
        "scan_id": np.array(["s1", "s2"], object),
        "subject_id": np.array(["A", "A"], object),
        "label": np.array([0, 1]),
    }
    out = metrics.multilevel_metrics(records, np.array([0.2, 0.9]), subjects_known=True)
    assert out["subject"]["n"] == 2 and out["subject"]["accuracy"] == 1.0


def test_nll():
    assert metrics.nll(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(
        -(np.log(0.8) + np.log(0.6)) / 2
    )
