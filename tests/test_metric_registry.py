"""The metric registry is the one list of metric names: no list of them is written anywhere
else in the code, every metric a report, a validation or a comparison computes is registered,
and registering a metric is all it takes for the comparison and the intervals to compute it."""

import ast
from pathlib import Path

import numpy as np
import pytest

from alz_jax.evaluation import compare_stats, metric_registry, metrics, tasks
from alz_jax.evaluation import multiclass as mc
from alz_jax.run import progress

PACKAGE = Path(__file__).resolve().parents[1] / "alz_jax"
SCALAR_NAMES = {
    f"{metric_registry.level_prefix(level)}{name}"
    for name in metric_registry.METRICS
    for level in metric_registry.LEVELS
}


def _hand_lists(path: Path) -> list[str]:
    """Literal tuples, lists and sets of strings in `path` naming two or more metrics."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Tuple | ast.List | ast.Set):
            continue
        strings = [e.value for e in node.elts if isinstance(e, ast.Constant)]
        if len(strings) != len(node.elts) or not all(isinstance(s, str) for s in strings):
            continue
        named = [s for s in strings if s in SCALAR_NAMES]
        if len(set(named)) >= 2:
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {named}")
    return found


def test_no_list_of_metric_names_is_written_outside_the_registry():
    registry_file = Path(metric_registry.__file__).resolve()
    found = [
        entry
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.resolve() != registry_file
        for entry in _hand_lists(path)
    ]
    assert not found, "metric names listed by hand (derive them from metric_registry):\n" + (
        "\n".join(found)
    )


def test_the_check_finds_a_hand_written_list(tmp_path):
    path = PACKAGE / "_probe_for_test.py"
    try:
        path.write_text('NAMES = ("accuracy", "roc_auc")\nOTHER = ("a", "accuracy")\n')
        assert _hand_lists(path) == ["alz_jax/_probe_for_test.py:1 ['accuracy', 'roc_auc']"]
    finally:
        path.unlink()


def _units(k: int, n: int = 60):
    rng = np.random.default_rng(k)
    labels = np.arange(n) % k
    if k == 2:
        probs = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.2, n), 0.01, 0.99)
    else:
        probs = mc.softmax(2.0 * np.eye(k)[labels] + rng.normal(size=(n, k)))
    records = {"label": labels, "scan_id": np.arange(n) // 2, "subject_id": np.arange(n) // 4,
               "file_name": np.arange(n)}  # fmt: skip
    return records, probs


@pytest.mark.parametrize("k", [2, 4])
def test_every_metric_computed_is_registered(k):
    task = tasks.for_classes(k)
    records, probs = _units(k)
    outputs = np.log(probs) - np.log1p(-probs) if k == 2 else np.log(probs)
    level = task.multilevel_metrics(records, probs, subjects_known=True)["slice"]
    scalars = {name for name, v in level.items() if isinstance(v, float) and name != "threshold"}
    assert scalars <= set(metric_registry.METRICS), scalars - set(metric_registry.METRICS)
    validation = set(task.validation_metrics(records, outputs))
    assert validation <= SCALAR_NAMES, validation - SCALAR_NAMES
    # Every role's metrics are computed by the task's formulas, and the report's intervals
    # cover exactly the registry's "interval" metrics.
    units = metrics.level_units(records, probs, subjects_known=True)
    for role in ("interval", "compare"):
        scores = task.weighted_scores(units["slice"], np.ones((1, len(probs))), role)
        assert tuple(scores) == task.metric_names(role)
        # The point value of each confusion metric equals the report's.
        for name, value in scores.items():
            if name in level and level[name] is not None:
                assert value[0] == pytest.approx(level[name], abs=1e-12), name
    intervals = task.bootstrap_intervals(units, n_samples=20, seed=0)
    assert tuple(intervals["scan"]) == task.metric_names("interval")


def test_selection_hparams_and_directions_come_from_the_registry():
    choices = metric_registry.best_metric_choices()
    assert "validation/loss" in choices and "validation/scan_accuracy" in choices
    assert metric_registry.best_mode("validation/loss") == "min"
    assert metric_registry.best_mode("validation/scan_accuracy") == "max"
    # A checkpoint can be chosen on each choice by some task's validation scalars.
    records, probs = _units(2)
    computed = set(tasks.BinaryTask(2).validation_metrics(records, np.log(probs / (1 - probs))))
    records, probs = _units(4)
    computed |= set(tasks.MulticlassTask(4).validation_metrics(records, np.log(probs)))
    computed |= set(tasks.OrdinalTask(4).validation_metrics(records, np.log(probs)))
    assert {c.removeprefix("validation/") for c in choices} <= computed
    assert metric_registry.hparam_metrics() == progress.HPARAM_METRICS
    assert {tag for _, tag in progress.HPARAM_METRICS} <= SCALAR_NAMES


def test_a_registered_metric_is_compared_and_bootstrapped_without_other_changes():
    def error_rate(counts):
        return 1.0 - counts.binary_rates["accuracy"]

    metric = metric_registry.Metric(
        "error_rate", "error rate", False,
        {metric_registry.BINARY: frozenset({"compare", "interval"})},
        {metric_registry.BINARY: error_rate},
    )  # fmt: skip
    metric_registry.register(metric)
    try:
        records, probs = _units(2)
        p = compare_stats.Predictions(records, probs, subjects_known=True)
        assert p.metric_names[-1] == "error_rate"
        result = compare_stats.model_metrics(p, n_samples=50, seed=0)
        for level, m in result.items():
            assert m["error_rate"]["value"] == pytest.approx(1.0 - m["accuracy"]["value"])
            lo, hi = m["error_rate"]["ci95"]
            assert lo <= m["error_rate"]["value"] <= hi, level
        diff = compare_stats.paired_differences(p, p, n_samples=20, seed=0)
        assert diff["slice"]["error_rate"]["higher_is_better"] is False
        units = metrics.level_units(records, probs, subjects_known=True)
        intervals = tasks.BinaryTask(2).bootstrap_intervals(units, n_samples=20, seed=0)
        assert "error_rate" in intervals["subject"]
    finally:
        del metric_registry.METRICS["error_rate"]


def test_each_role_keeps_the_order_its_tables_had():
    """The registry's order is the tables' order: these are the lists written by hand before
    the registry (reports, comparison, cross-validation, TensorBoard), pinned."""
    binary, k_class = tasks.BinaryTask(2), tasks.MulticlassTask(4)
    # NPV (issue 25) is the one addition: beside PPV, in the report's tables only.
    assert binary.metric_names("interval") == (
        "accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "npv",
        "f1_ad", "macro_f1", "roc_auc", "pr_auc",
    )  # fmt: skip
    # Unordered classes report no ordinal metric (issue 28); ordered stages add them.
    ordinal = tasks.OrdinalTask(4)
    assert k_class.metric_names("interval") == (
        "accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "roc_auc_ovr_macro",
    )  # fmt: skip
    assert ordinal.metric_names("interval") == (
        *k_class.metric_names("interval"), "quadratic_kappa", "linear_kappa", "mae", "within_one",
    )  # fmt: skip
    # The prediction sets' coverage and size follow in every comparison (issue 28).
    assert binary.metric_names("compare") == (
        "accuracy", "balanced_accuracy", "roc_auc", "ece", "coverage", "set_size",
    )  # fmt: skip
    assert k_class.metric_names("compare") == (
        "accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr_macro", "ece", "coverage",
        "set_size",
    )  # fmt: skip
    assert ordinal.metric_names("compare") == (
        "accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr_macro", "quadratic_kappa",
        "linear_kappa", "mae", "within_one", "ece", "coverage", "set_size",
    )  # fmt: skip
    assert binary.metric_names("cv") == (
        "accuracy", "balanced_accuracy", "sensitivity", "specificity", "macro_f1", "roc_auc",
        "pr_auc",
    )  # fmt: skip
    assert metric_registry.hparam_metrics() == (
        ("validation", "loss"), ("validation", "accuracy"), ("validation", "scan_accuracy"),
        ("validation", "roc_auc"), ("test", "accuracy"), ("test", "balanced_accuracy"),
        ("test", "scan_accuracy"), ("test", "subject_accuracy"), ("test", "roc_auc"),
        ("test", "scan_roc_auc"),
    )  # fmt: skip
    assert metric_registry.progress_columns() == (
        ("loss", "loss"), ("accuracy", "acc"), ("scan_accuracy", "scan acc"), ("roc_auc", "AUC"),
    )  # fmt: skip
