"""A test report says what it is about (issue 25): the model, config and data folder, whether
the data is the synthetic stand-in, the split sizes per class and the validation size behind
the thresholds, NPV beside PPV, a rule-of-three caveat on zero-width intervals, tables of at
most seven columns, a Grad-CAM explanation, and user strings escaped. Reports are built from
fixed predictions: no training."""

import json
import re

import numpy as np
import pytest

from alz_jax.configs import demo
from alz_jax.core import steps
from alz_jax.data import input_pipeline
from alz_jax.evaluation import bootstrap, metrics, multiclass_reports, reports, task_reports, tasks
from alz_jax.models import registry
from alz_jax.run import saved_run, specs
from tests.test_evaluation import FakeData
from tests.test_multiclass import K4, STAGES, _records

BINARY = tasks.BinaryTask(2)


class LaidOutData(FakeData):
    """FakeData with the data folder and layout a built data set states."""

    def __init__(self, manual_dir, seed: int = 0):
        super().__init__(seed)
        self.manual_dir = manual_dir

    def report_metadata(self):
        return {**super().report_metadata(), "layout": "adni"}


def _evaluate(data, workdir, monkeypatch, about=None, **settings) -> dict:
    def fake_predict(data_, split, predictors, pipeline, batch_size, mesh):
        return {view: data_.splits[split][1] + 0.1 * k for k, view in enumerate(predictors)}

    monkeypatch.setattr(reports, "predict_split_multi", fake_predict)
    monkeypatch.setattr(steps, "make_predict_step", lambda *a, **k: None)
    return task_reports.evaluate_weights(
        BINARY, data=data, model=None, params=None, pixel_stats={},
        pipeline=input_pipeline.PipelineSpec(image_size=32), batch_size=16, mesh=None,
        split="test", step=7, weights="raw", selection=None, workdir=workdir,
        settings=reports.EvalSettings(gradcam_scans=0, bootstrap_samples=200, **settings),
        **({"about": about} if about else {}),
    )  # fmt: skip


def _saved_run(
    workdir, argv: list[str], manual_dir: str | None = None, **start
) -> saved_run.SavedRun:
    config = demo.get_config()
    config.data.manual_dir = manual_dir
    (workdir / "run").mkdir(parents=True)
    (workdir / "run" / "starts.jsonl").write_text(json.dumps({"argv": argv, **start}) + "\n")
    spec = specs.resolve(config)
    return saved_run.SavedRun(str(workdir), config, {}, spec, spec.averages)


def _columns(line: str) -> int:
    """The cells of a Markdown table row (escaped pipes are text)."""
    return len(re.findall(r"(?<!\\)\|", line)) - 1


def _tables_fit(markdown: str) -> None:
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert rows
    widths = [_columns(line) for line in rows]
    assert max(widths) <= 7, [line for line in rows if _columns(line) > 7]


def test_the_about_block_names_model_config_data_and_the_synthetic_stand_in(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "synthetic_x" / "manual"
    saved = _saved_run(
        tmp_path / "run_a", ["main.py", "--config=configs/demo.py:x", "--config.seed=1"]
    )
    data = LaidOutData(folder)
    report = _evaluate(data, tmp_path / "run_a", monkeypatch, about=saved.about(data))
    model = saved.spec.model
    params = registry.count_params(model)
    assert report["about"]["model"]["parameters"] == params
    assert report["about"]["config"] == "demo.py"
    assert report["about"]["data"]["synthetic"] is True
    text = (tmp_path / "run_a" / "report_test.md").read_text()
    lines = text.splitlines()
    assert lines[2] == "## About this run"
    # The block comes first: before any metric.
    assert text.index("## About this run") < text.index("## Metrics")
    size = f"{params / 1e6:.2f} M parameters" if params >= 1e5 else f"{params:,} parameters"
    title = registry.title(model)
    assert f"- Model: {title}" in text and f"{size} (family convnext)." in text
    assert str(tuple(model.dims)) in text and str(tuple(model.depths)) in text
    assert "- Config: demo.py." in text
    seed = saved.spec.data.synthetic_seed
    assert (f"- Data: {folder} (layout adni); **the synthetic stand-in** (data.synthetic_seed "
            f"{seed}, layout adni, difficulty standard)") in text  # fmt: skip
    # A user's folder is not the stand-in; `--config NAME` is read as well as `--config=NAME`.
    other = _saved_run(tmp_path / "run_b", ["main.py", "--config", "/x/my_run.py"], "/data/adni")
    about = other.about(LaidOutData("/data/adni"))
    assert about["config"] == "my_run.py" and about["data"]["synthetic"] is False
    _evaluate(LaidOutData("/data/adni"), tmp_path / "run_b", monkeypatch, about=about)
    text = (tmp_path / "run_b" / "report_test.md").read_text()
    assert "- Data: /data/adni (layout adni); not the synthetic stand-in." in text
    assert "- Config: my_run.py." in text
    # `make demo` names no --config: the start records the default it used.
    demo_run = _saved_run(tmp_path / "run_c", ["demo.py"], config_file="demo.py")
    assert saved_run.config_name(demo_run.workdir) == "demo.py"
    assert saved_run.config_name(tmp_path / "nothing") is None


def test_the_split_sizes_per_class_and_the_validation_size_are_stated(tmp_path, monkeypatch):
    data = FakeData()
    _evaluate(data, tmp_path, monkeypatch)
    text = (tmp_path / "report_test.md").read_text()
    records = data.records("test")
    labels = records["label"]

    def count(key, label=None):
        chosen = labels == label if label is not None else np.ones(len(labels), bool)
        return len(set(np.asarray(records[key])[chosen]))

    subjects = f"{count('subject_id')} subjects (NC {count('subject_id', 0)}, AD " \
               f"{count('subject_id', 1)})"  # fmt: skip
    scans = f"{count('scan_id')} scans (NC {count('scan_id', 0)}, AD {count('scan_id', 1)})"
    images = f"{len(labels)} images (NC {(labels == 0).sum()}, AD {(labels == 1).sum()})"
    assert f"- Test split: {subjects}, {scans}, {images}." in text
    assert subjects == "40 subjects (NC 20, AD 20)"
    val = data.records("validation")
    sizes = (f"{len(set(val['subject_id']))} subjects, {len(set(val['scan_id']))} scans, "
             f"{len(val['label'])} images")  # fmt: skip
    assert f"- Validation split (it chose the thresholds): {sizes}." in text


def _far_threshold_report():
    """Validation of 12 subjects (6 NC, 6 AD; one scan of 2 slices each) where every NC unit
    sits at P(AD) 0.70-0.75 and every AD one at 0.95-0.97: thresholds near 0.85."""
    rng = np.random.default_rng(3)

    def split(n_subjects):
        labels = np.repeat(np.arange(n_subjects) % 2, 2)
        probs = np.where(labels == 1, rng.uniform(0.95, 0.97, len(labels)),
                         rng.uniform(0.70, 0.75, len(labels)))  # fmt: skip
        subjects = np.repeat([f"s{i}" for i in range(n_subjects)], 2).astype(object)
        records = {"file_name": np.array([f"f{i}" for i in range(len(labels))], object),
                   "scan_id": subjects.copy(), "subject_id": subjects, "label": labels}  # fmt: skip
        return records, np.log(probs) - np.log1p(-probs)

    (val, val_margins), (test, margins) = split(12), split(20)
    settings = reports.EvalSettings(bootstrap_samples=50, gradcam_scans=0)
    calibration = task_reports.calibrate(BINARY, val, {"plain": val_margins}, settings, True)
    metadata = {"subject_source": "meta.json", "protocol": "official"}
    report, _ = reports.build_report("test", test, {"plain": margins}, metadata, 3, calibration,
                                     settings)  # fmt: skip
    return report


def test_a_threshold_far_from_one_half_is_noted_with_its_validation_size(tmp_path, monkeypatch):
    report = _far_threshold_report()
    markdown = reports.format_markdown(report, {})
    table = reports.format_report(report)
    for level, noun in (("slice", "24 validation images"), ("scan", "12 validation scans"),
                        ("subject", "12 validation subjects")):  # fmt: skip
        t = report["calibration"]["thresholds"][level]
        assert abs(t - 0.5) > reports.FAR_THRESHOLD
        note = f"the {level} threshold is {t:.3f}, set on {noun}; so far from 0.5"
        assert note in markdown and f"Note: {note}" in table
    assert max(len(line) for line in table.splitlines()) < 200
    # Thresholds near 0.5 get no note.
    near = _evaluate(FakeData(), tmp_path, monkeypatch)
    assert all(abs(t - 0.5) <= 0.2 for t in near["calibration"]["thresholds"].values())
    assert "threshold is" not in (tmp_path / "report_test.md").read_text()
    assert "threshold is" not in reports.format_report(near)


def test_npv_is_tn_over_tn_plus_fn_with_a_subject_bootstrap_interval(tmp_path, monkeypatch):
    data = FakeData()
    report = _evaluate(data, tmp_path, monkeypatch)
    for level in metrics.LEVELS:
        for m in (report[level], report[level]["at_0.5"]):
            (tn, fp), (fn, tp) = m["confusion_matrix"]["counts"]
            assert m["npv"] == pytest.approx(tn / (tn + fn), abs=1e-12)
            assert m["precision"] == pytest.approx(tp / (tp + fp), abs=1e-12)
    # The interval: the same subject resamples as every other metric, NPV computed by hand.
    records, margins = data.splits["test"]
    units = metrics.level_units(records, metrics.sigmoid(margins), True)["subject"]
    threshold = report["subject"]["threshold"]
    subjects, counts = bootstrap.subject_draws({"subject": units}, 200, 0)
    position = {s: i for i, s in enumerate(subjects)}
    w = counts[:, [position[str(s)] for s in units.subjects]].astype(float)
    called_nc = units.probs < threshold
    npv = (w @ (called_nc & (units.labels == 0))) / (w @ called_nc)
    expected = np.percentile(npv[~np.isnan(npv)], [2.5, 97.5])
    np.testing.assert_allclose(report["subject"]["ci95"]["npv"], expected, atol=1e-12)
    text = (tmp_path / "report_test.md").read_text()
    header = next(line for line in text.splitlines() if "NPV" in line and line.startswith("|"))
    assert "| PPV (precision) | NPV |" in header
    lo, hi = report["scan"]["ci95"]["npv"]
    assert f"| {report['scan']['npv']:.3f} [{lo:.3f}, {hi:.3f}] |" in text


def _one_scan_subjects(nc_range: tuple[float, float], ad: float, seed: int, n: int = 8):
    """n AD and n NC subjects of one scan of 3 slices: AD ones at P(AD) `ad`, NC ones spread
    over `nc_range`."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(2 * n):
        label = int(s < n)
        centre = ad if label else rng.uniform(*nc_range)
        rows += [(f"f{s}_{i}", f"scan{s}", f"subj{s}", label, centre) for i in range(3)]
    names, scans, subjects, labels, probs = zip(*rows, strict=True)
    records = {"file_name": np.array(names, object), "scan_id": np.array(scans, object),
               "subject_id": np.array(subjects, object), "label": np.array(labels)}  # fmt: skip
    probs = np.array(probs)
    return records, np.log(probs) - np.log1p(-probs)


def test_a_zero_width_interval_gets_the_rule_of_three_with_its_n():
    # Validation puts the thresholds between 0.6 and 0.9: every test AD subject (0.99) is
    # detected, some test NC ones (up to 0.97) are not.
    val, val_margins = _one_scan_subjects((0.2, 0.6), 0.9, seed=2)
    records, margins = _one_scan_subjects((0.3, 0.97), 0.99, seed=1)
    settings = reports.EvalSettings(bootstrap_samples=100, gradcam_scans=0)
    calibration = task_reports.calibrate(BINARY, val, {"plain": val_margins}, settings, True)
    metadata = {"subject_source": "meta.json", "protocol": "official"}
    report, _ = reports.build_report(
        "test", records, {"plain": margins}, metadata, 3, calibration, settings
    )
    subject = report["subject"]
    assert subject["sensitivity"] == 1.0 and subject["ci95"]["sensitivity"] == [1.0, 1.0]
    entry = next(e for e in report["degenerate_intervals"]
                 if e["level"] == "subject" and e["metric"] == "sensitivity")  # fmt: skip
    assert entry["n"] == 8 and entry["rule_of_three_bound"] == pytest.approx(3 / 8)
    assert entry["thresholds"] == [subject["threshold"], 0.5]
    text = reports.format_markdown(report, {})
    assert (
        f"- sensitivity 1.000 [1.000, 1.000] at subject level, threshold "
        f"{subject['threshold']:.3f} and 0.500: no error among its 8 AD subjects; with n = 8, "
        "the 95% upper bound on the error rate (1 - sensitivity) is 3/8 = 0.375 (rule of three)."
    ) in text
    # At the slice level the same detections count 24 AD images, of 8 subjects: n is 8.
    assert ("no error among its 24 AD images, from 8 subjects; with n = 8 subjects (the "
            "independent unit), the 95% upper bound") in text  # fmt: skip
    # A metric with a real interval gets no caveat.
    assert subject["ci95"]["specificity"][0] < subject["ci95"]["specificity"][1]
    assert not any(e["metric"] == "specificity" for e in report["degenerate_intervals"])


def test_every_table_has_at_most_seven_columns(tmp_path, monkeypatch):
    _evaluate(FakeData(), tmp_path, monkeypatch, tta=("hflip",))
    _tables_fit((tmp_path / "report_test.md").read_text())
    report = _multiclass_report(STAGES, tasks.OrdinalTask(4))
    _tables_fit(multiclass_reports.format_markdown(report, {}))
    # And none lost a metric: every interval metric heads a column somewhere.
    text = multiclass_reports.format_markdown(report, {})
    assert "| macro AUC (OvR) |" in text and "| quadratic kappa |" in text
    assert "| MAE (stages) |" in text and "| within one stage |" in text


def _multiclass_report(names, task=None):
    records, logits = _records(np.random.default_rng(9), 4, n_subjects=24)
    val_records, val_logits = _records(np.random.default_rng(10), 4, n_subjects=24)
    settings = reports.EvalSettings(bootstrap_samples=40)
    calibration = K4.calibrate(val_records, {"plain": val_logits}, settings, subjects_known=True)
    metadata = {"subject_source": "subject_id", "protocol": "folders",
                "class_distribution": {"test": dict.fromkeys(names, 3)}}  # fmt: skip
    report, _ = multiclass_reports.build_report(
        "test",
        records,
        {"plain": logits},
        metadata,
        5,
        {"plain": calibration},
        settings,
        names,
        task=task,
    )
    return report


def test_class_names_and_paths_with_html_or_pipes_are_escaped():
    names = ("<img src=x onerror=alert(1)>", "a|b", "Mild", "Moderate")
    report = _multiclass_report(names)
    report["about"] = {"config": "<b>cfg</b>.py", "data": {"folder": "/d/<script>x</script>",
                                                           "synthetic": False}}  # fmt: skip
    text = multiclass_reports.format_markdown(report, {})
    assert "<img" not in text and "<script>" not in text and "<b>" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "- Config: &lt;b&gt;cfg&lt;/b&gt;.py." in text
    assert "- Data: /d/&lt;script&gt;x&lt;/script&gt;" in text
    # A pipe in a name does not split a table cell: each row has its header's columns.
    assert "a\\|b" in text
    table: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        assert all(_columns(row) == _columns(table[0]) for row in table), table
        table = []
    # The K-class report states its sizes too (the temperature, not thresholds, on validation).
    assert "- Test split: " in text and "(it fitted the temperature)" in text


def test_the_gradcam_figure_is_explained_with_its_colour_scale():
    text = reports.markdown_end(["# r"], [], {"roc": "roc_test.png", "gradcam": "g_test.jpg"})
    lines = [line for line in text.splitlines() if line]
    after = lines[lines.index("![gradcam](g_test.jpg)") + 1]
    assert after.startswith("Grad-CAM: ") and after == reports.GRADCAM_TEXT
    assert "blue (0" in after and "red (1" in after and "scaled to 1 per slice" in after


def test_few_subjects_get_no_bound_and_an_npv_without_nc_calls_is_undefined():
    val, val_margins = _one_scan_subjects((0.2, 0.3), 0.4, seed=2)
    records, margins = _one_scan_subjects((0.5, 0.6), 0.9, seed=1, n=2)  # all called AD
    settings = reports.EvalSettings(bootstrap_samples=50, gradcam_scans=0)
    calibration = task_reports.calibrate(BINARY, val, {"plain": val_margins}, settings, True)
    metadata = {"subject_source": "meta.json", "protocol": "official"}
    report, _ = reports.build_report(
        "test", records, {"plain": margins}, metadata, 3, calibration, settings
    )
    subject = report["subject"]
    assert subject["confusion_matrix"]["counts"] == [[0, 2], [0, 2]]
    assert subject["npv"] is None and subject["ci95"]["npv"] is None
    text = reports.format_markdown(report, {})
    assert (
        f"- sensitivity 1.000 [1.000, 1.000] at subject level, threshold "
        f"{subject['threshold']:.3f} and 0.500: no error among its 2 AD subjects; with n = 2, no "
        "95% bound "
        "below 1 follows (rule of three: 3/n)."
    ) in text
    assert "specificity 0.000 [0.000, 0.000] at subject level" in text
    assert "none right among its 2 NC subjects" in text


def test_an_f1_of_zero_gets_no_bound_and_one_subject_is_singular():
    # Two NC and two AD subjects; only one is called AD, and it is NC: TP 0, so F1 (AD) and
    # precision are 0.
    labels, probs = np.array([0, 0, 1, 1]), np.array([0.1, 0.9, 0.2, 0.3])
    units = {"subject": metrics.Units(list("abcd"), labels, probs, np.array(list("abcd")))}
    m = metrics.classification_metrics(labels, probs)
    assert m["f1_ad"] == m["precision"] == 0.0
    zero = {"f1_ad": [0.0, 0.0], "precision": [0.0, 0.0]}
    report = {"bootstrap": {"resampled_unit": "subject"},
              "subject": {**m, "n_subjects": 4, "ci95": zero}}  # fmt: skip
    entries = {e["metric"]: e for e in reports.degenerate_intervals(report, units)}
    assert set(entries) == {"f1_ad", "precision"}
    assert not entries["f1_ad"]["bounded"] and entries["f1_ad"]["rule_of_three_bound"] is None
    assert reports.caveat_text(entries["f1_ad"]) == (
        "F1 (AD) 0.000 [0.000, 0.000] at subject level, threshold 0.500: every resample of the 4 "
        "subjects gives 0.000; the interval shows no uncertainty, which is not certainty."
    )
    assert entries["precision"]["n"] == 1
    assert "none right among its 1 subject called AD; with n = 1, no 95% bound below 1" in (
        reports.caveat_text(entries["precision"])
    )
