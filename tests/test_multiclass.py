"""K-class evaluation (dementia stages): metrics against scikit-learn, aggregation to scans and
subjects, the weighted bootstrap, calibration, the report's text and the predictions CSV."""

import numpy as np
import pytest
from sklearn import metrics as skm

from alz_jax.evaluation import metrics, task_reports, tasks
from alz_jax.evaluation import multiclass as mc
from alz_jax.evaluation import multiclass_reports as mr
from alz_jax.evaluation.settings import EvalSettings

K4 = tasks.MulticlassTask(4)

STAGES = ("NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented")
EXACT = {"abs": 1e-9, "rel": 0}


def _records(rng, k: int, n_subjects: int = 40, signal: float = 1.5) -> tuple[dict, np.ndarray]:
    """Subjects with 1-3 scans of 5 slices each, one stage per subject (the first subject's
    second visit a stage later), and logits that lean towards the true stage."""
    file_names, scans, subjects, labels = [], [], [], []
    for s in range(n_subjects):
        stage = int(rng.integers(0, k))
        for v in range(int(rng.integers(1, 4))):
            label = min(stage + 1, k - 1) if (s == 0 and v == 1) else stage
            for i in range(5):
                file_names.append(f"s{s}_v{v}_{i}.png")
                scans.append(f"scan{s}_{v}")
                subjects.append(f"subj{s}")
                labels.append(label)
    labels = np.array(labels)
    logits = rng.normal(size=(len(labels), k)) + signal * np.eye(k)[labels]
    records = {
        "file_name": np.array(file_names, object),
        "scan_id": np.array(scans, object),
        "subject_id": np.array(subjects, object),
        "label": labels,
    }
    return records, logits


def _predictions(case: str):
    """(labels, probs, K) for a case: 4 or 3 classes with all present, or 4 with class 1 absent
    from the labels (but predicted), or absent from labels and predictions."""
    rng = np.random.default_rng({"k4": 0, "k3": 1, "absent": 2, "unseen": 3}[case])
    k = 3 if case == "k3" else 4
    n = 500
    labels = rng.integers(0, k, n)
    if case in ("absent", "unseen"):
        labels[labels == 1] = 2
    logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[labels]
    if case == "unseen":
        logits[:, 1] -= 10.0  # class 1 is never the argmax either
    probs = mc.softmax(logits)
    probs[:10] = 1.0 / k  # argmax ties (to class 0) and ranking ties
    probs[10:20] = probs[20]
    return labels, probs, k


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("case", ["k4", "k3", "absent", "unseen"])
def test_classification_metrics_match_sklearn(case):
    labels, probs, k = _predictions(case)
    m = mc.classification_metrics(labels, probs, STAGES[:k])
    predicted = np.argmax(probs, axis=1)
    if case == "unseen":
        assert 1 not in set(predicted) | set(labels)
    assert m["n"] == len(labels)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted), **EXACT)
    assert m["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(labels, predicted), **EXACT
    )
    for average in ("macro", "weighted"):
        expected = skm.f1_score(labels, predicted, average=average, zero_division=0)
        assert m[f"{average}_f1"] == pytest.approx(expected, **EXACT)
    # Kappa's quadratic weights are by stage index, so an absent stage keeps its distance.
    kappa = skm.cohen_kappa_score(labels, predicted, weights="quadratic", labels=list(range(k)))
    assert m["quadratic_kappa"] == pytest.approx(kappa, **EXACT)
    confusion = skm.confusion_matrix(labels, predicted, labels=list(range(k)))
    assert m["confusion_matrix"]["counts"] == confusion.tolist()
    assert m["confusion_matrix"]["rows_true_cols_predicted"] == list(STAGES[:k])
    p, r, f, s = skm.precision_recall_fscore_support(
        labels, predicted, labels=list(range(k)), zero_division=0
    )
    for c, name in enumerate(STAGES[:k]):
        got = m["per_class"][name]
        assert got["precision"] == pytest.approx(p[c], **EXACT)
        assert got["recall"] == pytest.approx(r[c], **EXACT)
        assert got["f1"] == pytest.approx(f[c], **EXACT)
        assert got["support"] == s[c]
        if s[c]:
            auc = skm.roc_auc_score(labels == c, probs[:, c])
            assert got["roc_auc_ovr"] == pytest.approx(auc, **EXACT)
        else:
            assert got["roc_auc_ovr"] is None
    if case in ("k4", "k3"):
        auc = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
        assert m["roc_auc_ovr_macro"] == pytest.approx(auc, **EXACT)
    else:
        assert m["roc_auc_ovr_macro"] is None
        with pytest.raises(ValueError):  # scikit-learn refuses too
            skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")


def test_softmax_and_nll_match_sklearn():
    labels, probs, k = _predictions("k4")
    logits = np.log(probs) + 3.0  # softmax is shift-invariant
    np.testing.assert_allclose(mc.softmax(logits), probs, rtol=0, atol=1e-12)
    assert mc.nll(labels, probs) == pytest.approx(
        skm.log_loss(labels, probs, labels=list(range(k))), **EXACT
    )


def test_top_label_ece_equals_a_direct_loop():
    labels, probs, _ = _predictions("k4")
    # Confidences on bin edges (0.5 and 1.0 are exact): bins are (lo, hi].
    probs[30:40] = np.array([0.5, 1 / 6, 1 / 6, 1 / 6])
    probs[40:45] = np.array([0.0, 0.0, 1.0, 0.0])
    n_bins = 10
    bins = mc.reliability_bins(labels, probs, n_bins)
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    ece, counts = 0.0, []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (confidence > lo) & (confidence <= hi)
        counts.append(int(inside.sum()))
        if inside.any():
            ece += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    assert bins["count"] == counts
    assert bins["ece"] == pytest.approx(ece / len(labels), **EXACT)
    assert mc.classification_metrics(labels, probs)["ece"] == pytest.approx(bins["ece"], **EXACT)


def test_level_units_are_means_of_slices_then_scans():
    rng = np.random.default_rng(4)
    records, logits = _records(rng, 4, n_subjects=12)
    probs = mc.softmax(logits)
    units = metrics.level_units(records, probs, subjects_known=True)
    np.testing.assert_array_equal(units["slice"].probs, probs)
    scan_ids = records["scan_id"]
    scan_means = {}
    for scan in sorted(set(scan_ids)):
        scan_means[scan] = probs[scan_ids == scan].mean(axis=0)
        i = units["scan"].keys.index((scan, int(records["label"][scan_ids == scan][0])))
        np.testing.assert_allclose(units["scan"].probs[i], scan_means[scan], rtol=0, atol=1e-12)
    assert len(units["scan"].keys) == len(scan_means)
    # Subject 0 changed stage between visits: one unit per (subject, stage).
    expected = {}
    for scan, label, subject in zip(scan_ids, records["label"], records["subject_id"], strict=True):
        expected.setdefault((subject, int(label)), {})[scan] = scan_means[scan]
    assert sorted(units["subject"].keys) == sorted(expected)
    assert sum(key[0] == "subj0" for key in units["subject"].keys) == 2
    for i, key in enumerate(units["subject"].keys):
        direct = np.mean(list(expected[key].values()), axis=0)
        np.testing.assert_allclose(units["subject"].probs[i], direct, rtol=0, atol=1e-12)
        assert units["subject"].labels[i] == key[1]
    assert "subject" not in metrics.level_units(records, probs, subjects_known=False)
    # The same units, in the same order, as the binary path's; class 1's column its scalar mean.
    binary = metrics.level_units(records, probs[:, 1], subjects_known=True)
    for level, u in units.items():
        assert u.keys == binary[level].keys, level
        np.testing.assert_array_equal(u.labels, binary[level].labels)
        np.testing.assert_array_equal(u.subjects, binary[level].subjects)
        np.testing.assert_allclose(u.probs[:, 1], binary[level].probs, rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_weighted_resample_equals_duplicated_rows():
    labels, probs, _ = _predictions("k4")
    units = metrics.level_units(
        {"label": labels, "scan_id": np.arange(len(labels)), "subject_id": np.arange(len(labels))},
        probs, subjects_known=False,
    )  # fmt: skip
    u = units["slice"]
    ones = K4.weighted_scores(u, np.ones((1, len(labels))))
    point = mc.classification_metrics(labels, probs)
    for name in K4.metric_names("interval"):
        assert ones[name][0] == pytest.approx(point[name], **EXACT), name
    weights = np.random.default_rng(5).integers(0, 4, len(labels))
    weighted = K4.weighted_scores(u, weights[None].astype(float))
    repeated = np.repeat(np.arange(len(labels)), weights)
    direct = mc.classification_metrics(labels[repeated], probs[repeated])
    for name in K4.metric_names("interval"):
        assert weighted[name][0] == pytest.approx(direct[name], **EXACT), name
    # A resample without class 3: no macro AUC (left out of the interval), balanced accuracy
    # over the classes drawn.
    without = (labels != 3).astype(float)
    scores = K4.weighted_scores(u, without[None])
    assert np.isnan(scores["roc_auc_ovr_macro"][0])
    kept = labels != 3
    expected = skm.balanced_accuracy_score(labels[kept], probs[kept].argmax(1))
    assert scores["balanced_accuracy"][0] == pytest.approx(expected, **EXACT)


def test_bootstrap_intervals_contain_the_point_estimates():
    rng = np.random.default_rng(6)
    records, logits = _records(rng, 4, n_subjects=60)
    probs = mc.softmax(logits)
    units = metrics.level_units(records, probs, subjects_known=True)
    intervals = K4.bootstrap_intervals(units, n_samples=200, seed=1, chunk=64)
    point = mc.multilevel_metrics(records, probs, True, STAGES)
    for level in ("slice", "scan", "subject"):
        for name in K4.metric_names("interval"):
            lo, hi = intervals[level][name]
            assert lo < point[level][name] < hi, (level, name)
            assert hi - lo < 0.5, (level, name)
    # Same seed, same intervals; another seed, other resamples.
    assert K4.bootstrap_intervals(units, n_samples=200, seed=1, chunk=50) == intervals
    assert K4.bootstrap_intervals(units, n_samples=200, seed=2) != intervals


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(7)
    n, k, temperature = 20000, 4, 2.5
    logits = 3.0 * rng.normal(size=(n, k))
    p = mc.softmax(logits / temperature)
    labels = (p.cumsum(1) < rng.uniform(size=(n, 1))).sum(1)
    fit = mc.fit_temperature(labels, logits)
    assert fit["temperature"] == pytest.approx(temperature, rel=0.05)
    assert fit["nll_after"] < fit["nll_before"]
    assert fit["nll_before"] == pytest.approx(mc.nll(labels, mc.softmax(logits)), **EXACT)
    assert not fit["at_bound"]
    # Separated data drive T to its lower bound.
    separated = mc.fit_temperature(np.arange(4), 5.0 * np.eye(4))
    assert separated["at_bound"] and separated["temperature"] < 0.06


def test_fit_temperature_with_two_classes_is_the_binary_fit():
    rng = np.random.default_rng(12)
    for scale in (0.5, 3.0, 40.0):
        logits = scale * rng.normal(size=(60, 2))
        labels = rng.integers(0, 2, 60)
        ours = mc.fit_temperature(labels, logits)
        binary = metrics.fit_temperature(labels, logits[:, 1] - logits[:, 0])
        assert ours["temperature"] == pytest.approx(binary["temperature"], rel=1e-6)
        assert ours["nll_after"] == pytest.approx(binary["nll_after"], rel=1e-9)
        assert ours["at_bound"] == binary["at_bound"]


def test_validation_metrics_keys_and_values():
    rng = np.random.default_rng(8)
    records, logits = _records(rng, 4, n_subjects=30)
    out = K4.validation_metrics(records, logits)
    keys = ("loss", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc",
            "scan_accuracy", "scan_balanced_accuracy", "scan_macro_f1", "ece")  # fmt: skip
    for key in keys:
        assert isinstance(out[key], float), key
    # Unordered classes: no ordinal scalar; ordered stages (argmax decision) add them.
    assert "quadratic_kappa" not in out and "mae" not in out
    ordinal = tasks.OrdinalTask(4).validation_metrics(records, logits)
    assert {k: ordinal[k] for k in out} == out
    assert ordinal["quadratic_kappa"] == pytest.approx(
        skm.cohen_kappa_score(records["label"], logits.argmax(1), weights="quadratic"), **EXACT
    )
    labels, predicted = records["label"], logits.argmax(1)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted), **EXACT)
    assert out["roc_auc"] == pytest.approx(
        skm.roc_auc_score(labels, mc.softmax(logits), multi_class="ovr"), **EXACT
    )
    assert out["loss"] == pytest.approx(skm.log_loss(labels, mc.softmax(logits)), **EXACT)


def _report(share: float | None, split: str = "test", tta: bool = False):
    rng = np.random.default_rng(9)
    records, logits = _records(rng, 4, n_subjects=24)
    val_records, val_logits = _records(np.random.default_rng(10), 4, n_subjects=24)
    settings = EvalSettings(bootstrap_samples=40, temperature_scaling=True)
    calibration = K4.calibrate(val_records, {"plain": val_logits}, settings, subjects_known=True)
    metadata = {"subject_source": "subject_id", "subject_coverage": 1.0, "protocol": "folders",
                "test_subjects_also_in_train": 0,
                "class_distribution": {"train": dict.fromkeys(STAGES, 7),
                                       "test": dict.fromkeys(STAGES, 3)}}  # fmt: skip
    if share is not None:
        metadata["cross_split_near_duplicates"] = {
            "test_images": 200, "test_images_with_train_match": int(200 * share), "share": share,
            "threshold": 0.95, "method": "dhash",
        }  # fmt: skip
    views = {"plain": logits, **({"hflip": logits + 0.1} if tta else {})}
    report, units = mr.build_report(split, records, views, metadata, 100,
                                    {"plain": calibration}, settings, STAGES)  # fmt: skip
    return report, units, records, logits, calibration


@pytest.mark.parametrize("share", [None, 0.02, 0.35])
def test_report_warns_of_shared_brains_only_when_the_share_is_high(share):
    report, _, records, logits, calibration = _report(share)
    table = mr.format_report(report)
    markdown = mr.format_markdown(report, {"confusion": "confusion_test.png"})
    warned = share is not None and share >= mr.LEAK_WARNING_SHARE
    assert (mr.LEAK_WARNING in table) == warned
    assert (mr.LEAK_WARNING in markdown) == warned
    if warned:
        assert "70 of 200 test images" in table
    assert max(len(line) for line in table.splitlines()) < 200
    if share is not None:
        assert report["cross_split_near_duplicates"]["share"] == share
        assert "## Leakage between splits" in markdown
    # The numbers are those of the probabilities at the validation temperature.
    probs = mc.softmax(logits / calibration["temperature"])
    assert report["slice"]["accuracy"] == pytest.approx(
        skm.accuracy_score(records["label"], probs.argmax(1)), **EXACT
    )
    assert report["loss"] == pytest.approx(mc.nll(records["label"], probs), **EXACT)
    assert report["class_distribution"] == {
        n: int((records["label"] == c).sum()) for c, n in enumerate(STAGES)
    }
    assert report["class_distribution_by_split"]["train"][STAGES[0]] == 7
    # Class names head the confusion matrix, in the table and the Markdown.
    assert "| true \\ predicted | " + " | ".join(STAGES) + " |" in markdown
    assert all(name in table for name in STAGES)
    assert "![confusion](confusion_test.png)" in markdown


def test_report_levels_intervals_and_tta():
    report, units, _, _, calibration = _report(None, tta=True)
    assert report["num_classes"] == 4 and report["class_names"] == list(STAGES)
    assert report["calibration"] is calibration and calibration["temperature_applied"]
    for level in ("slice", "scan", "subject"):
        r = report[level]
        assert set(r["ci95"]) == set(K4.metric_names("interval"))
        assert r["n_subjects"] == len(set(units[level].subjects))
        assert {"ece", "ece_uncalibrated", "ece_temperature_scaled"} <= set(r["calibration"])
        assert report["tta"][level]["n"] == r["n"]
    assert report["test_subjects_also_in_train"] == 0
    assert "tta" in mr.format_report(report)
    assert "## Test-time augmentation: plain + hflip" in mr.format_markdown(report, {})
    validation, *_ = _report(None, split="validation")
    assert "test_subjects_also_in_train" not in validation
    assert "fitted on this same split" in mr.format_report(validation)


def test_predictions_round_trip(tmp_path):
    rng = np.random.default_rng(11)
    records, logits = _records(rng, 4, n_subjects=6)
    records["file_name"][0] = "=HYPERLINK(x).png"  # quoted on write, unquoted on read
    probs = mc.softmax(logits)
    path = tmp_path / "predictions_test.csv"
    K4.write_predictions(records, probs, logits, STAGES, path, probs_tta=probs[::-1])
    header = path.read_text().splitlines()[0].split(",")
    assert header == K4.prediction_columns(STAGES, tta=True)
    back, back_probs = K4.read_predictions(path, STAGES)
    np.testing.assert_allclose(back_probs, probs, rtol=0, atol=1e-6)
    for key in ("file_name", "scan_id", "subject_id", "label"):
        assert back[key].tolist() == records[key].tolist(), key


def test_multiclass_figures_show_every_level_and_cell():
    from alz_jax.evaluation import figures

    report, units, *_ = _report(None)
    rendered = figures.multiclass_figures(report, units)
    assert set(rendered) == {"confusion", "reliability"}
    axes = rendered["confusion"].axes
    assert [ax.get_title() for ax in axes] == ["slice", "scan", "subject"]
    cells = [t.get_text() for t in axes[2].texts if "\n" in t.get_text()]
    counts = report["subject"]["confusion_matrix"]["counts"]
    assert sorted(int(c.split("\n")[0]) for c in cells) == sorted(np.ravel(counts).tolist())
    whole = ["NonDemented", "VeryMild\nDemented", "MildDemented", "Moderate\nDemented"]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == whole


def test_k_class_calibration_fits_the_plain_view_and_lists_every_view():
    records, logits = _records(np.random.default_rng(12), 4, n_subjects=12)
    settings = EvalSettings(tta=("hflip",))
    views = {"plain": logits, "hflip": logits + 1.0}
    calibration = task_reports.calibrate(K4, records, views, settings, subjects_known=True)
    assert set(calibration) == {"plain"} and calibration["plain"]["views"] == ["plain", "hflip"]
    plain_only = K4.calibrate(records, {"plain": logits}, settings, subjects_known=True)
    assert calibration["plain"]["temperature_fit"] == plain_only["temperature_fit"]
