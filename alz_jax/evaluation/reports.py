"""The two-class (NC/AD) task's report, and what every report shares: predictions over a split
in one pass, the data notes and Markdown sections, and the report's files.

`task_reports.evaluate_weights` is the one evaluation path: validation during training, the
test report at the end of `main`, and

    python -m alz_jax.evaluate --workdir=DIR [--split=test] [--checkpoint=best|latest|STEP] \
        [--weights=selected|raw|ema|swa] [--threshold=youden|sensitivity:0.9] \
        [--temperature_scaling] [--tta=hflip] [--bootstrap_samples=1000] [--gradcam_scans=4]

which writes, in the workdir: report_<split>.json, report_<split>.md, predictions_<split>.csv
and the figures roc_/confusion_/reliability_/gradcam_<split>.png, and prints a summary table.

What a report holds, per level (slice; scan = mean of its slices' P(AD); subject = mean of its
scans'): the metrics at the threshold chosen on the validation split (never on test) and at 0.5,
each with a 95% interval from resampling subjects; ROC and PR AUC; calibration (reliability bins,
ECE, and a temperature fitted on validation); optionally test-time augmentation beside the plain
result; and Grad-CAM pictures of chosen scans. The Markdown opens with what the report is about
(model, config, data folder and layout, synthetic or not, split sizes per class, the validation
size behind the thresholds), keeps each table to about seven columns, and gives a rule-of-three
caveat for each interval of zero width; every user-supplied string in it is escaped.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from alz_jax.core import sharding
from alz_jax.data import bags, input_pipeline
from alz_jax.evaluation import bag_predictions, figures, metric_registry, metrics, saliency, tasks
from alz_jax.evaluation.settings import EvalSettings  # re-exported: callers use this name
from alz_jax.host import logs, storage
from alz_jax.tfds_builders.mri_slices import audit

REPORT_LEVELS = metrics.LEVELS
# Share of test images with a near-duplicate in train (cross_split_near_duplicates) from which
# a report warns.
LEAK_WARNING_SHARE = audit.LEAKAGE_WARN_SHARE
LEAK_WARNING = f"Warning: {audit.LEAKAGE_WARNING}"
TASK = tasks.BinaryTask(2)  # the task this module reports
# A threshold further than this from 0.5 gets a note naming the validation units it was set on.
FAR_THRESHOLD = 0.2
# Metrics per Markdown table beside its level (and threshold) column: at most ~7 columns.
TABLE_METRICS = 5
# The heading of the metrics of a decision, by whether the task has a threshold.
DECIDED_HEADINGS = {True: "At the threshold chosen on validation, and at 0.5",
                    False: "At the decision (the most probable class)"}  # fmt: skip
# Who a binary rate counts (metric_registry.Metric.counted), for the rule-of-three caveat: the
# units' name, and which they are of (labels, called AD).
COUNTED = {
    "tp+fn": ("AD {}", lambda labels, called: labels == 1),
    "tn+fp": ("NC {}", lambda labels, called: labels == 0),
    "tp+fp": ("{} called AD", lambda labels, called: called),
    "tn+fn": ("{} called NC", lambda labels, called: ~called),
}
GRADCAM_TEXT = (
    "Grad-CAM: where the last stage's features pushed the model towards its call on each slice "
    "(the positive part of the gradient-weighted feature map, upsampled from the last stage's "
    "coarse grid and scaled to 1 per slice), in the jet colour scale from blue (0, no "
    "contribution) to red (1, the slice's strongest); it is not a lesion map."
)
SPATIAL_ATTENTION_TEXT = (
    "Spatial attention: the weights the head pooled the last feature map with "
    "(model.spatial_attention: a softmax over the map's cells, upsampled and scaled to 1 per "
    "slice), from blue (little weight) to red (the slice's most); it shows where the model "
    "looked, whatever the class, and is not a lesion map."
)
# ---- Predictions. ----


def predict_split_multi(
    data, split: str, predictors: dict, pipeline: input_pipeline.PipelineSpec, batch_size: int,
    mesh,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Logit margins z_AD - z_NC (or, with K > 2 classes, the logits (n, K)) of every image of
    a split, in record order, for several (params, predict_fn) pairs (raw/EMA/SWA weights,
    test-time views) in one pass over the data; every image is counted exactly once. For a
    scan model (`pipeline.bags`) every image carries its scan's output (bag_predictions)."""
    if pipeline.bags:
        found = bag_predictions.predict_split_bags(
            data, split, predictors, pipeline, batch_size, mesh
        )
        return {name: p.outputs for name, p in found.items()}
    n = data.num_examples(split)
    out: dict[str, np.ndarray] = {}  # (n,) margins, or (n, K) logits with K > 2 classes
    seen = np.zeros(n, np.int64)
    batch_sharding = sharding.batch_sharded(mesh)
    source = bags.split_source(data, split, pipeline.neighbours)
    dataset = input_pipeline.eval_dataset(source, pipeline, batch_size)
    counter = logs.Progress(f"Predictions on {split}", n)
    iterator = iter(dataset)
    try:
        for batch in iterator:
            images = jax.make_array_from_process_local_data(batch_sharding, batch["image"])
            indices = jax.make_array_from_process_local_data(batch_sharding, batch["index"])
            margins = {name: fn(params, images) for name, (params, fn) in predictors.items()}
            margins, indices = multihost_utils.process_allgather((margins, indices), tiled=True)
            valid = indices >= 0
            for name in predictors:
                if name not in out:
                    out[name] = np.full((n, *margins[name].shape[1:]), np.nan, np.float64)
                out[name][indices[valid]] = margins[name][valid]
            np.add.at(seen, indices[valid], 1)
            counter.update(int(valid.sum()))
        counter.finish()
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
    input_pipeline.check_counted_once(seen, split)
    return out


# ---- The report. ----


def level_results(
    units: dict[str, metrics.Units], thresholds: dict[str, float], settings: EvalSettings
) -> dict:
    """Per level: metrics at the validation threshold and at 0.5, each with bootstrap-over-
    subjects intervals, and calibration."""
    half = {level: 0.5 for level in units}
    intervals = {}
    for name, t in (("chosen", thresholds), ("half", half)):
        intervals[name] = (
            TASK.bootstrap_intervals(
                units, settings.bootstrap_samples, settings.bootstrap_seed, thresholds=t
            )
            if settings.bootstrap_samples
            else {level: {} for level in units}
        )
    out = {}
    for level, u in units.items():
        out[level] = {
            **metrics.classification_metrics(u.labels, u.probs, thresholds[level]),
            "ci95": intervals["chosen"][level],
            "n_subjects": len(set(u.subjects)),
            "at_0.5": {
                **metrics.classification_metrics(u.labels, u.probs, 0.5),
                "ci95": intervals["half"][level],
            },
            "calibration": metrics.reliability_bins(u.labels, u.probs, settings.calibration_bins),
        }
    return out


def build_report(
    split: str, records: dict, logits_by_view: dict[str, np.ndarray], data_metadata: dict,
    step: int, calibration: dict, settings: EvalSettings, class_names: Sequence[str] = (),
    task=None,
) -> tuple[dict, dict[str, metrics.Units]]:  # fmt: skip
    """The report of one split, and the units (for figures): the plain view's results at the
    validation-chosen thresholds and at 0.5, test-time augmentation beside them if asked.
    The classes are NC and AD (`class_names` and `task` are taken as every task's report takes
    them)."""
    del task
    del class_names
    subjects_known = data_metadata.get("subject_source") != "scan_id"
    plain = calibration["plain"]
    temperature = plain["temperature"]
    probs = TASK.probabilities({"plain": logits_by_view["plain"]}, temperature)
    units = metrics.level_units(records, probs, subjects_known)
    report = {
        **report_head(split, step, data_metadata, len(probs)),
        "counts": metrics.split_counts(records, subjects_known, metrics.CLASS_NAMES),
        "loss": metrics.nll(records["label"], probs),
        "calibration": plain,
        "bootstrap": bootstrap_text(settings, subjects_known),
        **level_results(units, plain["thresholds"], settings),
    }
    report["degenerate_intervals"] = degenerate_intervals(report, units)
    add_ece_variants(report, records, logits_by_view["plain"], TASK, metrics.reliability_bins,
                     settings.calibration_bins)  # fmt: skip
    if "tta" in calibration:
        tta_cal = calibration["tta"]
        tta_probs = TASK.probabilities(logits_by_view, temperature)
        tta_units = metrics.level_units(records, tta_probs, subjects_known)
        report["tta"] = {
            "views": list(logits_by_view),
            "thresholds": tta_cal["thresholds"],
            **{
                level: {k: v for k, v in r.items() if k != "calibration"}
                for level, r in level_results(tta_units, tta_cal["thresholds"], settings).items()
            },
        }
    add_data_sections(report, data_metadata)
    return report, units


def report_head(split: str, step: int, data_metadata: dict, num_images: int) -> dict:
    """The fields every report starts with: what was evaluated and where its subjects and
    protocol come from."""
    return {
        "split": split,
        "checkpoint_step": int(step),
        "weights": "raw",
        "subjects_known": data_metadata.get("subject_source") != "scan_id",
        "subject_source": data_metadata.get("subject_source"),
        "subject_coverage": data_metadata.get("subject_coverage"),
        "protocol": data_metadata.get("protocol"),
        "layout": data_metadata.get("layout"),
        # Of the data folder the evaluated data set was built from (audit prints the same).
        "source_fingerprint": data_metadata.get("source_fingerprint"),
        "num_images": num_images,
    }


def bootstrap_text(settings: EvalSettings, subjects_known: bool) -> dict:
    """How the report's intervals were resampled."""
    return {
        "samples": settings.bootstrap_samples,
        "seed": settings.bootstrap_seed,
        # Unknown subjects stand as one per scan: scans are then what is resampled.
        "resampled_unit": "subject" if subjects_known else "scan",
        "confidence": 0.95,
    }


def add_ece_variants(
    report: dict, records: dict, outputs: np.ndarray, task: tasks.Task, reliability,
    n_bins: int,
) -> None:  # fmt: skip
    """Each level's ECE with and without the validation temperature, whichever the report
    used (`reliability(labels, probs, n_bins)` gives the task's bins)."""
    fitted = report["calibration"]["temperature_fit"]["temperature"]
    for name, t in (("ece_uncalibrated", 1.0), ("ece_temperature_scaled", fitted)):
        probs = task.probabilities({"plain": outputs}, t)
        other = metrics.level_units(records, probs, report["subjects_known"])
        for level, u in other.items():
            report[level]["calibration"][name] = reliability(u.labels, u.probs, n_bins)["ece"]


def add_data_sections(
    report: dict, data_metadata: dict, unmeasured_duplicates: bool = False, **before_split_counts
) -> None:
    """What the data set says about the report's trust: unknown subjects, test subjects also
    in train, near-duplicates across splits (also when not measured, as None, with
    `unmeasured_duplicates`), then `before_split_counts` fields, then the class distribution of
    every split."""
    if not report["subjects_known"]:
        report["subject_note"] = "subjects unknown (no metadata): subject level not reported"
    if report["split"] == "test":
        report["test_subjects_also_in_train"] = data_metadata.get("test_subjects_also_in_train")
    duplicates = data_metadata.get("cross_split_near_duplicates")
    if duplicates is not None or (unmeasured_duplicates and "cross_split_near_duplicates"
                                  in data_metadata):  # fmt: skip
        report["cross_split_near_duplicates"] = duplicates
    report.update(before_split_counts)
    if "class_distribution" in data_metadata:
        # Every split's (a K-class report's own "class_distribution" is this split's).
        report["class_distribution_by_split"] = data_metadata["class_distribution"]


def leak_warning(report: dict) -> str | None:
    """The warning line when many test images have a near-duplicate in train, else None."""
    dup = report.get("cross_split_near_duplicates") or {}
    share = dup.get("share")
    if share is None or share < LEAK_WARNING_SHARE or report.get("split") != "test":
        return None
    agreement = dup.get("agreement_with_subject_ids") or {}
    false_alarms = agreement.get("flag_rate_not_shared")
    if false_alarms is not None and false_alarms >= LEAK_WARNING_SHARE:
        # Subjects known, and the pixels match across people: the subjects are the measure.
        return (
            f"Note: {share:.1%} of test images match a train image, but so do "
            f"{false_alarms:.1%} of those whose subject is not in train: these images look "
            "alike across people (registered slices?), so count leakage by subject here."
        )
    return (
        f"{LEAK_WARNING} ({dup.get('test_images_with_train_match')} of "
        f"{dup.get('test_images')} test images, {share:.1%}, match a train image)."
    )


def protocol_text(protocol) -> str:
    """The protocol as `name` (its settings), for a report's header."""
    if not isinstance(protocol, dict):
        return markdown_text(protocol)
    details = ", ".join(f"{k} {v!r}" for k, v in protocol.items() if k != "name" and v != "")
    return markdown_text(protocol.get("name")) + (f" ({markdown_text(details)})" if details else "")


def interval_text(bootstrap: dict) -> str:
    """What the intervals are: the bootstrap's unit and resamples."""
    if not bootstrap["samples"]:
        return "No intervals (bootstrap_samples = 0)"
    unit = bootstrap["resampled_unit"]
    unknown = " (subjects unknown)" if unit == "scan" else ""
    return (f"95% intervals: percentile bootstrap over {unit}s{unknown}, "
            f"{bootstrap['samples']} resamples")  # fmt: skip


def ci_text(m: dict, name: str) -> str:
    """A metric with its interval: '0.812 [0.700, 0.900]' ('-' when undefined)."""
    value, interval = m.get(name), m.get("ci95", {}).get(name)
    if value is None:
        return "-"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def format_report(report: dict) -> str:
    """The summary table printed by `evaluate`, `main` and the demo."""
    cal = report["calibration"]
    lines = [
        f"Report: {report['split']} split, checkpoint step {report['checkpoint_step']} "
        f"({report['weights']} weights), "
        f"{report['num_images']} images, subjects from {report['subject_source']}"
        + (
            f", data folder {report['source_fingerprint']}"
            if report.get("source_fingerprint")
            else ""
        ),
        f"Threshold chosen on validation ({cal['threshold_method']}): "
        + ", ".join(f"{lv} {t:.3f}" for lv, t in cal["thresholds"].items())
        + f"; temperature {cal['temperature']:.3f}"
        + (
            ""
            if cal["temperature_applied"]
            else f" (none applied; fitted: {cal['temperature_fit']['temperature']:.3f})"
        ),
        interval_text(report["bootstrap"]),
        f"{'level':<8} {'n':>5} {'thr':>5} {'acc':>6} {'bal_acc':>7} {'sens':>6} {'spec':>6} "
        f"{'F1 AD':>6} {'AUC':>6} {'PR AUC':>6} {'ECE':>6}  [[TN FP] [FN TP]]  acc 95% CI",
    ]
    for level in REPORT_LEVELS:
        if level not in report:
            continue
        for label, m in ((level, report[level]), ("  @0.5", report[level]["at_0.5"])):
            auc = f"{m['roc_auc']:.3f}" if m["roc_auc"] is not None else "-"
            pr = f"{m['pr_auc']:.3f}" if m["pr_auc"] is not None else "-"
            ece = f"{report[level]['calibration']['ece']:.3f}" if label == level else ""
            ci = m["ci95"].get("accuracy")
            interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            lines.append(
                f"{label:<8} {m['n']:>5} {m['threshold']:>5.3f} {m['accuracy']:>6.3f} "
                f"{m['balanced_accuracy']:>7.3f} {m['sensitivity']:>6.3f} "
                f"{m['specificity']:>6.3f} {m['f1_ad']:>6.3f} {auc:>6} {pr:>6} {ece:>6}  "
                f"{m['confusion_matrix']['counts']}  {interval}"
            )
    if "tta" in report:
        tta = report["tta"]
        lines.append(f"Test-time augmentation ({' + '.join(tta['views'])}, own thresholds):")
        for level in REPORT_LEVELS:
            if level in tta:
                m = tta[level]
                lines.append(
                    f"  {level:<6} acc {ci_text(m, 'accuracy')}  bal_acc "
                    f"{ci_text(m, 'balanced_accuracy')}  AUC {ci_text(m, 'roc_auc')}"
                )
    lines += _notes(report)
    return "\n".join(lines)


def data_notes(report: dict) -> list[str]:
    """Notes every report shares (binary and K-class): the leakage warning, test subjects seen
    in training, unknown or partly known subjects, a temperature fit at its bound."""
    notes = [w for w in [leak_warning(report)] if w]
    if report.get("test_subjects_also_in_train"):
        notes.append(
            f"Note: {report['test_subjects_also_in_train']} test subjects also have visits in "
            "train or validation: test accuracy is optimistic."
        )
    coverage = report.get("subject_coverage")
    if not report["subjects_known"]:
        notes.append(
            "Note: subjects unknown (no metadata): splits are by scan, and one subject's visits "
            "may be in train and in validation or test."
        )
    elif coverage is not None and coverage < 1.0:
        notes.append(f"Note: subjects known for {coverage:.1%} of scans; the rest stand alone.")
    fit = report["calibration"]["temperature_fit"]
    if fit["at_bound"]:
        notes.append(
            f"Note: the temperature fitted on validation ({fit['temperature']:.3g}) hit its "
            f"bound {metrics.TEMPERATURE_BOUNDS}: validation is (nearly) separated, so the fit "
            "says little about test."
        )
    return notes


def _notes(report: dict) -> list[str]:
    notes = data_notes(report)
    if report["split"] == "validation":
        notes.append("Note: the thresholds and temperature were chosen on this same split: "
                     "its results at them are optimistic.")  # fmt: skip
    for level, c in report["calibration"]["threshold_details"].items():
        if not c["defined"]:
            notes.append(f"Note: validation has one class only at {level} level: threshold 0.5.")
    return notes + threshold_notes(report)


def validation_units(report: dict, level: str) -> str:
    """How many validation units of `level` chose the calibration ('12 validation subjects')."""
    cal = report["calibration"]
    noun = metrics.UNIT_NOUNS[level]
    count = cal.get("validation_counts", {}).get(noun)
    if count is None and level == "slice":
        count = cal.get("validation_images")
    return f"{count} validation {noun}" if count is not None else f"validation {noun}"


def threshold_notes(report: dict) -> list[str]:
    """A note per level whose validation-chosen threshold lies more than FAR_THRESHOLD from
    0.5, with the number of validation units it was set on."""
    notes = []
    for level, t in report["calibration"].get("thresholds", {}).items():
        if abs(t - 0.5) > FAR_THRESHOLD:
            notes.append(
                f"Note: the {level} threshold is {t:.3f}, set on {validation_units(report, level)}"
                f"; so far from 0.5 it says as much about that split as about the model: "
                f"compare the {level} rows at 0.5."
            )
    return notes


def format_markdown(report: dict, figures: dict[str, str]) -> str:
    """report_<split>.md: the same numbers as the JSON, as tables a reader can act on."""
    cal = report["calibration"]
    split = report["split"]
    md = [
        f"# Evaluation report: {split} split",
        "",
        *markdown_about(report, "chose the thresholds"),
        "## Metrics",
        "",
        f"Decision threshold chosen on the **validation** split by `{cal['threshold_method']}` "
        "and applied unchanged here; results at 0.5 below each. Temperature "
        + (f"{cal['temperature']:.3f} applied." if cal["temperature_applied"] else
           f"not applied (fitted on validation: {cal['temperature_fit']['temperature']:.3f})."),
        f"{interval_text(report['bootstrap'])} (seed {report['bootstrap']['seed']}); "
        "intervals do not include the uncertainty of the threshold itself.",
    ]  # fmt: skip
    md += markdown_levels(report, report, TASK.metric_names("interval"), threshold_rows)
    md += markdown_degenerate(report)
    md += ["", "## Confusion matrices (rows: true NC, AD; columns: predicted NC, AD)", ""]
    for level in REPORT_LEVELS:
        if level in report:
            (tn, fp), (fn, tp) = report[level]["confusion_matrix"]["counts"]
            md.append(f"- {level} at {report[level]['threshold']:.3f}: TN {tn}, FP {fp}, "
                      f"FN {fn}, TP {tp}")  # fmt: skip
    md += markdown_calibration(report, "Calibration")
    if "tta" in report:
        tta = report["tta"]
        md += ["", f"## Test-time augmentation: {' + '.join(tta['views'])}", "",
               "Probabilities averaged over the views; thresholds chosen on validation under "
               "the same views. Flips are not anatomical symmetries of sagittal slices.", "",
               "| level | threshold | accuracy | balanced_accuracy | roc_auc |",
               "|---|---|---|---|---|"]  # fmt: skip
        for level in REPORT_LEVELS:
            if level in tta:
                m = tta[level]
                md.append(f"| {level} | {m['threshold']:.3f} | {ci_text(m, 'accuracy')} | "
                          f"{ci_text(m, 'balanced_accuracy')} | "
                          f"{ci_text(m, 'roc_auc')} |")  # fmt: skip
    md += markdown_distribution(report) + markdown_leakage(report)
    return markdown_end(md, _notes(report), figures)


def threshold_rows(level: str, r: dict) -> list[tuple[str, dict]]:
    """A binary level's rows: at the validation-chosen threshold, then at 0.5."""
    return [(f"**{level}**", r), (f"{level} @ 0.5", r["at_0.5"])]


# ---- Markdown pieces every report shares. ----


def markdown_text(text: object) -> str:
    """A user-supplied string (class name, path, config name) safe in Markdown, in a table cell
    or not: HTML escaped, table pipes escaped. Not for code spans (they show escapes as typed)."""
    return html.escape(str(text), quote=False).replace("|", "\\|")


def _count_text(counts: dict, noun: str, class_names: Sequence[str] = ()) -> str:
    by_class = counts.get("by_class", {})
    per_class = ", ".join(f"{markdown_text(n)} {by_class[n][noun]}" for n in class_names)
    return f"{counts[noun]} {noun}" + (f" ({per_class})" if per_class else "")


def split_text(counts: dict, class_names: Sequence[str] = ()) -> str:
    """'60 subjects (NC 29, AD 31), 151 scans (...), 3020 images (...)': subjects first, the
    unit that is independent; per class where `class_names` are given."""
    nouns = [n for n in ("subjects", "scans", "images") if n in counts]
    return ", ".join(_count_text(counts, noun, class_names) for noun in nouns)


def model_text(model: dict) -> str:
    """'ConvNeXt atto (depths (2, 2, 6, 2), dims (40, 80, 160, 320)), 3.37 M parameters'."""
    title = str(model.get("title", "?"))
    shape = ", ".join(f"{k} {tuple(v)}" for k, v in model.get("shape", {}).items()
                      if str(tuple(v)) not in title)  # fmt: skip
    n = model.get("parameters")
    size = "" if n is None else (f", {n / 1e6:.2f} M parameters" if n >= 1e5 else
                                 f", {n:,} parameters")  # fmt: skip
    family = f" (family {model['family']})" if model.get("family") else ""
    return markdown_text(title + (f" ({shape})" if shape else "") + size + family)


def data_text(report: dict) -> str:
    """The data folder, its layout and whether it is the synthetic stand-in."""
    data = (report.get("about") or {}).get("data") or {}
    folder = markdown_text(data["folder"]) if data.get("folder") else "folder not recorded"
    layout = f"layout {markdown_text(report['layout'])}" if report.get("layout") else ""
    text = folder + (f" ({layout})" if layout else "")
    if data.get("synthetic") is None:
        return text + "; whether it is the synthetic stand-in was not recorded"
    if data["synthetic"]:
        return (text + "; **the synthetic stand-in** (" + markdown_text(data.get("synthetic_text")
                or "generated phantoms") + "), not MRI of people: its figures say nothing "
                "about real patients")  # fmt: skip
    return text + "; not the synthetic stand-in"


def markdown_about(report: dict, calibrated: str, extra: Sequence[str] = ()) -> list[str]:
    """The "About this run" block heading a report: the model, config, data folder and layout,
    the synthetic flag, what was evaluated, the split's size per class, the size of the
    validation split that `calibrated` ('chose the thresholds'), then the `extra` lines."""
    about = report.get("about") or {}
    names = report.get("class_names") or metrics.CLASS_NAMES
    md = ["## About this run", ""]
    if about.get("model"):
        md.append(f"- Model: {model_text(about['model'])}.")
    config = about.get("config")
    md.append(f"- Config: {markdown_text(config) if config else 'not recorded'}.")
    md.append(f"- Data: {data_text(report)}.")
    md.append(
        f"- Evaluated: checkpoint step {report['checkpoint_step']}, **{report['weights']}** "
        f"weights; {report['num_images']} images; protocol {protocol_text(report['protocol'])}; "
        f"subjects from {markdown_text(report['subject_source'])}."
    )
    if report.get("counts"):
        md.append(f"- {report['split'].capitalize()} split: "
                  f"{split_text(report['counts'], names)}.")  # fmt: skip
    counts = report["calibration"].get("validation_counts")
    if counts:
        md.append(f"- Validation split (it {calibrated}): {split_text(counts)}.")
    return [*md, *extra, ""]


def markdown_table(header: Sequence[str], rows: list[Sequence[object]]) -> list[str]:
    """A Markdown table (cells as given: escape user strings first)."""
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]  # fmt: skip


def _chunks(names: Sequence[str], width: int = TABLE_METRICS) -> list[Sequence[str]]:
    """`names` in near-equal runs of at most `width`."""
    if not names:
        return []
    size = -(-len(names) // -(-len(names) // width))
    return [names[i : i + size] for i in range(0, len(names), size)]


def markdown_levels(report: dict, source: dict, names: Sequence[str], rows,
                    extra: dict | None = None) -> list[str]:  # fmt: skip
    """The metric tables of `source`'s levels, each at most ~7 columns: the threshold-free
    metrics (with n, subjects and `extra` {header: fn(level result)}) once per level, then
    the decision's metrics in runs, a row per `rows(level, result)` (with its threshold where
    the task has one)."""
    ranked = [n for n in names if metric_registry.get(n).threshold_free]
    decided = [n for n in names if n not in ranked]
    levels = [level for level in REPORT_LEVELS if level in source]
    extra = extra or {}
    md = ["", "### Ranking and calibration (no threshold)" if extra else "### Ranking (no "
          "threshold)", ""]  # fmt: skip
    md += markdown_table(
        ["level", "n", "subjects", *(metric_registry.label(n) for n in ranked), *extra],
        [[f"**{lv}**", source[lv]["n"], source[lv]["n_subjects"],
          *(ci_text(source[lv], n) for n in ranked), *(f(source[lv]) for f in extra.values())]
         for lv in levels],
    )  # fmt: skip
    with_threshold = "threshold" in source[levels[0]] if levels else False
    parts = _chunks(decided)
    for i, part in enumerate(parts):
        heading = DECIDED_HEADINGS[with_threshold]
        if not with_threshold and report.get("decision"):  # the task's rule (ordered stages)
            heading = f"At the decision ({report['decision'].split(': ', 1)[-1]})"
        count = f" ({i + 1} of {len(parts)})" if len(parts) > 1 else ""
        md += ["", f"### {heading}{count}", ""]
        md += markdown_table(
            ["level", *(["threshold"] if with_threshold else []),
             *(metric_registry.label(n) for n in part)],
            [[label, *([f"{m['threshold']:.3f}"] if with_threshold else []),
              *(ci_text(m, n) for n in part)]
             for lv in levels for label, m in rows(lv, source[lv])],
        )  # fmt: skip
    return md


def _is_extreme(value: float | None, interval: list[float] | None) -> bool:
    if value is None or not interval or not np.isclose(value, round(value), atol=1e-12):
        return False
    return round(value) in (0, 1) and all(np.isclose(x, value, atol=1e-12) for x in interval)


def _counted(name: str, m: dict, level: str, u: metrics.Units) -> dict:
    """The units a metric is a rate over at one report row (all of them, or those of
    metric_registry.Metric.counted: true AD, true NC, called AD, called NC), as {n_units,
    units (what they are), n (their subjects: the independent, resampled unit)}."""
    counted = metric_registry.get(name).counted
    labels = np.asarray(u.labels)
    if counted:
        called = np.asarray(u.probs) >= m["threshold"]
        label, chosen = COUNTED[counted][0], COUNTED[counted][1](labels, called)
    else:
        label, chosen = "{}", np.ones(len(labels), bool)
    n_units = int(chosen.sum())
    noun = metrics.UNIT_NOUNS[level]
    return {"n_units": n_units, "units": label.format(_counting(n_units, noun)),
            "n": len(set(np.asarray(u.subjects)[chosen].tolist()))}  # fmt: skip


def degenerate_intervals(report: dict, units: dict[str, metrics.Units]) -> list[dict]:
    """Intervals of zero width at 0 or 1 (no resample of subjects changes the value), one entry
    per level and metric (with the thresholds of the rows showing it): the units counted, n of
    their subjects (scans where subjects are unknown), and the rule-of-three 95% upper bound
    3/n on the error rate (1 - value; the value itself at 0), None where n <= 3 or where no
    count bounds it (`bounded` false: an area, or F1 at 0)."""
    found: dict[tuple, dict] = {}
    for level in REPORT_LEVELS:
        if level not in report:
            continue
        r = report[level]
        rows = [r, r["at_0.5"]] if "at_0.5" in r else [r]
        for i, m in enumerate(rows):
            for name, interval in m.get("ci95", {}).items():
                free = metric_registry.get(name).threshold_free
                if (free and i) or not _is_extreme(m.get(name), interval):
                    continue
                counted = _counted(name, m, level, units[level])
                n = counted["n"]
                # A count of errors (or successes) to bound: a rate at 0 or 1, or any metric at
                # 1 (every unit right); not an area, nor F1 or kappa at 0.
                bounded = not free and (m[name] == 1 or bool(metric_registry.get(name).counted))
                entry = found.setdefault((level, name, m[name], n, counted["n_units"]), {
                    "level": level, "metric": name, "value": m[name], "thresholds": [],
                    **counted, "resampled": f"{report['bootstrap']['resampled_unit']}s",
                    "bounded": bounded,
                    "rule_of_three_bound": 3 / n if bounded and n > 3 else None,
                })  # fmt: skip
                if "threshold" in m and not free:
                    entry["thresholds"].append(m["threshold"])
    return list(found.values())


def _counting(n: int, noun: str) -> str:
    """`noun` ('subjects') for n of them: singular for one."""
    return noun[:-1] if n == 1 else noun


def caveat_text(entry: dict) -> str:
    """The sentence a report gives a zero-width interval (degenerate_intervals' entry)."""
    name, value, n = metric_registry.label(entry["metric"]), entry["value"], entry["n"]
    at = " and ".join(f"{t:.3f}" for t in entry["thresholds"])
    head = f"{name} {value:.3f} [{value:.3f}, {value:.3f}] at {entry['level']} level" + (
        f", threshold {at}" if at else "")  # fmt: skip
    resampled = _counting(n, entry["resampled"])
    if not entry.get("bounded", True):
        return (f"{head}: every resample of the {n} {resampled} gives {value:.3f}; the interval "
                "shows no uncertainty, which is not certainty.")  # fmt: skip
    outcome = "no error" if value == 1 else "none right"
    counted = f"{entry['n_units']} {entry['units']}"
    independent = f"n = {n}"
    if metrics.UNIT_NOUNS[entry["level"]] != entry["resampled"]:  # slices (or scans) of subjects
        counted += f", from {n} {resampled}"
        independent += f" {resampled} (the independent unit)"
    bound = entry["rule_of_three_bound"]
    if bound is None:
        return (f"{head}: {outcome} among its {counted}; with {independent}, no 95% bound "
                "below 1 follows (rule of three: 3/n).")  # fmt: skip
    bounded = f"the error rate (1 - {name})" if value == 1 else name
    return (f"{head}: {outcome} among its {counted}; with {independent}, the 95% upper bound "
            f"on {bounded} is 3/{n} = {bound:.3f} (rule of three).")  # fmt: skip


def markdown_degenerate(report: dict) -> list[str]:
    """The caveats of the report's zero-width intervals, under its tables."""
    entries = report.get("degenerate_intervals") or []
    if not entries:
        return []
    return ["", "Intervals of zero width (a percentile bootstrap cannot show the uncertainty of "
            "zero errors):", "", *(f"- {caveat_text(e)}" for e in entries)]  # fmt: skip


def markdown_end(md: list[str], notes: list[str], figures: dict[str, str]) -> str:
    """A report's Markdown: `md`, then its notes and figures."""
    if notes:
        md += ["", "## Notes", ""] + [f"- {n.removeprefix('Note: ')}" for n in notes]
    if figures:
        md += ["", "## Figures", ""]
        for name, path in figures.items():
            md.append(f"![{name}]({path})")
            if name == "gradcam":
                md += ["", GRADCAM_TEXT, ""]
            if name == "spatial_attention":
                md += ["", SPATIAL_ATTENTION_TEXT, ""]
    return "\n".join(md) + "\n"


def markdown_calibration(report: dict, heading: str) -> list[str]:
    """Each level's ECE as reported, without temperature and with the one fitted on
    validation."""
    md = ["", f"## {heading}", "",
          "| level | ECE | ECE, no temperature | ECE, temperature fitted on validation |",
          "|---|---|---|---|"]  # fmt: skip
    for level in REPORT_LEVELS:
        if level in report:
            c = report[level]["calibration"]
            md.append(f"| {level} | {c['ece']:.4f} | {c['ece_uncalibrated']:.4f} | "
                      f"{c['ece_temperature_scaled']:.4f} |")  # fmt: skip
    return md


def markdown_cell(text: object) -> str:
    """Text safe inside a Markdown table cell (markdown_text)."""
    return markdown_text(text)


def markdown_distribution(report: dict) -> list[str]:
    """Images per class: every split's when the data set states them, else this split's (a
    K-class report's own), else nothing."""
    by_split = report.get("class_distribution_by_split") or (
        {report["split"]: report["class_distribution"]} if "class_distribution" in report else {}
    )
    if not by_split:
        return []
    names = report.get("class_names") or list(next(iter(by_split.values())))
    md = ["", "## Class distribution (images)", "",
          "| split | " + " | ".join(markdown_cell(n) for n in names) + " | total |",
          "|---" * (2 + len(names)) + "|"]  # fmt: skip
    for split, counts in by_split.items():
        values = [counts.get(n, 0) for n in names]
        md.append(f"| {split} | " + " | ".join(str(v) for v in values) + f" | {sum(values)} |")
    return md


def _share(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def markdown_leakage(report: dict) -> list[str]:
    """What is known of test subjects or images also seen in training."""
    md = []
    if report.get("test_subjects_also_in_train") is not None:
        md.append(f"- Test subjects with visits in train or validation: "
                  f"{report['test_subjects_also_in_train']}.")  # fmt: skip
    dup = report.get("cross_split_near_duplicates")
    if dup:
        md.append(
            f"- Test images with a near-duplicate in train: "
            f"{dup.get('test_images_with_train_match')} of {dup.get('test_images')} "
            f"({_share(dup.get('share'))}; method `{dup.get('method')}`, threshold "
            f"{dup.get('threshold')})."
        )
    warning = leak_warning(report)
    if warning:
        md.append(f"- **{warning}**")
    return ["", "## Leakage between splits", "", *md] if md else []


# ---- Files. ----


def write_report(report: dict, workdir: str | Path) -> Path:
    """Writes <workdir>/report_<split>.json (process 0 only); returns its path."""
    path = storage.path(workdir) / f"report_{report['split']}.json"
    if jax.process_index() == 0:
        path.write_text(json.dumps(report, indent=1))
    return path


def write_outputs(report: dict, rendered: dict, workdir, writer, markdown) -> dict:
    """Saves a report's figures as <name>_<split>.png (and, with a writer, as TensorBoard
    images, a card per panel: figures.to_tensorboard_image), then report_<split>.md
    (`markdown(report, figure paths)`) and report_<split>.json; returns the report, its figure
    paths added."""
    split, step = report["split"], report["checkpoint_step"]
    paths = {}
    for name, figure in rendered.items():
        paths[name] = f"{name}_{split}.png"
        figures.save(figure, workdir / paths[name])
    if writer is not None:
        writer.write_images(step, {
            f"{split}/{name}": figures.to_tensorboard_image(f)
            for name, f in rendered.items()
        })  # fmt: skip
        writer.flush()
    report["figures"] = paths
    (workdir / f"report_{split}.md").write_text(markdown(report, paths))
    write_report(report, workdir)
    return report


def saliency_figures(
    report: dict, units: dict[str, metrics.Units], data, split: str, records: dict,
    probs: np.ndarray, model, params, pixel_stats: dict, image_size: int, settings: EvalSettings,
) -> dict:  # fmt: skip
    """Grad-CAM pictures of the chosen scans of `split` (settings.gradcam_scans; none when 0),
    and a model with spatial attention's pooling weights over the same slices, noting the scans
    in the report."""
    if not settings.gradcam_scans:
        return {}
    threshold = report["scan"]["threshold"]
    scans = saliency.choose_scans(units["scan"], threshold, settings.gradcam_scans)
    # One batched call (compiling included): a line before it, none during.
    logging.info("Grad-CAM of %d %s scans (up to %d slices each) ...", len(scans), split,
                 settings.gradcam_slices)  # fmt: skip
    # 2.5D input: the model's channels are each slice and its neighbours on either side.
    source = bags.split_source(data, split, (model.spec.in_chans - 1) // 2)
    drawn = saliency.scan_figures(
        source, records, probs, scans, model, params, pixel_stats, image_size,
        settings.gradcam_slices, threshold,
    )  # fmt: skip
    report["gradcam_scans"] = list(scans)
    return drawn


def validation_images(
    records: dict, logit_ad: np.ndarray, class_names: Sequence[str] = (), title: str = ""
) -> dict:
    """TensorBoard images of a validation, titled with the weights and step: ROC/PR curves
    (slice, scan) and the scan-level confusion matrix at 0.5, rendered legible at card size."""
    del class_names  # NC and AD
    units = metrics.level_units(records, metrics.sigmoid(logit_ad), subjects_known=False)
    scan = metrics.classification_metrics(units["scan"].labels, units["scan"].probs)
    confusion = figures.confusion_figure(
        {"scan": scan["confusion_matrix"]["counts"]}, {"scan": 0.5}, title
    )
    return {
        "validation/roc": figures.to_tensorboard_image(figures.roc_figure(units, title=title)),
        "validation/confusion_scan": figures.to_tensorboard_image(confusion),
    }
