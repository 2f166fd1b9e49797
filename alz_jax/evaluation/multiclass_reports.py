"""The K-class task's report (dementia stages): the slice/scan/subject report, its console table
and Markdown, and its TensorBoard images.

The K-class counterpart of `reports.py` (the NC/AD task's report). The predicted
class is the most probable one, so validation chooses no threshold; it only fits the
temperature, applied when `EvalSettings.temperature_scaling` is on. Per level the report holds
`multiclass.classification_metrics` with bootstrap-over-subjects intervals and top-label
calibration; optionally test-time augmentation (probabilities averaged over views); and, when
the data set measured them, the test images with a near-duplicate in train (a test folder that
shares brains with train says little about accuracy on new people). Everything here works on
arrays of logits (n, K); `task_reports.evaluate_weights` predicts and writes the files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alz_jax.evaluation import figures, metrics, reports, tasks
from alz_jax.evaluation import multiclass as mc
from alz_jax.evaluation.settings import EvalSettings

REPORT_LEVELS = metrics.LEVELS
LEAK_WARNING_SHARE = reports.LEAK_WARNING_SHARE
LEAK_WARNING = reports.LEAK_WARNING


# ---- The report. ----


def level_results(
    units: dict[str, metrics.Units], settings: EvalSettings, class_names: Sequence[str],
    task: tasks.Task | None = None,
) -> dict:  # fmt: skip
    """Per level: the metrics with bootstrap-over-subjects intervals, the number of subjects,
    and top-label reliability bins; units called by `task`'s decision (K classes: argmax)."""
    task = task or tasks.MulticlassTask(len(class_names))
    intervals = (
        task.bootstrap_intervals(units, settings.bootstrap_samples, settings.bootstrap_seed)
        if settings.bootstrap_samples
        else {level: {} for level in units}
    )
    bins = settings.calibration_bins
    return {
        level: {
            **mc.classification_metrics(
                u.labels, u.probs, class_names, bins, predicted=task.decide(u.probs)
            ),
            "ci95": intervals[level],
            "n_subjects": len(set(u.subjects)),
            "calibration": mc.reliability_bins(u.labels, u.probs, bins),
        }
        for level, u in units.items()
    }


def build_report(
    split: str, records: dict, logits_by_view: dict[str, np.ndarray], data_metadata: dict,
    step: int, calibration: dict, settings: EvalSettings, class_names: Sequence[str],
    task: tasks.Task | None = None,
) -> tuple[dict, dict[str, metrics.Units]]:  # fmt: skip
    """The report of one split and its units (for figures): the plain view's results at the
    validation temperature, test-time augmentation beside them when `logits_by_view` holds more
    views than "plain". `calibration["plain"]` is the task's calibration of the plain view;
    `task` (K unordered classes when not given) decides each unit."""
    plain = calibration["plain"]
    temperature = plain["temperature"]
    logits = np.asarray(logits_by_view["plain"], np.float64)
    names = mc.class_names_or_indices(class_names, logits.shape[1])
    subjects_known = data_metadata.get("subject_source") != "scan_id"
    task = task or tasks.MulticlassTask(len(names))
    probs = task.probabilities({"plain": logits}, temperature)
    units = metrics.level_units(records, probs, subjects_known)
    per_class = np.bincount(np.asarray(records["label"], np.int64), minlength=len(names))
    report = {
        **reports.report_head(split, step, data_metadata, len(probs)),
        "num_classes": len(names),
        "task": task.kind,
        "task_options": task.options(),
        "decision": decision_text(task),
        "class_names": names,
        "class_distribution": {n: int(c) for n, c in zip(names, per_class, strict=True)},
        "counts": metrics.split_counts(records, subjects_known, names),
        "loss": mc.nll(records["label"], probs),
        "calibration": plain,
        "bootstrap": reports.bootstrap_text(settings, subjects_known),
        **level_results(units, settings, names, task),
    }
    reports.add_ece_variants(report, records, logits, task, mc.reliability_bins,
                             settings.calibration_bins)  # fmt: skip
    report["degenerate_intervals"] = reports.degenerate_intervals(report, units)
    if len(logits_by_view) > 1:
        tta_probs = task.probabilities(logits_by_view, temperature)
        tta_units = metrics.level_units(records, tta_probs, subjects_known)
        report["tta"] = {
            "views": list(logits_by_view),
            **{
                level: {k: v for k, v in r.items() if k != "calibration"}
                for level, r in level_results(tta_units, settings, names, task).items()
            },
        }
    reports.add_data_sections(
        report, data_metadata, unmeasured_duplicates=True,
        classes_ordered=data_metadata.get("classes_ordered", True),
    )  # fmt: skip
    return report, units


def decision_text(task: tasks.Task) -> str:
    """How the report's units were called."""
    if isinstance(task, tasks.OrdinalTask):
        rule = {"argmax": "the most probable stage",
                "median": "the median stage (the first whose cumulative probability reaches 1/2)",
                "expected": "the expected stage, rounded"}[task.decision]  # fmt: skip
        return f"Predicted stage: {rule}, {task.head} head"
    return "Predicted class: the most probable class"


def _ordinal(report: dict) -> bool:
    return report.get("task") == tasks.OrdinalTask.kind


# ---- Text: console table and Markdown. ----


def _value(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _temperature_text(cal: dict) -> str:
    fitted = cal["temperature_fit"]["temperature"]
    if cal["temperature_applied"]:
        return f"temperature {cal['temperature']:.3f} (fitted on validation) applied"
    return f"no temperature applied (fitted on validation: {fitted:.3f})"


def _notes(report: dict) -> list[str]:
    """Notes on how far the numbers can be trusted (as reports._notes, without thresholds),
    the leakage warning first."""
    notes = reports.data_notes(report)
    if report["split"] == "validation":
        notes.append("Note: the temperature was fitted on this same split (and checkpoints may "
                     "have been chosen on it): its results are optimistic.")  # fmt: skip
    if not _ordinal(report):
        notes.append("Note: the classes have no order (not all dementia stages; data.ordinal): "
                     "ordinal metrics (MAE, within-one accuracy, kappa) do not apply and are "
                     "not reported.")  # fmt: skip
    elif not report.get("classes_ordered", True):
        notes.append("Note: the classes are not dementia stages; data.ordinal = true reads "
                     "their label order as an ordinal scale.")  # fmt: skip
    for level in REPORT_LEVELS:
        if level in report and report[level]["roc_auc_ovr_macro"] is None:
            notes.append(f"Note: a class is absent at {level} level: no macro AUC there.")
    return notes


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "~"


def _level_lines(report: dict) -> list[str]:
    """One console line per level (and per level under test-time augmentation)."""
    ordinal = _ordinal(report)
    lines = [
        f"{'level':<11} {'n':>6} {'acc':>6} {'bal_acc':>7} {'mF1':>6} {'wF1':>6} "
        + (f"{'kappa':>6} {'MAE':>6} {'±1':>6} " if ordinal else "")
        + f"{'AUC':>6} {'ECE':>6}  acc 95% CI"
    ]
    sources = [("", report)]
    if "tta" in report:
        sources.append(("tta ", report["tta"]))
    for prefix, source in sources:
        for level in REPORT_LEVELS:
            if level not in source:
                continue
            m = source[level]
            ci = m["ci95"].get("accuracy")
            ece = m["calibration"]["ece"] if "calibration" in m else None
            lines.append(
                f"{prefix + level:<11} {m['n']:>6} {_value(m['accuracy']):>6} "
                f"{_value(m['balanced_accuracy']):>7} {_value(m['macro_f1']):>6} "
                f"{_value(m['weighted_f1']):>6} "
                + (
                    f"{_value(m['quadratic_kappa']):>6} {_value(m['mae']):>6} "
                    f"{_value(m['within_one']):>6} "
                    if ordinal
                    else ""
                )
                + f"{_value(m['roc_auc_ovr_macro']):>6} {_value(ece):>6}  "
                + (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            )
    return lines


def _class_lines(m: dict) -> list[str]:
    """The per-class table and the confusion matrix of one level, for the console."""
    names = m["confusion_matrix"]["rows_true_cols_predicted"]
    # Names cut to fit K + 1 columns in a console line (< 200 characters) however many classes.
    width = max(6, min(18, max(len(n) for n in names), 190 // (len(names) + 1) - 1))
    names_short = {n: _short(n, width) for n in names}
    lines = [f"{'class':<{width}} {'precision':>9} {'recall':>6} {'F1':>6} {'support':>7} "
             f"{'AUC ovr':>7}"]  # fmt: skip
    for name in names:
        c = m["per_class"][name]
        lines.append(
            f"{names_short[name]:<{width}} {c['precision']:>9.3f} {c['recall']:>6.3f} "
            f"{c['f1']:>6.3f} {c['support']:>7} {_value(c['roc_auc_ovr']):>7}"
        )
    lines.append("Confusion matrix (rows: true, columns: predicted):")
    lines.append(" " * width + "".join(f" {names_short[n]:>{width}}" for n in names))
    for name, row in zip(names, m["confusion_matrix"]["counts"], strict=True):
        lines.append(f"{names_short[name]:<{width}}" + "".join(f" {c:>{width}}" for c in row))
    return lines


def format_report(report: dict) -> str:
    """The summary table printed after a K-class evaluation: per level the headline metrics,
    then the slice level's per-class table and confusion matrix, then the notes."""
    cal = report["calibration"]
    names = report["class_names"]
    lines = [
        f"Report: {report['split']} split, checkpoint step {report['checkpoint_step']} "
        f"({report['weights']} weights), {report['num_images']} images, "
        f"{report['num_classes']} classes, subjects from {report['subject_source']}"
        + (f", data folder {report['source_fingerprint']}" if report.get("source_fingerprint")
           else ""),
        f"Classes (label order): {', '.join(_short(n) for n in names)}",
        f"{report.get('decision', decision_text(tasks.of_report(report)))}; "
        f"{_temperature_text(cal)}",
        reports.interval_text(report["bootstrap"]),
        *_level_lines(report),
        "Slice level, per class:",
        *_class_lines(report["slice"]),
    ]  # fmt: skip
    lines += _notes(report)
    return "\n".join(lines)


_cell = reports.markdown_cell


def _markdown_levels(report: dict, source: dict) -> list[str]:
    names = tasks.of_report(report).metric_names("interval")
    # No ECE under test-time augmentation: its levels hold no calibration.
    extra = {"ECE": lambda m: _value(m["calibration"]["ece"], 4)} if source is report else {}
    return reports.markdown_levels(report, source, names, lambda level, m: [(f"**{level}**", m)],
                                   extra)  # fmt: skip


def _markdown_classes(report: dict) -> list[str]:
    """Per-class tables and confusion matrices of every level, class names as headers."""
    md = ["", "## Per class", "",
          "| level | class | precision | recall | F1 | support | AUC (one vs rest) |",
          "|---|---|---|---|---|---|---|"]  # fmt: skip
    for level in REPORT_LEVELS:
        if level in report:
            for name, c in report[level]["per_class"].items():
                md.append(
                    f"| {level} | {_cell(name)} | {c['precision']:.3f} | {c['recall']:.3f} | "
                    f"{c['f1']:.3f} | {c['support']} | {_value(c['roc_auc_ovr'])} |"
                )
    md += ["", "## Confusion matrices (rows: true class, columns: predicted class)"]
    if _ordinal(report):
        md += ["", "Cells of the diagonal band (at most one stage off) are in italics."]
    for level in REPORT_LEVELS:
        if level not in report:
            continue
        matrix = report[level]["confusion_matrix"]
        names = matrix["rows_true_cols_predicted"]
        md += ["", f"**{level}**", "",
               "| true \\ predicted | " + " | ".join(_cell(n) for n in names) + " |",
               "|---" * (1 + len(names)) + "|"]  # fmt: skip
        band = _ordinal(report)
        for i, (name, row) in enumerate(zip(names, matrix["counts"], strict=True)):
            cells = [f"*{c}*" if band and abs(i - j) <= 1 else str(c) for j, c in enumerate(row)]
            md.append(f"| **{_cell(name)}** | " + " | ".join(cells) + " |")
    return md


def format_markdown(report: dict, figures: dict[str, str]) -> str:
    """report_<split>.md: the same numbers as the JSON, as tables a reader can act on."""
    cal = report["calibration"]
    md = [
        f"# Evaluation report: {report['split']} split, {report['num_classes']} classes",
        "",
        *reports.markdown_about(report, "fitted the temperature", [
            "- Classes (in label order): " + ", ".join(_cell(n) for n in report["class_names"])
            + "."]),
        "## Metrics",
        "",
        f"{report.get('decision', decision_text(tasks.of_report(report)))} (no threshold); "
        f"{_temperature_text(cal)}. "
        f"{reports.interval_text(report['bootstrap'])} (seed {report['bootstrap']['seed']})."
        + (" MAE is the mean distance in stages between truth and call, within one stage the "
           "share at most one stage off; the quadratic (linear) kappa weighs a mistake by the "
           "square of (by) its distance in stages." if _ordinal(report) else ""),
        *_markdown_levels(report, report),
        *reports.markdown_degenerate(report),
    ]  # fmt: skip
    md += _markdown_classes(report)
    md += reports.markdown_distribution(report)
    md += reports.markdown_calibration(report, "Calibration (top label)")
    if "tta" in report:
        md += ["", f"## Test-time augmentation: {' + '.join(report['tta']['views'])}", "",
               "Probabilities averaged over the views. Flips are not anatomical symmetries of "
               "sagittal slices.", ""]  # fmt: skip
        md += _markdown_levels(report, report["tta"])
    md += reports.markdown_leakage(report)
    notes = [n for n in _notes(report) if n.startswith("Note: ")]
    return reports.markdown_end(md, notes, figures)


def validation_images(
    records: dict, logits: np.ndarray, class_names: Sequence[str], title: str = ""
) -> dict:
    """TensorBoard images of a validation: the scan-level K x K confusion matrix (argmax)."""
    units = metrics.level_units(records, mc.softmax(logits), subjects_known=False)
    scan = mc.classification_metrics(units["scan"].labels, units["scan"].probs, class_names)
    figure = figures.multiclass_confusion_figure({"scan": scan["confusion_matrix"]}, title)
    return {"validation/confusion_scan": figures.to_tensorboard_image(figure)}
