"""Evaluating a trained run on another cohort (`evaluate --data.manual_dir`, run/external.py):
one tiny run trained on the synthetic ADNI stand-in, evaluated on a differently seeded ADNI-like
collection and on a four-stage OASIS-like one whose classes are mapped. The report's subject
figures are recomputed from its predictions CSV; the mapping, the cohort's name and the files
written are checked; report_test.* stays as training wrote it.
"""

import csv
import io
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from alz_jax.evaluation import external_report
from alz_jax.host.errors import UserError
from alz_jax.run import external, train
from alz_jax.tfds_builders.mri_slices import synthetic, synthetic_stages
from tests import tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_synthetic, tmp_path_factory):
    """A 2-step run of the tiny config (2 stages) on the tiny synthetic set, its test report
    written; (workdir, files of report_test.* with their bytes)."""
    root = tmp_path_factory.mktemp("external_run")
    config = tiny_config.two_step_config(tiny_synthetic[0], root / "tfds")
    workdir = root / "workdir"
    train.train_and_evaluate(config, str(workdir))
    before = {p.name: p.read_bytes() for p in workdir.glob("report_test.*")}
    return workdir, before


@pytest.fixture(scope="module")
def adni_cohort(tmp_path_factory):
    """Another ADNI-layout collection, generated with another seed, in a folder whose name
    needs sanitising."""
    root = tmp_path_factory.mktemp("cohorts") / "other cohort+2"
    spec = synthetic.SyntheticSpec(train_subjects=6, test_subjects=4, max_scans_per_subject=2)
    synthetic.generate(root, seed=11, spec=spec)
    return root


@pytest.fixture(scope="module")
def evaluated(trained, adni_cohort):
    workdir, _ = trained
    request = external.Request(str(workdir), {"manual_dir": str(adni_cohort)},
                               bootstrap_samples=60)  # fmt: skip
    return external.evaluate(request)


def _subject_units(csv_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Subjects' labels and P(AD) as the reports aggregate them: a scan is the mean of its
    slices, a subject the mean of its scans (grouped with their label)."""
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    scans = defaultdict(list)
    for r in rows:
        scans[(r["scan_id"], r["subject_id"], int(r["label"]))].append(float(r["prob_ad"]))
    subjects = defaultdict(list)
    for (_, subject, label), probs in scans.items():
        subjects[(subject, label)].append(np.mean(probs))
    keys = sorted(subjects)
    return (np.array([label for _, label in keys]),
            np.array([np.mean(subjects[k]) for k in keys]))  # fmt: skip


def _rank_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC as the share of (AD, NC) pairs ranked right, ties counting half."""
    pos, neg = probs[labels == 1], probs[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_the_files_are_named_by_the_cohort_and_report_test_is_untouched(trained, evaluated):
    workdir, before = trained
    report, paths = evaluated
    name = "other_cohort_2"
    assert report["cohort"]["name"] == name
    assert [p.name for p in paths] == [f"report_external_{name}.json",
                                       f"report_external_{name}.md",
                                       f"predictions_external_{name}.csv"]  # fmt: skip
    assert all(p.is_file() for p in paths)
    assert {p.name: p.read_bytes() for p in workdir.glob("report_test.*")} == before
    saved = json.loads(paths[0].read_text())
    assert list(saved)[:3] == ["split", "cohort", "summary"]
    assert saved["cohort"]["mapping"] == {"NC": "NC", "AD": "AD"}
    assert saved["cohort"]["dropped"]["images"] == 0
    markdown = paths[1].read_text()
    assert markdown.startswith(f"# External evaluation: cohort {name}")
    assert "chosen on the run's own validation split" in markdown
    for line in markdown.splitlines():
        if line.startswith("|"):
            assert line.count("|") - line.count("\\|") - 1 <= 7, line


def test_the_subject_figures_are_recomputed_from_the_predictions_csv(evaluated):
    report, paths = evaluated
    labels, probs = _subject_units(paths[2])
    subject = report["subject"]
    threshold = subject["threshold"]
    called = probs >= threshold
    sensitivity = float(np.mean(called[labels == 1]))
    specificity = float(np.mean(~called[labels == 0]))
    expected = {"sensitivity": sensitivity, "specificity": specificity,
                "balanced_accuracy": (sensitivity + specificity) / 2,
                "roc_auc": _rank_auc(labels, probs)}  # fmt: skip
    assert subject["n"] == len(labels) == report["counts"]["subjects"]
    rows = {r["metric"]: r for r in report["summary"]["rows"]}
    assert report["summary"]["level"] == "subject"
    for name, value in expected.items():
        assert subject[name] == pytest.approx(value, abs=1e-9), name
        assert rows[name]["external"] == pytest.approx(value, abs=1e-9), name
        low, high = rows[name]["external_ci95"]
        assert low - 1e-12 <= rows[name]["external"] <= high + 1e-12, name


def test_the_in_distribution_column_is_report_test_json(trained, evaluated):
    workdir, _ = trained
    report, _ = evaluated
    whole = json.loads((workdir / "report_test.json").read_text())
    reference = whole["subject"]
    for row in report["summary"]["rows"]:
        if row["metric"] == "coverage":  # the prediction sets' (docs/uncertainty.md)
            sets = whole["uncertainty"]["levels"]["subject"]
            assert row["in_distribution"] == sets["coverage"]
            assert row["in_distribution_ci95"] == sets["ci95"]["coverage"]
            ours = report["uncertainty"]["levels"]["subject"]
            assert row["external"] == ours["coverage"]
            continue
        assert row["in_distribution"] == reference[row["metric"]]
        assert row["in_distribution_ci95"] == reference["ci95"][row["metric"]]
    assert report["summary"]["in_distribution_note"] is None
    table = external_report.format_console(report)
    assert "in-distribution test" in table
    assert all(len(line) < 200 for line in table.splitlines())
    alone = external_report.summary(report, None, "runs/x")
    assert alone["in_distribution_note"] == (
        "in-distribution test not evaluated: python -m alz_jax.evaluate --workdir=runs/x"
    )
    assert all(r["in_distribution"] is None for r in alone["rows"])


def test_the_differences_hold_both_cohorts_pixel_statistics(evaluated):
    report, _ = evaluated
    diff = report["differences"]
    for side in ("run_train", "external_test"):
        stats = diff[side]["intensity"]
        assert 0 < stats["images"] <= external.INTENSITY_SAMPLE
        assert stats["p1"] <= stats["mean"] <= stats["p99"]
        assert sum(stats["shapes"].values()) == stats["images"]
    counts = diff["external_test"]["counts"]
    assert counts["images"] == report["num_images"]


def test_a_four_stage_cohort_is_mapped_and_the_dropped_images_counted(trained, tmp_path):
    workdir, _ = trained
    root = tmp_path / "stages"
    spec = synthetic_stages.StagesSpec(subjects=16, slices_per_subject=4)
    synthetic_stages.generate(root, seed=5, spec=spec, layout="oasis")
    stages = ("NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented")
    base = {"workdir": str(workdir), "data": {"manual_dir": str(root)}, "bootstrap_samples": 0}
    with pytest.raises(UserError) as error:
        external.evaluate(external.Request(**base, class_mapping="NonDemented:NC"))
    text = str(error.value)
    assert "\n" not in text and "--class_mapping" in text
    assert "VeryMildDemented, MildDemented, ModerateDemented are not among" in text
    result = subprocess.run(
        [sys.executable, "-m", "alz_jax.evaluate", f"--workdir={workdir}",
         f"--data.manual_dir={root}", "--class_mapping=NonDemented:NC,MildDemented:AD"],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "VeryMildDemented, ModerateDemented are not among" in errors[0]
    assert "--class_mapping" in errors[0]
    assert not list(workdir.glob("report_external_stages*"))
    mapping = "NonDemented:NC,VeryMildDemented:-,MildDemented:AD,ModerateDemented:AD"
    report, paths = external.evaluate(
        external.Request(**base, class_mapping=mapping, cohort="oasis-like")
    )
    assert paths[0].name == "report_external_oasis-like.json"
    found = report["cohort"]["classes_found"]
    assert report["cohort"]["class_names_found"] == list(stages)
    assert report["cohort"]["dropped"]["images"] == found["VeryMildDemented"]["images"] > 0
    assert report["cohort"]["dropped"]["by_class"] == {
        "VeryMildDemented": found["VeryMildDemented"]["images"]
    }
    total = sum(c["images"] for c in found.values())
    assert report["num_images"] == total - found["VeryMildDemented"]["images"]
    rows = list(csv.DictReader(io.StringIO(paths[2].read_text())))
    assert len(rows) == report["num_images"]
    assert sum(int(r["label"]) for r in rows) == (
        found["MildDemented"]["images"] + found["ModerateDemented"]["images"]
    )


def test_class_mapping_and_cohort_names_are_checked():
    assert external.cohort_name("/data/OASIS 1 (disc1)/") == "OASIS_1_disc1"
    assert external.cohort_name("/x/y", "my cohort!") == "my_cohort"
    with pytest.raises(UserError, match="--cohort"):
        external.cohort_name("/x/y", "%%%")
    assert external.parse_class_mapping("CN:NC, MCI:-") == {"CN": "NC", "MCI": "-"}
    with pytest.raises(UserError, match="COHORT_CLASS:RUN_CLASS"):
        external.parse_class_mapping("CN")
    assert external.map_classes(["CN", "MCI", "AD"], ["NC", "AD"], {"CN": "NC", "MCI": "-"}) == [
        0, None, 1,
    ]  # fmt: skip
    with pytest.raises(UserError, match="not a class of the cohort"):
        external.map_classes(["NC", "AD"], ["NC", "AD"], {"CN": "NC"})
    with pytest.raises(UserError, match="not a class of the run"):
        external.map_classes(["NC", "AD"], ["NC", "AD"], {"AD": "Demented"})


def test_the_external_protocol_puts_every_record_in_test_and_training_refuses_it(tmp_path):
    pooled = {"builder_split": np.array(["train", "validation", "test"], object),
              "subject_id": np.array(["a", "b", "c"], object),
              "scan_id": np.array(["1", "2", "3"], object), "label": np.array([0, 1, 0]),
              "slice_index": np.array([1, 2, 3])}  # fmt: skip
    spec = external.dataset.DataSpec(protocol="external")
    positions = external.dataset.slices.assign_protocol(pooled, spec)
    assert [len(positions[s]) for s in ("train", "validation", "test")] == [0, 0, 3]
    config = tiny_config.get_config()
    config.data.protocol = "external"
    with pytest.raises(UserError, match="cannot train"):
        train.train_and_evaluate(config, str(tmp_path / "w"))


def test_the_command_refuses_a_missing_folder_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "alz_jax.evaluate", f"--workdir={tmp_path}",
         f"--data.manual_dir={tmp_path / 'missing'}"],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--data.manual_dir" in errors[0] and "no such folder" in errors[0]


def test_a_workdir_without_checkpoints_is_refused(adni_cohort, tmp_path):
    workdir = tmp_path / "fresh"
    (workdir / "run").mkdir(parents=True)
    (workdir / "run" / "config.json").write_text(tiny_config.get_config().to_json_best_effort())
    (workdir / "run" / "record.json").write_text("{}")
    request = external.Request(str(workdir), {"manual_dir": str(adni_cohort)})
    with pytest.raises(UserError, match="No checkpoints in"):
        external.evaluate(request)
    assert not list(workdir.glob("report_external_*"))


def test_an_auto_slice_window_is_the_runs_own(trained):
    workdir, _ = trained
    saved = external.SavedRun.open(str(workdir))
    assert external.run_slice_range(saved) == saved.spec.data.slice_range == ""
    manifest = workdir / "run" / "split_manifest.json"
    text = manifest.read_text()
    try:
        entry = json.loads(text)
        entry["protocol"]["slice_window"] = [70, 90]
        manifest.write_text(json.dumps(entry))
        auto = external.dataclasses.replace(
            saved, spec=external.dataclasses.replace(
                saved.spec, data=external.dataclasses.replace(saved.spec.data, slice_range="auto")
            ),
        )  # fmt: skip
        assert external.run_slice_range(auto) == "70,90"
    finally:
        manifest.write_text(text)
