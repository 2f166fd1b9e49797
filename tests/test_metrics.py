"""Metric arithmetic against scikit-learn, and aggregation to scan and subject level."""

import numpy as np
import pytest
from sklearn import metrics as skm

from alz_jax.evaluation import metrics, tasks

BINARY = tasks.BinaryTask(2)


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


def test_threshold_free_and_threshold_metrics_match_sklearn(predictions):
    labels, prob = predictions
    m = metrics.classification_metrics(labels, prob, threshold=0.4)
    predicted = (prob >= 0.4).astype(int)
    assert m["precision"] == pytest.approx(skm.precision_score(labels, predicted))
    assert m["f1_ad"] == pytest.approx(skm.f1_score(labels, predicted))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(labels, prob))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, prob))
    # Weighted areas (what a bootstrap resample computes) against sklearn's sample_weight.
    weights = np.random.default_rng(1).integers(0, 4, len(labels)).astype(float)
    auc, ap = metrics.ranking_areas(labels, prob, weights[None])
    assert auc[0] == pytest.approx(skm.roc_auc_score(labels, prob, sample_weight=weights))
    assert ap[0] == pytest.approx(skm.average_precision_score(labels, prob, sample_weight=weights))
    curve = metrics.roc_curve(labels, prob)
    fpr, tpr, _ = skm.roc_curve(labels, prob, drop_intermediate=False)
    np.testing.assert_allclose(curve["fpr"], fpr)
    np.testing.assert_allclose(curve["tpr"], tpr)


def test_reliability_bins_and_ece_match_sklearn_and_the_formula():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 500)
    prob = np.clip(0.3 * labels + rng.uniform(0, 0.7, 500), 0, 1)
    prob[:40] = np.round(prob[:40], 1)  # values on bin edges go where scikit-learn puts them
    bins = metrics.reliability_bins(labels, prob, n_bins=10)
    observed, predicted = calibration_curve(labels, prob, n_bins=10)
    np.testing.assert_allclose([v for v in bins["observed_ad_fraction"] if v is not None], observed)
    np.testing.assert_allclose([v for v in bins["mean_predicted"] if v is not None], predicted)
    counts = np.array(bins["count"])
    filled = counts > 0
    gaps = np.abs(observed - predicted)
    assert bins["ece"] == pytest.approx(np.sum(counts[filled] * gaps) / len(labels))
    assert counts.sum() == 500


def test_youden_threshold_is_the_best_cut_and_sits_between_units(predictions):
    labels, prob = predictions
    chosen = metrics.choose_threshold(labels, prob)
    fpr, tpr, _ = skm.roc_curve(labels, prob, drop_intermediate=False)
    m = metrics.classification_metrics(labels, prob, chosen["threshold"])
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(np.max(tpr - fpr))
    assert chosen["threshold"] not in set(prob.tolist())
    target = metrics.choose_threshold(labels, prob, "sensitivity", 0.9)
    m = metrics.classification_metrics(labels, prob, target["threshold"])
    assert m["sensitivity"] >= 0.9
    feasible = [s for f, t, s in zip(fpr, tpr, 1 - fpr, strict=True) if t >= 0.9]
    assert m["specificity"] == pytest.approx(max(feasible))
    with pytest.raises(ValueError, match="sensitivity:T"):
        metrics.parse_threshold_method("sensitivity:1.5")
    # Neighbouring floats near 1 (saturated sigmoids): the cut stays strictly between them.
    tight = np.array([1 - 2**-53, 1 - 2**-52, 0.2, 0.1])
    chosen = metrics.choose_threshold(np.array([1, 0, 0, 0]), tight)
    assert tight[1] < chosen["threshold"] <= tight[0]
    assert chosen["validation_specificity"] == 1.0
    undefined = metrics.choose_threshold(np.ones(4), np.linspace(0, 1, 4))
    assert undefined["threshold"] == 0.5 and not undefined["defined"]


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(3)
    margins = rng.normal(0, 6, 20000)
    labels = (rng.uniform(size=margins.size) < metrics.sigmoid(margins / 2.5)).astype(int)
    fit = metrics.fit_temperature(labels, margins)
    assert fit["temperature"] == pytest.approx(2.5, rel=0.05)
    assert fit["nll_after"] < fit["nll_before"] and not fit["at_bound"]
    # Perfectly separated: the fit runs to its lower bound and says so.
    separated = metrics.fit_temperature(np.array([0, 0, 1, 1]), np.array([-3.0, -1, 1, 3]))
    assert separated["at_bound"]


def _clustered(k: int = 1, seed: int = 4):
    """40 subjects, 1-3 scans each, 4 slices per scan; every row replicated k times."""
    rng = np.random.default_rng(seed)
    rows = []
    for subject in range(40):
        label = subject % 2
        skill = rng.normal(1.2 if label else -1.2, 1.0)
        for scan in range(rng.integers(1, 4)):
            for s in range(4):
                prob = float(metrics.sigmoid(skill + rng.normal(0, 0.8)))
                rows += [(f"f{subject}_{scan}_{s}_{r}", f"s{subject}_{scan}", f"subj{subject}",
                          label, prob) for r in range(k)]  # fmt: skip
    names, scans, subjects, labels, probs = zip(*rows, strict=True)
    records = {"file_name": np.array(names, object), "scan_id": np.array(scans, object),
               "subject_id": np.array(subjects, object), "label": np.array(labels)}  # fmt: skip
    return records, np.array(probs)


def test_subject_bootstrap_is_unchanged_by_replicating_rows_and_a_slice_bootstrap_is_not():
    thresholds = {"slice": 0.5, "scan": 0.45, "subject": 0.55}
    once, probs_once = _clustered(k=1)
    thrice, probs_thrice = _clustered(k=3)
    units_once = metrics.level_units(once, probs_once, subjects_known=True)
    units_thrice = metrics.level_units(thrice, probs_thrice, subjects_known=True)
    assert len(units_thrice["slice"].labels) == 3 * len(units_once["slice"].labels)
    a = BINARY.bootstrap_intervals(units_once, n_samples=300, seed=7, thresholds=thresholds)
    b = BINARY.bootstrap_intervals(units_thrice, n_samples=300, seed=7, thresholds=thresholds)
    for level in ("slice", "scan", "subject"):
        for name in BINARY.metric_names("interval"):
            np.testing.assert_allclose(a[level][name], b[level][name], rtol=1e-12, atol=1e-12)
    assert a["slice"]["accuracy"][1] - a["slice"]["accuracy"][0] > 0.05

    def slice_bootstrap(units):  # every row its own resampling unit
        u = units["slice"]
        rows = metrics.Units(u.keys, u.labels, u.probs, np.asarray(u.keys, object))
        interval = BINARY.bootstrap_intervals({"slice": rows}, 300, 7, thresholds)
        return interval["slice"]["accuracy"][1] - interval["slice"]["accuracy"][0]

    assert slice_bootstrap(units_thrice) < 0.75 * slice_bootstrap(units_once)
    # And resampling slices is narrower than resampling subjects on the same rows.
    assert slice_bootstrap(units_once) < a["slice"]["accuracy"][1] - a["slice"]["accuracy"][0]


def test_bootstrap_interval_holds_the_point_estimate_and_is_reproducible():
    records, probs = _clustered()
    units = metrics.level_units(records, probs, subjects_known=True)
    thresholds = {"slice": 0.5, "scan": 0.5, "subject": 0.5}
    first = BINARY.bootstrap_intervals(units, 200, seed=1, thresholds=thresholds)
    assert first == BINARY.bootstrap_intervals(units, 200, seed=1, thresholds=thresholds)
    for level, u in units.items():
        m = metrics.classification_metrics(u.labels, u.probs)
        for name in ("accuracy", "roc_auc", "sensitivity"):
            lo, hi = first[level][name]
            assert lo <= m[name] <= hi, (level, name)
