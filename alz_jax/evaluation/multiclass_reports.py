"""Evaluation reports for K >= 3 classes (dementia stages): the slice/scan/subject report, its
console table and Markdown, and the predictions CSV.

The K-class counterpart of `reports.py` (which stays the binary NC/AD path). The predicted
class is the most probable one, so validation chooses no threshold; it only fits the
temperature, applied when `EvalSettings.temperature_scaling` is on. Per level the report holds
`multiclass.classification_metrics` with bootstrap-over-subjects intervals and top-label
calibration; optionally test-time augmentation (probabilities averaged over views); and, when
the data set measured them, the test images with a near-duplicate in train (a test folder that
shares brains with train says little about accuracy on new people).

`evaluate_weights` is the K-class counterpart of `reports.evaluate_weights` (it predicts with
the same one-pass `reports.predict_split_multi`); everything else works on arrays of logits
(n, K).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from alz_jax.core import steps
from alz_jax.data import input_pipeline
from alz_jax.evaluation import figures, metrics, reports
from alz_jax.evaluation import multiclass as mc
from alz_jax.evaluation.settings import EvalSettings
from alz_jax.host import storage, tables

REPORT_LEVELS = metrics.LEVELS
LEAK_WARNING_SHARE = reports.LEAK_WARNING_SHARE
LEAK_WARNING = reports.LEAK_WARNING


def probabilities(logits_by_view: dict[str, np.ndarray], temperature: float) -> np.ndarray:
    """Class probabilities (n, K): the mean over views of softmax(logits / temperature)."""
    return np.mean([mc.softmax(z / temperature) for z in logits_by_view.values()], axis=0)


def _views(logits: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(logits) if isinstance(logits, dict) else {"plain": logits}


# ---- Calibration, from the validation split only. ----


def calibrate(
    records: dict, logits: np.ndarray | dict[str, np.ndarray], settings: EvalSettings,
    subjects_known: bool,
) -> dict:  # fmt: skip
    """The temperature fitted on validation logits (n, K) (or a dict of views, fitted on its
    "plain" one), applied only with `settings.temperature_scaling`. No threshold: the argmax
    decides. `subjects_known` is taken so that callers call this as reports.calibrate."""
    del subjects_known  # argmax needs no per-level choice
    views = _views(logits)
    fit = mc.fit_temperature(records["label"], views["plain"])
    return {
        "temperature": fit["temperature"] if settings.temperature_scaling else 1.0,
        "temperature_applied": settings.temperature_scaling,
        "temperature_fit": fit,
        "views": list(views),
        "validation_images": len(views["plain"]),
    }


def validation_metrics(records: dict, logits: np.ndarray) -> dict:
    """Flat scalars for TensorBoard and best-checkpoint selection: loss (NLL, no smoothing),
    slice and scan accuracy, balanced accuracy, macro F1, quadratic kappa, macro one-vs-rest
    AUC as `roc_auc` (omitted where undefined, as are other undefined ones), and top-label ECE."""
    probs = mc.softmax(logits)
    levels = mc.multilevel_metrics(records, probs, subjects_known=False)
    out = {"loss": mc.nll(records["label"], probs)}
    names = ("accuracy", "balanced_accuracy", "macro_f1", "quadratic_kappa")
    for level, prefix in (("slice", ""), ("scan", "scan_")):
        m = {**levels[level], "roc_auc": levels[level]["roc_auc_ovr_macro"]}
        for name in (*names, "roc_auc"):
            if m[name] is not None:
                out[prefix + name] = m[name]
    out["ece"] = levels["slice"]["ece"]
    return out


# ---- The report. ----


def level_results(
    units: dict[str, metrics.Units], settings: EvalSettings, class_names: Sequence[str]
) -> dict:
    """Per level: the metrics with bootstrap-over-subjects intervals, the number of subjects,
    and top-label reliability bins."""
    intervals = (
        mc.bootstrap_intervals(units, settings.bootstrap_samples, settings.bootstrap_seed)
        if settings.bootstrap_samples
        else {level: {} for level in units}
    )
    bins = settings.calibration_bins
    return {
        level: {
            **mc.classification_metrics(u.labels, u.probs, class_names, bins),
            "ci95": intervals[level],
            "n_subjects": len(set(u.subjects)),
            "calibration": mc.reliability_bins(u.labels, u.probs, bins),
        }
        for level, u in units.items()
    }


def build_report(
    split: str,
    records: dict,
    logits_by_view: dict[str, np.ndarray],
    data_metadata: dict,
    step: int,
    calibration: dict,
    settings: EvalSettings,
    class_names: Sequence[str],
) -> tuple[dict, dict[str, metrics.Units]]:
    """The report of one split and its units (for figures): the plain view's results at the
    validation temperature, test-time augmentation beside them when `logits_by_view` holds more
    views than "plain". `calibration` is calibrate's result (or a dict with it as "plain")."""
    plain = calibration.get("plain", calibration)
    temperature = plain["temperature"]
    logits = np.asarray(logits_by_view["plain"], np.float64)
    names = mc.class_names_or_indices(class_names, logits.shape[1])
    subjects_known = data_metadata.get("subject_source") != "scan_id"
    probs = probabilities({"plain": logits}, temperature)
    units = metrics.level_units(records, probs, subjects_known)
    per_class = np.bincount(np.asarray(records["label"], np.int64), minlength=len(names))
    report = {
        "split": split,
        "checkpoint_step": int(step),
        "weights": "raw",
        "subjects_known": subjects_known,
        "subject_source": data_metadata.get("subject_source"),
        "subject_coverage": data_metadata.get("subject_coverage"),
        "protocol": data_metadata.get("protocol"),
        "source_fingerprint": data_metadata.get("source_fingerprint"),
        "num_images": len(probs),
        "num_classes": len(names),
        "class_names": names,
        "class_distribution": {n: int(c) for n, c in zip(names, per_class, strict=True)},
        "loss": mc.nll(records["label"], probs),
        "calibration": plain,
        "bootstrap": {
            "samples": settings.bootstrap_samples,
            "seed": settings.bootstrap_seed,
            # Unknown subjects stand as one per scan: scans are then what is resampled.
            "resampled_unit": "subject" if subjects_known else "scan",
            "confidence": 0.95,
        },
        **level_results(units, settings, names),
    }
    # Calibration with and without the validation temperature, whichever the report used.
    fitted = plain["temperature_fit"]["temperature"]
    for key, t in (("ece_uncalibrated", 1.0), ("ece_temperature_scaled", fitted)):
        scaled = metrics.level_units(records, mc.softmax(logits / t), subjects_known)
        for level, u in scaled.items():
            report[level]["calibration"][key] = mc.reliability_bins(
                u.labels, u.probs, settings.calibration_bins
            )["ece"]
    if len(logits_by_view) > 1:
        tta_units = metrics.level_units(records, probabilities(logits_by_view, temperature),
                                   subjects_known)  # fmt: skip
        report["tta"] = {
            "views": list(logits_by_view),
            **{
                level: {k: v for k, v in r.items() if k != "calibration"}
                for level, r in level_results(tta_units, settings, names).items()
            },
        }
    if not subjects_known:
        report["subject_note"] = "subjects unknown (no metadata): subject level not reported"
    if split == "test":
        report["test_subjects_also_in_train"] = data_metadata.get("test_subjects_also_in_train")
    if "cross_split_near_duplicates" in data_metadata:
        report["cross_split_near_duplicates"] = data_metadata["cross_split_near_duplicates"]
    report["classes_ordered"] = data_metadata.get("classes_ordered", True)
    if "class_distribution" in data_metadata:
        # Every split's (the report's own "class_distribution" is this split's).
        report["class_distribution_by_split"] = data_metadata["class_distribution"]
    return report, units


# ---- Text: console table and Markdown. ----


def _value(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(m: dict, name: str) -> str:
    value, interval = m.get(name), m.get("ci95", {}).get(name)
    if value is None:
        return "-"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


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
    if not report.get("classes_ordered", True):
        notes.append("Note: the classes are not dementia stages: quadratic kappa reads their "
                     "label (name) order as an ordinal scale; weigh it accordingly.")  # fmt: skip
    for level in REPORT_LEVELS:
        if level in report and report[level]["roc_auc_ovr_macro"] is None:
            notes.append(f"Note: a class is absent at {level} level: no macro AUC there.")
    return notes


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "~"


def _level_lines(report: dict) -> list[str]:
    """One console line per level (and per level under test-time augmentation)."""
    lines = [
        f"{'level':<11} {'n':>6} {'acc':>6} {'bal_acc':>7} {'mF1':>6} {'wF1':>6} {'kappa':>6} "
        f"{'AUC':>6} {'ECE':>6}  acc 95% CI"
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
                f"{_value(m['weighted_f1']):>6} {_value(m['quadratic_kappa']):>6} "
                f"{_value(m['roc_auc_ovr_macro']):>6} {_value(ece):>6}  "
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


def format_any(report: dict) -> str:
    """The console table of a report from either path: this one's for K > 2 classes,
    `reports.format_report` for two."""
    return format_report(report) if report.get("num_classes", 2) > 2 else (
        reports.format_report(report))  # fmt: skip


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
        f"Predicted class: the most probable; {_temperature_text(cal)}",
        reports.interval_text(report["bootstrap"]),
        *_level_lines(report),
        "Slice level, per class:",
        *_class_lines(report["slice"]),
    ]  # fmt: skip
    lines += _notes(report)
    return "\n".join(lines)


_cell = reports.markdown_cell


def _markdown_levels(report: dict, source: dict) -> list[str]:
    names = mc.INTERVAL_METRICS
    md = [
        "| level | n | subjects | " + " | ".join(names) + " | ECE |",
        "|---" * (4 + len(names)) + "|",
    ]
    for level in REPORT_LEVELS:
        if level in source:
            m = source[level]
            ece = m.get("calibration", {}).get("ece")  # none under test-time augmentation
            md.append(
                f"| **{level}** | {m['n']} | {m['n_subjects']} | "
                + " | ".join(_ci(m, n) for n in names)
                + f" | {_value(ece, 4)} |"
            )
    return md


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
    for level in REPORT_LEVELS:
        if level not in report:
            continue
        matrix = report[level]["confusion_matrix"]
        names = matrix["rows_true_cols_predicted"]
        md += ["", f"**{level}**", "",
               "| true \\ predicted | " + " | ".join(_cell(n) for n in names) + " |",
               "|---" * (1 + len(names)) + "|"]  # fmt: skip
        for name, row in zip(names, matrix["counts"], strict=True):
            md.append(f"| **{_cell(name)}** | " + " | ".join(str(c) for c in row) + " |")
    return md


def format_markdown(report: dict, figures: dict[str, str]) -> str:
    """report_<split>.md: the same numbers as the JSON, as tables a reader can act on."""
    cal = report["calibration"]
    md = [
        f"# Evaluation report: {report['split']} split, {report['num_classes']} classes",
        "",
        f"Checkpoint step {report['checkpoint_step']}, **{report['weights']}** weights; "
        f"{report['num_images']} images; protocol {reports.protocol_text(report['protocol'])}; "
        f"subjects from `{report['subject_source']}`; classes (in label order) "
        + ", ".join(f"`{n}`" for n in report["class_names"]) + ".",
        "",
        f"Predicted class: the most probable (no threshold); {_temperature_text(cal)}. "
        f"{reports.interval_text(report['bootstrap'])} (seed {report['bootstrap']['seed']}). "
        "The quadratic kappa weighs a mistake by the square of its distance in stages.",
        "",
        *_markdown_levels(report, report),
    ]  # fmt: skip
    md += _markdown_classes(report)
    md += reports.markdown_distribution(report)
    md += ["", "## Calibration (top label)", "",
           "| level | ECE | ECE, no temperature | ECE, temperature fitted on validation |",
           "|---|---|---|---|"]  # fmt: skip
    for level in REPORT_LEVELS:
        if level in report:
            c = report[level]["calibration"]
            md.append(f"| {level} | {c['ece']:.4f} | {c['ece_uncalibrated']:.4f} | "
                      f"{c['ece_temperature_scaled']:.4f} |")  # fmt: skip
    if "tta" in report:
        md += ["", f"## Test-time augmentation: {' + '.join(report['tta']['views'])}", "",
               "Probabilities averaged over the views. Flips are not anatomical symmetries of "
               "sagittal slices.", ""]  # fmt: skip
        md += _markdown_levels(report, report["tta"])
    md += reports.markdown_leakage(report)
    notes = [n for n in _notes(report) if n.startswith("Note: ")]
    if notes:
        md += ["", "## Notes", ""] + [f"- {n.removeprefix('Note: ')}" for n in notes]
    if figures:
        md += ["", "## Figures", ""]
        md += [f"![{name}]({path})" for name, path in figures.items()]
    return "\n".join(md) + "\n"


# ---- Files. ----


def prediction_columns(class_names: Sequence[str], tta: bool = False) -> list[str]:
    """The predictions CSV's columns: file_name, scan_id, subject_id, label, predicted (class
    indices), prob_<class> and logit_<class> per class [, prob_<class>_tta per class]."""
    names = list(class_names)
    return [
        "file_name", "scan_id", "subject_id", "label", "predicted",
        *(f"prob_{n}" for n in names), *(f"logit_{n}" for n in names),
        *((f"prob_{n}_tta" for n in names) if tta else ()),
    ]  # fmt: skip


def write_predictions(
    records: dict, probs: np.ndarray, logits: np.ndarray, class_names: Sequence[str],
    path: str | Path, probs_tta: np.ndarray | None = None,
) -> None:  # fmt: skip
    """One CSV row per image: names, true and predicted class index (the argmax of the
    probabilities the report used), the probabilities and logits per class [, the test-time
    augmentation's probabilities]."""
    names = list(class_names)
    columns = prediction_columns(names, probs_tta is not None)
    predicted = np.argmax(probs, axis=1)

    def rows():
        for i in range(len(probs)):
            row = {
                "file_name": records["file_name"][i],
                "scan_id": records["scan_id"][i],
                "subject_id": records["subject_id"][i],
                "label": int(records["label"][i]),
                "predicted": int(predicted[i]),
            }
            for c, name in enumerate(names):
                row[f"prob_{name}"] = f"{probs[i, c]:.6f}"
                row[f"logit_{name}"] = f"{logits[i, c]:.6f}"
                if probs_tta is not None:
                    row[f"prob_{name}_tta"] = f"{probs_tta[i, c]:.6f}"
            yield row

    # Written whole (a local path or gs://); names quoted where a spreadsheet would run them.
    storage.path(path).write_text(tables.to_text(columns, rows()))


def read_predictions(path: str | Path, class_names: Sequence[str]) -> tuple[dict, np.ndarray]:
    """Reads a predictions CSV back into (records, probs (n, K)), names unquoted as written."""
    rows = list(csv.DictReader(io.StringIO(storage.path(path).read_text(), newline="")))
    records = {
        k: np.asarray([tables.read_cell(r[k]) for r in rows], dtype=object)
        for k in ("file_name", "scan_id", "subject_id")
    }
    records["label"] = np.asarray([int(r["label"]) for r in rows], np.int64)
    probs = np.asarray(
        [[float(r[f"prob_{n}"]) for n in class_names] for r in rows], np.float64
    ).reshape(len(rows), len(class_names))
    return records, probs


# ---- The one K-class evaluation path (main's final report and the command line). ----


def evaluate_weights(
    *, data, model, params, pixel_stats: dict, pipeline: input_pipeline.PipelineSpec,
    batch_size: int, mesh, split: str, step: int,
    weights: str, selection: dict | None, workdir: str | Path, settings: EvalSettings,
    writer=None,
) -> dict:  # fmt: skip
    """As `reports.evaluate_weights`, for K classes: predicts validation and `split`, fits the
    temperature on validation, and writes report_<split>.json/.md, predictions_<split>.csv and
    the confusion and reliability figures into `workdir` (process 0); returns the report.
    Grad-CAM pictures are drawn for two classes only."""
    views = ("plain", *settings.tta)
    fns = {view: steps.make_predict_step(model, pixel_stats, mesh, view) for view in views}
    splits = ["validation"] if split == "validation" else ["validation", split]
    logits = {
        s: reports.predict_split_multi(
            data, s, {v: (params, fns[v]) for v in views}, pipeline, batch_size, mesh
        )
        for s in splits
    }
    metadata = data.report_metadata()
    calibration = calibrate(data.records("validation"), logits["validation"], settings, True)
    records = data.records(split)
    report, units = build_report(
        split, records, logits[split], metadata, step, calibration, settings, data.class_names
    )
    report["weights"] = weights
    report["selection"] = selection
    if jax.process_index() != 0:
        return report
    workdir = storage.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    temperature = report["calibration"]["temperature"]
    plain = probabilities({"plain": logits[split]["plain"]}, temperature)
    tta = probabilities(logits[split], temperature) if settings.tta else None
    write_predictions(records, plain, logits[split]["plain"], data.class_names,
                      workdir / f"predictions_{split}.csv", tta)  # fmt: skip
    rendered = figures.multiclass_figures(report, units)
    # K x K matrices with class names need a wider card than the binary figures.
    return reports.write_outputs(report, rendered, workdir, writer, format_markdown, 880)


def validation_images(
    records: dict, logits: np.ndarray, class_names: Sequence[str], title: str = ""
) -> dict:
    """TensorBoard images of a validation: the scan-level K x K confusion matrix (argmax)."""
    units = metrics.level_units(records, mc.softmax(logits), subjects_known=False)
    scan = mc.classification_metrics(units["scan"].labels, units["scan"].probs, class_names)
    figure = figures.multiclass_confusion_figure({"scan": scan["confusion_matrix"]}, title)
    return {"validation/confusion_scan": figures.to_tensorboard_image(figure, width_px=660)}
