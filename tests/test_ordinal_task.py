"""The ordinal task (issue 28): decision rules, the head's outputs as class log-probabilities, the
task resolved from the data set's classes, the ordinal metrics in reports and their absence for
unordered classes, and the uncertainty section (prediction sets, abstention) of a report, of
`predict`'s rows and of `compare`."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from alz_jax.configs import stages_demo
from alz_jax.evaluation import compare_stats, conformal, metrics, selective, tasks, uncertainty
from alz_jax.evaluation import multiclass_reports as mr
from alz_jax.evaluation.settings import EvalSettings
from alz_jax.host.errors import UserError
from alz_jax.models import heads
from alz_jax.run import prediction, specs
from tests.test_multiclass import STAGES, _records

EXACT = {"abs": 1e-9, "rel": 0}


def test_the_decision_rules_on_hand_worked_probabilities():
    probs = np.array([
        [0.40, 0.05, 0.15, 0.40],  # argmax ties to 0; cumulative 0.40, 0.45, 0.60: median 2
        [0.10, 0.20, 0.30, 0.40],  # expected 2.0; median 2 (0.6 >= 1/2); argmax 3
        [0.50, 0.50, 0.00, 0.00],  # cumulative exactly 1/2 at 0: median 0; expected 0.5 -> 1
    ])  # fmt: skip
    assert tasks.ordinal_decision(probs, "argmax").tolist() == [0, 3, 0]
    assert tasks.ordinal_decision(probs, "median").tolist() == [2, 2, 0]
    assert tasks.ordinal_decision(probs, "expected").tolist() == [2, 2, 1]
    with pytest.raises(UserError, match="ordinal_decision"):
        tasks.ordinal_decision(probs, "mode")
    # auto: the head's own rule.
    assert tasks.OrdinalTask(4, "corn").decision == "median"
    assert tasks.OrdinalTask(4, "softmax").decision == "argmax"
    assert tasks.OrdinalTask(4, "coral", "expected").decide(probs).tolist() == [2, 2, 1]


@pytest.mark.parametrize("head", ["coral", "corn"])
def test_an_ordinal_heads_outputs_are_its_class_log_probabilities(head):
    logits = np.random.default_rng(0).normal(size=(6, 3))
    if head == "coral":  # rank-consistent (ordered biases): P(stage > k) falls with k
        logits = -np.sort(-logits, axis=1)
    logits = jnp.asarray(logits, jnp.float32)
    task = tasks.OrdinalTask(4, head)
    outputs = np.asarray(task.device_outputs(logits))
    assert outputs.shape == (6, 4)
    # What every report reads: softmax of the outputs is the head's class probabilities.
    probs = task.probabilities({"plain": outputs}, 1.0)
    np.testing.assert_allclose(probs, heads.get(head).class_probs(logits), atol=1e-6)
    # The median rule calls what the head itself calls (P(stage > k) > 1/2 counted).
    assert task.decide(probs).tolist() == np.asarray(heads.get(head).predicted(logits)).tolist()


def _spec(**overrides):
    config = stages_demo.get_config()
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return specs.resolve(config)


def test_the_task_is_resolved_from_the_data_sets_classes():
    spec = _spec()  # softmax, data.ordinal = auto
    assert spec.task.kind == "multiclass"
    assert spec.with_classes(STAGES).task == tasks.OrdinalTask(4, "softmax", "argmax")
    others = ("CN", "EMCI", "LMCI", "AD")
    assert spec.with_classes(others).task.kind == "multiclass"
    assert _spec(**{"data.ordinal": "true"}).with_classes(others).task.kind == "ordinal"
    corn = _spec(**{"model.head": "corn"})
    assert corn.task == tasks.OrdinalTask(4, "corn", "median")
    with pytest.raises(UserError, match=r"not all dementia stages.*data.ordinal=true"):
        corn.with_classes(others)
    with pytest.raises(UserError, match=r"model.head = corn is an ordinal head.*ordinal = false"):
        _spec(**{"model.head": "corn", "data.ordinal": "false"})
    with pytest.raises(UserError, match=r"data.ordinal = 'sometimes'"):
        _spec(**{"data.ordinal": "sometimes"})


def _report(task):
    records, logits = _records(np.random.default_rng(9), 4, n_subjects=24)
    val_records, val_logits = _records(np.random.default_rng(10), 4, n_subjects=24)
    settings = EvalSettings(bootstrap_samples=40)
    calibration = task.calibrate(val_records, {"plain": val_logits}, settings, True)
    report, _ = mr.build_report("test", records, {"plain": logits},
                                {"subject_source": "subject_id", "protocol": "folders"}, 5,
                                {"plain": calibration}, settings, STAGES, task=task)  # fmt: skip
    return report, records, logits


def test_an_ordinal_report_has_the_ordinal_metrics_and_an_unordered_one_says_they_do_not_apply():
    report, records, logits = _report(tasks.OrdinalTask(4, "softmax", "expected"))
    probs = tasks.OrdinalTask(4).probabilities({"plain": logits}, 1.0)
    called = tasks.ordinal_decision(probs, "expected")
    labels = records["label"]
    m = report["slice"]
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(labels, called), **EXACT)
    assert m["within_one"] == pytest.approx(np.mean(np.abs(labels - called) <= 1), **EXACT)
    assert m["linear_kappa"] == pytest.approx(
        skm.cohen_kappa_score(labels, called, weights="linear"), **EXACT
    )
    assert m["accuracy"] == pytest.approx(np.mean(labels == called), **EXACT)
    assert {"mae", "within_one", "quadratic_kappa", "linear_kappa"} <= set(m["ci95"])
    text = mr.format_markdown(report, {})
    assert "the expected stage, rounded" in text and "| MAE (stages) |" in text
    assert "diagonal band" in text and "*" in text.split("## Confusion matrices")[1]
    assert "MAE" in mr.format_report(report)

    unordered, _, _ = _report(tasks.MulticlassTask(4))
    assert "mae" not in unordered["slice"]["ci95"]
    assert "ordinal metrics (MAE, within-one accuracy, kappa) do not apply" in mr.format_report(
        unordered
    )
    assert "| MAE (stages) |" not in mr.format_markdown(unordered, {})


def _units(seed: int, n_subjects: int = 60):
    records, logits = _records(np.random.default_rng(seed), 4, n_subjects=n_subjects)
    return records, tasks.OrdinalTask(4).probabilities({"plain": logits}, 1.0)


def test_sets_are_calibrated_on_exchangeable_units_and_reported_with_intervals():
    settings = EvalSettings(bootstrap_samples=50, conformal_alpha=0.2, abstain_rate=0.2)
    task = tasks.OrdinalTask(4)
    val_records, val_probs = _units(1)
    decide = task.level_decide({})
    fitted = uncertainty.calibrate(val_records, val_probs, decide, settings, True, True)
    units = metrics.level_units(val_records, val_probs, True)
    # Slices and scans: one per subject, never a subject's slices or repeat scans as
    # independent calibration points (the fixture's subjects have 1-3 scans).
    n_subjects = len(set(val_records["subject_id"]))
    assert len(units["scan"].labels) > n_subjects
    exchangeable = uncertainty.calibration_units(units, settings.bootstrap_seed)
    assert exchangeable["subject"] is units["subject"]  # subjects as they are
    for level in ("slice", "scan", "subject"):
        u = exchangeable[level]
        assert fitted["levels"][level]["calibration_units"] == len(u.labels)
        if level != "subject":
            assert len(u.labels) == n_subjects
            assert sorted(map(str, u.subjects)) == sorted(set(map(str, val_records["subject_id"])))
        # The quantile is conformal's on this level's exchangeable units.
        expected = conformal.calibrate(u.probs, u.labels, 0.2, "aps", "marginal", True)
        assert fitted["levels"][level]["conformal"] == expected
    for level in ("scan", "subject"):
        u = units[level]
        # The abstention threshold refers exactly floor(0.2 n) of validation's units.
        confidence = selective.confidence(u.probs, decide(level, u.probs))
        referred = selective.refer(confidence, fitted["levels"][level]["abstain_threshold"])
        assert referred.sum() == int(np.floor(0.2 * len(u.labels)))

    records, probs = _units(2)
    section = uncertainty.report(records, probs, decide, fitted, settings, True, STAGES)
    test_units = metrics.level_units(records, probs, True)
    for level, m in section["levels"].items():
        u = test_units[level]
        sets = conformal.prediction_sets(u.probs, fitted["levels"][level]["conformal"])
        covered = sets[np.arange(len(u.labels)), u.labels]
        assert m["coverage"] == pytest.approx(covered.mean(), **EXACT)
        assert m["mean_set_size"] == pytest.approx(sets.sum(1).mean(), **EXACT)
        # Ranges of stages: no gap inside any set.
        for row in sets[sets.any(1)]:
            inside = np.flatnonzero(row)
            assert row[inside[0] : inside[-1] + 1].all()
        for c, name in enumerate(STAGES):
            entry = m["per_class"][name]
            if (u.labels == c).any():
                assert entry["coverage"] == pytest.approx(covered[u.labels == c].mean(), **EXACT)
        lo, hi = m["ci95"]["coverage"]
        assert lo <= m["coverage"] <= hi
        assert [a["rate"] for a in m["abstention"]] == [0.05, 0.1, 0.2]
    text = "\n".join(uncertainty.text_lines(section, STAGES))
    assert "target coverage 80%" in text and "one per subject" in text
    assert all(len(line) < 200 - 52 for line in text.splitlines())
    md = "\n".join(uncertainty.markdown(section, "risk_coverage_test.png"))
    assert "## Prediction sets" in md and "## Selective prediction" in md
    assert "exchangeable" in md and "![risk-coverage](risk_coverage_test.png)" in md


def test_predict_rows_get_their_set_and_refer_the_least_confident():
    settings = EvalSettings(abstain_rate=0.25)
    task = tasks.OrdinalTask(4)
    val_records, val_probs = _units(3)
    fitted = uncertainty.calibrate(val_records, val_probs, task.level_decide({}), settings,
                                   True, True)  # fmt: skip
    probs = np.array([[0.97, 0.01, 0.01, 0.01], [0.3, 0.3, 0.2, 0.2]])
    rows = [{"file": "a.png", "predicted": STAGES[0]}, {"file": "b.png", "predicted": STAGES[0]}]
    level = fitted["levels"]["slice"]
    out = uncertainty.annotate(rows, probs, np.array([0, 0]), level, STAGES, True)
    threshold = level["abstain_threshold"]
    assert out[0]["refer"] is (threshold > 0.97) and out[1]["refer"] is (threshold > 0.3)
    assert out[1]["refer"]  # a 0.3 call is below any threshold this validation gives
    expected = conformal.prediction_sets(probs, level["conformal"])
    assert out[0]["set"] == conformal.format_set(expected[0], list(STAGES), True)


def test_compare_scores_the_sets_coverage_and_size_under_the_bootstrap():
    task = tasks.OrdinalTask(4)
    records, probs = _units(4)
    fits = {}
    for level, u in metrics.level_units(*_units(5), True).items():
        fits[level] = conformal.calibrate(u.probs, u.labels, 0.1, "lac", "class", True)
    p = compare_stats.Predictions(records, probs, True, task=task, conformal=fits)
    table = compare_stats.point_metrics(p)
    for level, u in metrics.level_units(records, probs, True).items():
        sets = conformal.prediction_sets(u.probs, fits[level])
        assert table[level]["coverage"] == pytest.approx(
            sets[np.arange(len(u.labels)), u.labels].mean(), **EXACT
        )
        assert table[level]["set_size"] == pytest.approx(sets.sum(1).mean(), **EXACT)
    # Without a calibration (a report before prediction sets) both are undefined, not zero.
    bare = compare_stats.point_metrics(compare_stats.Predictions(records, probs, True, task=task))
    assert bare["scan"]["coverage"] is None and bare["scan"]["set_size"] is None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("conformal_alpha", 1.5, "in (0, 1)"),
        ("conformal_score", "raps", "one of aps, lac"),
        ("conformal_calibration", "subject", "one of marginal, class"),
        ("abstain_rate", 1.0, "in [0, 1)"),
        ("ordinal_decision", "mode", "one of auto, argmax, median, expected"),
    ],
)
def test_the_uncertainty_settings_are_checked_with_the_config(field, value, expected):
    """A bad setting stops the run when the config is read, before any data work."""
    with pytest.raises(UserError) as raised:
        _spec(**{f"eval.{field}": value})
    assert f"config.eval.{field} = {value!r}: expected {expected}" in str(raised.value)


def test_predict_adds_sets_only_with_a_checkpoint_that_stored_them():
    """`predict` with a checkpoint calibrated before prediction sets existed: its rows come as
    they were (nothing invented); with one that stored them: a set and a call per row."""
    task = tasks.OrdinalTask(4)
    rows = [
        {
            "file": "a.png",
            "predicted": STAGES[1],
            **{f"prob_{n}": p for n, p in zip(STAGES, (0.1, 0.6, 0.2, 0.1), strict=True)},
        }
    ]
    loaded = {"task": task, "class_names": list(STAGES), "calibration": {"temperature": 1.0}}
    assert prediction.with_uncertainty(rows, "slice", loaded) == rows
    settings = EvalSettings(abstain_rate=0.5)
    val_records, val_probs = _units(6)
    loaded["calibration"]["uncertainty"] = uncertainty.calibrate(
        val_records, val_probs, task.level_decide({}), settings, True, True
    )
    (row,) = prediction.with_uncertainty(rows, "slice", loaded)
    level = loaded["calibration"]["uncertainty"]["levels"]["slice"]
    expected = conformal.prediction_sets(np.array([[0.1, 0.6, 0.2, 0.1]]), level["conformal"])
    assert row["set"] == conformal.format_set(expected[0], list(STAGES), True)
    assert row["call"] in ("refer", STAGES[1])
    assert (row["call"] == "refer") is (loaded["calibration"]["uncertainty"]["levels"]["slice"][
        "abstain_threshold"] > 0.6)  # fmt: skip


def test_predict_prints_the_decision_rule_of_the_runs_head():
    """`predict`'s table rebuilds the task with its head and rule: a CORN run's calls are the
    median stage, and its header says so."""
    result = {"checkpoint_step": 3, "weights": "raw", "calibration": {"temperature": 1.0},
              "task": "ordinal", "task_options": {"head": "corn", "decision": "median"},
              "class_names": list(STAGES), "uncertainty": None, "scans": [], "errors": [],
              "images": [{"file": "a.png", "predicted": STAGES[2], "call": STAGES[2],
                          "set": "VeryMildDemented..MildDemented",
                          **{f"prob_{n}": p for n, p in zip(STAGES, (0.3, 0.15, 0.3, 0.25),
                                                            strict=True)}}]}  # fmt: skip
    text = prediction.format_result(result)
    assert "the median stage of NonDemented < VeryMildDemented" in text
    assert "set VeryMildDemented..MildDemented" in text


def test_compare_refuses_an_ordinal_run_beside_an_unordered_one():
    """A stages report made before ordinal tasks reads as multiclass: its metrics differ, so
    `compare` says to evaluate it again instead of dropping the ordinal columns."""
    records, probs = _units(7)
    ordinal = compare_stats.Predictions(records, probs, True, task=tasks.OrdinalTask(4, "corn"))
    old = compare_stats.Predictions(records, probs, True, task=tasks.MulticlassTask(4))
    with pytest.raises(UserError, match=r"corn's task is ordinal, old's multiclass.*again"):
        compare_stats.align([ordinal, old], ["corn", "old"])
