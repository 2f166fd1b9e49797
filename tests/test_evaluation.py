"""The evaluation path on fixed predictions: the threshold never looks at test, the report's
files and numbers, settings refusals, Grad-CAM's class sign and the choice of scans."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from alz_jax.core import steps
from alz_jax.data import input_pipeline
from alz_jax.evaluation import metrics, reports, saliency, task_reports, tasks, uncertainty
from alz_jax.host.errors import UserError
from alz_jax.models import convnext
from alz_jax.run import specs
from tests.test_metrics import _clustered


class FakeData:
    """Validation and test records with fixed logit margins, in place of a TFDS data set."""

    class_names = ("NC", "AD")

    def __init__(self, seed: int = 0):
        self.splits = {}
        for split, s in (("validation", seed), ("test", seed + 1)):
            records, probs = _clustered(seed=s)
            records["slice_index"] = np.zeros(len(probs), int)
            self.splits[split] = (records, np.log(probs) - np.log1p(-probs))

    def num_examples(self, split):
        return len(self.splits[split][1])

    def has_split(self, split):
        return split in self.splits

    def records(self, split):
        return dict(self.splits[split][0])

    def report_metadata(self):
        return {"subject_source": "meta_data_with_label.json", "subject_coverage": 1.0,
                "test_subjects_also_in_train": 0, "protocol": {"name": "official"}}  # fmt: skip


def _evaluate(data, tmp_path, monkeypatch, **settings):
    def fake_predict(data_, split, predictors, pipeline, batch_size, mesh):
        # Each test-time view sees slightly different logits, like a flipped image would.
        margins = data_.splits[split][1]
        return {view: margins + 0.1 * k for k, view in enumerate(predictors)}

    monkeypatch.setattr(reports, "predict_split_multi", fake_predict)
    monkeypatch.setattr(steps, "make_predict_step", lambda *a, **k: None)
    return task_reports.evaluate_weights(
        tasks.BinaryTask(2), data=data, model=None, params=None, pixel_stats={},
        pipeline=input_pipeline.PipelineSpec(image_size=32), batch_size=16, mesh=None,
        split="test", step=7, weights="raw", selection=None, workdir=tmp_path,
        settings=reports.EvalSettings(gradcam_scans=0, bootstrap_samples=200, **settings),
    )  # fmt: skip


def test_the_console_table_shows_each_level_and_test_time_augmentation(tmp_path, monkeypatch):
    report = _evaluate(FakeData(), tmp_path, monkeypatch, tta=("hflip",))
    table = task_reports.format_report(report)
    assert "Test-time augmentation (plain + hflip, own thresholds):" in table
    for level in metrics.LEVELS:
        m, tta = report[level], report["tta"][level]
        lo, hi = m["ci95"]["accuracy"]
        assert f"{m['confusion_matrix']['counts']}  [{lo:.3f}, {hi:.3f}]" in table
        assert f"  {level:<6} acc {tta['accuracy']:.3f} [" in table


@pytest.mark.parametrize("threshold", ["youden", "sensitivity:0.95"])
def test_threshold_is_unchanged_when_test_labels_are_permuted(tmp_path, monkeypatch, threshold):
    data = FakeData()
    report = _evaluate(data, tmp_path / "a", monkeypatch, threshold=threshold, tta=("hflip",))
    permuted = FakeData()
    records, _ = permuted.splits["test"]
    records["label"] = np.random.default_rng(0).permutation(records["label"])
    other = _evaluate(permuted, tmp_path / "b", monkeypatch, threshold=threshold,
                      tta=("hflip",))  # fmt: skip
    assert report["calibration"] == other["calibration"]
    assert report["tta"]["thresholds"] == other["tta"]["thresholds"]
    for level in metrics.LEVELS:
        assert report[level]["threshold"] == other[level]["threshold"]
    # The labels did change what was measured: the same thresholds, other accuracies.
    assert report["slice"]["accuracy"] != other["slice"]["accuracy"]
    # And the thresholds are those of the validation predictions alone.
    val_records, val_margins = data.splits["validation"]
    units = metrics.level_units(val_records, metrics.sigmoid(val_margins), True)
    method, target = metrics.parse_threshold_method(threshold)
    for level, u in units.items():
        expected = metrics.choose_threshold(u.labels, u.probs, method, target)["threshold"]
        assert report[level]["threshold"] == expected


def test_report_files_and_numbers(tmp_path, monkeypatch):
    data = FakeData()
    report = _evaluate(data, tmp_path, monkeypatch, temperature_scaling=True)
    saved = json.loads((tmp_path / "report_test.json").read_text())
    assert saved["calibration"]["temperature_applied"]
    temperature = saved["calibration"]["temperature"]
    records, margins = data.splits["test"]
    probs = metrics.sigmoid(margins / temperature)
    # The report's numbers are the metrics of the temperature-scaled test probabilities.
    units = metrics.level_units(records, probs, True)
    for level, u in units.items():
        expected = metrics.classification_metrics(u.labels, u.probs, saved[level]["threshold"])
        assert saved[level]["accuracy"] == pytest.approx(expected["accuracy"])
        assert saved[level]["pr_auc"] == pytest.approx(expected["pr_auc"])
        assert saved[level]["at_0.5"]["threshold"] == 0.5
        assert saved[level]["n_subjects"] == 40
        lo, hi = saved[level]["ci95"]["balanced_accuracy"]
        assert lo <= saved[level]["balanced_accuracy"] <= hi
    scaled = saved["slice"]["calibration"]
    assert scaled["ece"] == scaled["ece_temperature_scaled"] != scaled["ece_uncalibrated"]
    csv_records, csv_probs = tasks.BinaryTask(2).read_predictions(tmp_path / "predictions_test.csv")
    np.testing.assert_allclose(csv_probs, probs, atol=1e-6)
    assert list(csv_records["file_name"]) == list(records["file_name"])
    for name in ("roc", "confusion", "reliability"):
        png = tmp_path / f"{name}_test.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name}_test.png)" in (tmp_path / "report_test.md").read_text()
    table = reports.format_report(report)
    assert f"{saved['scan']['accuracy']:.3f}" in table and "bootstrap over subjects" in table


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("threshold", "youden2", "sensitivity:T"),
        ("tta", "rotate", "hflip, vflip"),
        ("bootstrap_samples", -1, ">= 0"),
        ("calibration_bins", 1, ">= 2"),
    ],
)
def test_bad_eval_settings_are_refused(field, value, message):
    config = ml_collections.ConfigDict({field: value})
    with pytest.raises(UserError, match=message):
        specs.eval_settings(config)


def test_gradcam_explains_the_requested_class():
    spec = convnext.ConvNeXtSpec(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    model = steps.make_model(spec)
    params = convnext.init_params(spec, 0)
    # At 32 px the last stage is 1x1: each map is constant, the channel-weighted sum's sign.
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 1), np.uint8)
    gradcam = saliency.make_gradcam_fn(model, {"mean": 0.3, "std": 0.2})
    cam_ad, margin = gradcam(params, images, np.ones(6, np.float32))
    cam_nc, _ = gradcam(params, images, -np.ones(6, np.float32))
    logits = jax.jit(model.apply)(params, (images / 255.0 - 0.3) / 0.2)
    np.testing.assert_allclose(margin, logits[:, 1] - logits[:, 0], atol=1e-5)
    assert cam_ad.shape == (6, 32, 32)
    # The NC map is the positive part of minus the AD sum: exactly one of them lights up.
    cam_ad, cam_nc = np.asarray(cam_ad), np.asarray(cam_nc)
    np.testing.assert_array_equal(cam_ad * cam_nc, 0.0)
    np.testing.assert_allclose(cam_ad.max(axis=(1, 2)) + cam_nc.max(axis=(1, 2)), 1.0)
    for cam in (cam_ad, cam_nc):
        assert np.all(cam.min(axis=(1, 2)) == cam.max(axis=(1, 2)))


def test_gradcam_scans_cover_each_outcome_most_confident_first():
    units = metrics.Units(
        keys=[(f"s{i}", label) for i, label in enumerate([1, 1, 0, 0, 1, 0])],
        labels=np.array([1, 1, 0, 0, 1, 0]),
        probs=np.array([0.9, 0.7, 0.1, 0.8, 0.2, 0.3]),
        subjects=np.array(list("abcdef"), object),
    )
    # TP: s0 (0.9), s1; TN: s2 (0.1), s5; FN: s4; FP: s3.
    assert saliency.choose_scans(units, 0.5, 5) == [
        ("s0", 1), ("s2", 0), ("s4", 1), ("s3", 0), ("s1", 1)
    ]  # fmt: skip


def test_a_calibration_split_calibrates_the_sets_and_validation_the_abstention(
    tmp_path, monkeypatch
):
    """With a calibration split (data.calibration_fraction), the report's prediction sets are
    calibrated on it and its abstention threshold on validation."""
    data = FakeData()
    records, probs = _clustered(seed=7)
    records["slice_index"] = np.zeros(len(probs), int)
    data.splits["calibration"] = (records, np.log(probs) - np.log1p(-probs))
    report = _evaluate(data, tmp_path, monkeypatch, abstain_rate=0.1)
    section = report["uncertainty"]
    assert section["source"] == "the calibration split"
    task = tasks.BinaryTask(2)
    calibration = report["calibration"]

    def fitted(split):
        found, margins = data.splits[split]
        p = task.probabilities({"plain": margins}, calibration["temperature"])
        settings = reports.EvalSettings(abstain_rate=0.1)
        return uncertainty.calibrate(found, task.class_probs(p), task.level_decide(calibration),
                                     settings, True, False)  # fmt: skip

    held_out, validation = fitted("calibration"), fitted("validation")
    for level, m in section["levels"].items():
        assert m["conformal"] == held_out["levels"][level]["conformal"]
        assert m["referred"]["threshold"] == validation["levels"][level]["abstain_threshold"]
