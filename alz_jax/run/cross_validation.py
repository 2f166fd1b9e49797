"""k-fold cross-validation by subject: every fold trained and tested, then one aggregate report
(the library of `python -m alz_jax.cross_validate`).

Runs folds 0..k-1 of the `kfold` protocol one after another in DIR/fold_<i> (a fold whose
report_test.json exists is done and skipped; an unfinished fold resumes from its checkpoint),
then writes DIR/report_cv.json and prints it: for each level and metric, the mean and standard
deviation (ddof=1) across folds, and the metrics of the pooled out-of-fold test predictions.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import jax
import ml_collections
import numpy as np

from alz_jax.evaluation import metrics, tasks
from alz_jax.host import storage
from alz_jax.run import saved_run, train


def run_folds(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Trains and tests every fold (skipping finished ones), then aggregates; returns the report."""
    workdir = storage.path(workdir)
    num_folds = config.data.num_folds
    fold_reports = []
    for fold in range(num_folds):
        fold_dir = workdir / f"fold_{fold}"
        report_path = fold_dir / "report_test.json"
        if report_path.exists():
            logging.info("Fold %d/%d already done: %s", fold, num_folds, report_path)
            fold_reports.append(json.loads(report_path.read_text()))
            continue
        logging.info("Fold %d/%d: training in %s", fold, num_folds, fold_dir)
        fold_config = copy.deepcopy(config)
        fold_config.data.protocol = "kfold"
        fold_config.data.fold = fold
        result = train.train_and_evaluate(fold_config, str(fold_dir))
        if "preempted_at_step" in result:  # saved; the same command continues this fold
            return {**result, "fold": fold}
        # The returned report, not the file: only process 0 writes it.
        fold_reports.append(json.loads(json.dumps(result)))  # as read back from the file
    if jax.process_index() != 0:  # the pooled metrics read process 0's prediction files
        return {"written_by_process_0": str(workdir / "report_cv.json")}
    report = aggregate(fold_reports, [workdir / f"fold_{i}" for i in range(num_folds)])
    (workdir / "report_cv.json").write_text(json.dumps(report, indent=1))
    return report


def aggregate(fold_reports: list[dict], fold_dirs: list[Path]) -> dict:
    """Mean and std across folds per level and metric, plus pooled out-of-fold metrics."""
    levels = [lv for lv in metrics.LEVELS if all(lv in r for r in fold_reports)]
    class_names = fold_reports[0].get("class_names") or ()
    task = tasks.of_report(fold_reports[0])
    across = {}
    for level in levels:
        across[level] = {}
        for name in task.metric_names("cv"):
            values = [r[level][name] for r in fold_reports]
            if any(v is None for v in values):
                continue
            across[level][name] = {
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "per_fold": values,
            }
    parts = [
        saved_run.read_predictions(d, "test", r)
        for d, r in zip(fold_dirs, fold_reports, strict=True)
    ]
    records = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    probs = np.concatenate([p[1] for p in parts])
    if len(set(records["file_name"])) != len(probs):
        raise RuntimeError("An image was tested in more than one fold: folds are not disjoint.")
    subjects_known = all(r.get("subjects_known", True) for r in fold_reports)
    pooled = task.multilevel_metrics(records, probs, subjects_known, class_names or None)
    return {
        "num_folds": len(fold_reports),
        "across_folds": across,
        "thresholds": task.pooled_decision_text(),
        "pooled_out_of_fold": {"num_images": len(probs), **pooled},
    }  # fmt: skip


def format_cv(report: dict) -> str:
    """A readable table of the cross-validation report."""
    lines = [f"{report['num_folds']}-fold cross-validation by subject"]
    lines.append(f"{'level':<8} {'metric':<18} {'mean':>7} {'std':>7} {'pooled':>7}")
    pooled = report["pooled_out_of_fold"]
    for level, values in report["across_folds"].items():
        for name, v in values.items():
            p = pooled.get(level, {}).get(name)
            p_text = f"{p:>7.3f}" if p is not None else "      -"
            lines.append(f"{level:<8} {name:<18} {v['mean']:>7.3f} {v['std']:>7.3f} {p_text}")
    lines.append(f"Thresholds: {report['thresholds']}.")
    return "\n".join(lines)
