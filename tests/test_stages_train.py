"""Four dementia stages end to end: training with class weights and balanced sampling, the K-class
report (checked against scikit-learn from its own predictions file), predict and the leakage
warning of an image-split collection."""

import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score

from alz_jax.evaluation import task_reports, tasks
from alz_jax.run import exporting, prediction, train
from alz_jax.tfds_builders.mri_slices import synthetic_stages
from tests import tiny_config as tiny_config_file

pytestmark = pytest.mark.slow
STAGES = ["NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented"]


def stages_config(data_dir, layout, **overrides):
    """The tiny test config on a synthetic four-stage set of `layout`."""
    config = tiny_config_file.get_config()
    config.data.manual_dir = None
    config.data.synthetic_seed = 1
    config.data.synthetic_layout = layout
    config.data.synthetic_subjects = 24
    # So few subjects leave a rare stage out of the OASIS layout's validation or test split (by
    # subject); these tests are about training and reports (the check: test_class_set_checks).
    config.data.allow_missing_classes = layout == "oasis"
    config.data.data_dir = str(data_dir)
    config.model.num_classes = 4
    config.optim.class_weights = "balanced"
    config.data.balanced_sampling = True
    tiny_config_file.override(
        config, {**tiny_config_file.TWO_STAGES, "num_train_steps": 4, **overrides}
    )
    return config


def test_oasis_stages_train_and_report_k_classes(tmp_path):
    workdir = tmp_path / "w"
    config = stages_config(tmp_path / "data", "oasis", **{"eval.tta": "hflip"})
    report = train.train_and_evaluate(config, str(workdir))
    assert report["num_classes"] == 4 and report["class_names"] == STAGES
    assert report["subjects_known"] and report["subject_source"] == "file_name"
    # The report's numbers from its own predictions file, by scikit-learn.
    records, probs = tasks.MulticlassTask(4).read_predictions(
        workdir / "predictions_test.csv", STAGES
    )
    labels, predicted = records["label"], np.argmax(probs, axis=1)
    m = report["slice"]
    assert m["n"] == len(labels) == report["num_images"]
    assert np.array_equal(m["confusion_matrix"]["counts"],
                          confusion_matrix(labels, predicted, labels=range(4)))  # fmt: skip
    assert m["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"), abs=1e-6)
    assert m["quadratic_kappa"] == pytest.approx(
        cohen_kappa_score(labels, predicted, labels=range(4), weights="quadratic"), abs=1e-6
    )
    assert set(m["per_class"]) == set(STAGES)
    assert sum(c["support"] for c in m["per_class"].values()) == len(labels)
    assert report["subject"]["n"] == len(set(records["subject_id"]))  # one stage per subject
    assert "tta" in report and set(m["ci95"]) >= {"accuracy", "macro_f1", "quadratic_kappa"}
    distribution = report["class_distribution_by_split"]
    assert sum(distribution["test"].values()) == len(labels)
    # Subject-disjoint: no test brain in train, and the check agrees.
    leak = report["cross_split_near_duplicates"]
    assert leak["share"] <= 0.1 and leak["agreement_with_subject_ids"]["shared_subject_images"] == 0
    text = (workdir / "report_test.md").read_text()
    assert "quadratic" in text.lower() and "| NonDemented |" in text
    assert "Warning: the test folder shares brains" not in task_reports.format_report(report)
    # predict: the same probabilities for the same images (temperature 1: none applied).
    files = [str(records["file_name"][i]) for i in range(3)]
    manual = next((tmp_path / "data").glob("synthetic_oasis_*/manual/Data"))
    result = prediction.run(str(workdir), [str(manual / f) for f in files])
    assert result["class_names"] == STAGES
    for row, i in zip(result["images"], range(3), strict=True):
        got = [row[f"prob_{n}"] for n in STAGES]
        np.testing.assert_allclose(got, probs[i], atol=2e-6)
        assert row["predicted"] == STAGES[int(np.argmax(probs[i]))]
    # Dementia stages are ordinal (data.ordinal=auto); a softmax head calls the most probable.
    assert report["task"] == "ordinal" and report["task_options"]["decision"] == "argmax"
    assert {"mae", "within_one", "linear_kappa"} <= set(m["ci95"])
    assert "the most probable stage" in prediction.format_result(result)
    # Every image's prediction set is a range of stages, from validation's calibration.
    assert all(row["set"] and row["call"] == row["predicted"] for row in result["images"])
    assert set(report["uncertainty"]["levels"]["scan"]["per_class"]) == set(STAGES)
    record = json.loads((workdir / "report_test.json").read_text())
    assert record["num_classes"] == 4
    # export: the stage names, K logits, and no thresholds to apply.
    out = exporting.export(str(workdir), "npz", output=str(tmp_path / "export"),
                           platforms=("cpu",))  # fmt: skip
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["class_names"] == STAGES and metadata["model"]["num_classes"] == 4
    assert "thresholds" not in metadata["calibration"]
    assert metadata["output"].startswith("logits (B, 4)")


def test_an_image_split_collection_gets_the_leakage_warning(tmp_path):
    """The user's parquet collection (manual_dir), divided by image like the hub's: the report
    warns. (The four-class folders' check is in test_stages.py, at the data set.)"""
    workdir = tmp_path / "w"
    config = stages_config(tmp_path / "data", "parquet", num_train_steps=2)
    spec = synthetic_stages.StagesSpec(subjects=24)
    synthetic_stages.generate(tmp_path / "mine", seed=2, spec=spec, layout="parquet")
    config.data.synthetic_seed = None
    config.data.manual_dir = str(tmp_path / "mine")
    report = train.train_and_evaluate(config, str(workdir))
    assert report["class_names"] == STAGES
    leak = report["cross_split_near_duplicates"]
    assert leak["share"] >= 0.9, leak
    warning = "the test folder shares brains with train; test accuracy is not an estimate"
    assert warning in task_reports.format_report(report)
    assert warning in (workdir / "report_test.md").read_text()
    assert not report["subjects_known"] and "subject" not in report
