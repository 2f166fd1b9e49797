"""The report of a run evaluated on another cohort (run/external.py): its summary beside the
run's in-distribution test report, its console table and its Markdown.

The summary holds the headline figures at subject level (scan level where the cohort has no
subject IDs): for NC/AD the balanced accuracy, sensitivity, specificity and ROC AUC at the
subject threshold chosen on the run's own validation; for K classes the balanced accuracy and
macro one-vs-rest AUC, and each class's recall; each with its subject-bootstrap interval, and
the same figures of report_test.json beside them. The Markdown opens with the cohort (folder,
layout, classes as found, the mapping and what it left out), then that table, then how the two
cohorts differ, then the full task report of the cohort.
"""

from __future__ import annotations

from collections.abc import Callable

from alz_jax.evaluation import reports, tasks

CALIBRATION_TEXT = (
    "temperature and thresholds as stored with the checkpoint, chosen on the run's own "
    "validation split; nothing is fitted on this cohort"
)
# The headline metrics per task kind: (key in a level's result, label).
HEADLINE = {
    tasks.BinaryTask.kind: (
        ("balanced_accuracy", "balanced accuracy"),
        ("sensitivity", "sensitivity (AD recall)"),
        ("specificity", "specificity (NC recall)"),
        ("roc_auc", "ROC AUC"),
    ),
    tasks.MulticlassTask.kind: (
        ("balanced_accuracy", "balanced accuracy"),
        ("roc_auc_ovr_macro", "macro one-vs-rest ROC AUC"),
    ),
    tasks.OrdinalTask.kind: (
        ("balanced_accuracy", "balanced accuracy"),
        ("mae", "MAE (stages)"),
        ("within_one", "within one stage"),
        ("quadratic_kappa", "quadratic kappa"),
        ("roc_auc_ovr_macro", "macro one-vs-rest ROC AUC"),
    ),
}
NOT_EVALUATED = "in-distribution test not evaluated: python -m alz_jax.evaluate --workdir={}"


def _level(report: dict) -> str:
    return "subject" if "subject" in report else "scan"


def _row(key: str, label: str, external: dict, reference: dict | None) -> dict:
    """One metric of both reports: value and interval (None where absent or undefined)."""

    def value(result):
        if result is None:
            return None, None
        if key.startswith("recall:"):
            cls = key.split(":", 1)[1]
            entry = result.get("per_class", {}).get(cls, {})
            # A class without images here has no recall (not 0).
            return (entry.get("recall") if entry.get("support") else None), None
        return result.get(key), result.get("ci95", {}).get(key)

    ext, ext_ci = value(external)
    ref, ref_ci = value(reference)
    return {
        "metric": key,
        "label": label,
        "external": ext,
        "external_ci95": ext_ci,
        "in_distribution": ref,
        "in_distribution_ci95": ref_ci,
    }


def summary(report: dict, reference: dict | None, workdir: str) -> dict:
    """The headline figures of `report` (the cohort's task report) at subject level (scan level
    without subject IDs), with the same level's figures of `reference` (report_test.json)."""
    level = _level(report)
    kind = report.get("task", tasks.of_report(report).kind)
    metrics = list(HEADLINE[kind])
    if kind in (tasks.MulticlassTask.kind, tasks.OrdinalTask.kind):
        metrics += [(f"recall:{n}", f"recall of {n}") for n in report.get("class_names", [])]
    ref = (reference or {}).get(level)
    rows = [_row(key, label, report[level], ref) for key, label in metrics]
    if level in (report.get("uncertainty") or {}).get("levels", {}):
        rows.append(_coverage_row(report, reference, level))
    return {
        "level": level,
        "threshold": report[level].get("threshold"),
        "in_distribution_threshold": (ref or {}).get("threshold"),
        "in_distribution_subjects": ((reference or {}).get("counts") or {}).get("subjects"),
        "rows": rows,
        "in_distribution_note": _reference_note(report, reference, workdir),
    }


def _coverage_row(report: dict, reference: dict | None, level: str) -> dict:
    """The prediction sets' coverage on the cohort, calibrated on the run's own validation:
    exchangeability does not hold across cohorts, and this row shows what that costs."""
    section = report["uncertainty"]
    ours = section["levels"][level]
    theirs = ((reference or {}).get("uncertainty") or {}).get("levels", {}).get(level)
    return {
        "metric": "coverage",
        "label": f"set coverage (target {1 - section['alpha']:.2f})",
        "external": ours["coverage"],
        "external_ci95": ours["ci95"].get("coverage"),
        "in_distribution": theirs["coverage"] if theirs else None,
        "in_distribution_ci95": theirs["ci95"].get("coverage") if theirs else None,
    }


def _reference_note(report: dict, reference: dict | None, workdir: str) -> str | None:
    """Why the in-distribution column is empty, or that it is of other weights; else None."""
    if reference is None:
        return NOT_EVALUATED.format(workdir)
    ours = (report["checkpoint_step"], report["weights"])
    theirs = (reference.get("checkpoint_step"), reference.get("weights"))
    if ours != theirs:
        return (
            f"report_test.json is of checkpoint step {theirs[0]} ({theirs[1]} weights), "
            f"this report of step {ours[0]} ({ours[1]} weights)."
        )
    return None


def _value(value, interval=None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def format_console(report: dict) -> str:
    """The table `evaluate --data.manual_dir` prints."""
    cohort, s = report["cohort"], report["summary"]
    counts = report.get("counts", {})
    lines = [
        f"External evaluation on cohort {cohort['name']} (layout {cohort['layout']}): "
        f"{counts.get('subjects', 'unknown')} subjects, {counts.get('scans', '-')} scans, "
        f"{report['num_images']} images; checkpoint step {report['checkpoint_step']} "
        f"({report['weights']} weights)",
        f"Classes: {_mapping_text(cohort)}",
        f"Calibration: {CALIBRATION_TEXT}.",
        f"{s['level']}-level figures, 95% intervals (bootstrap over "
        f"{report['bootstrap']['resampled_unit']}s):",
        f"  {'metric':<28} {'external':<24} {'in-distribution test':<24}",
    ]
    for row in s["rows"]:
        lines.append(
            f"  {row['label'][:28]:<28} "
            f"{_value(row['external'], row['external_ci95']):<24} "
            f"{_value(row['in_distribution'], row['in_distribution_ci95']):<24}"
        )
    if s["in_distribution_note"]:
        lines.append(f"Note: {s['in_distribution_note']}")
    lines += [f"Note: {n}" for n in _cohort_notes(cohort)]
    return "\n".join(lines)


def _mapping_text(cohort: dict) -> str:
    return ", ".join(n if t == n else f"{n} -> {t}" for n, t in cohort["mapping"].items())


def _cohort_notes(cohort: dict) -> list[str]:
    notes = []
    dropped = cohort["dropped"]
    if dropped["images"]:
        notes.append(
            f"--class_mapping left out {dropped['images']} images, {dropped['scans']} scans, "
            f"{dropped['subjects']} subjects ("
            + ", ".join(f"{n}: {c} images" for n, c in dropped["by_class"].items())
            + ")."
        )
    for name in cohort["run_classes_absent"]:
        notes.append(
            f"the run's class {name} has no image in this cohort: its recall "
            "(sensitivity) is undefined here."
        )
    return notes


def _cohort_markdown(report: dict) -> list[str]:
    cohort = report["cohort"]
    text = reports.markdown_text
    found = ", ".join(
        f"{text(n)} ({c['subjects']} subjects, {c['scans']} scans, {c['images']} images)"
        for n, c in cohort["classes_found"].items()
    )
    mapping = ", ".join(f"{text(n)} → {text(t)}" for n, t in cohort["mapping"].items())
    return [
        "## Cohort",
        "",
        f"- Name: {text(cohort['name'])}; folder {text(cohort['folder'])}; layout "
        f"{text(cohort['layout'])}; subjects from {text(cohort['subject_source'])}.",
        f"- Classes as found: {found}.",
        f"- Mapping onto the run's classes: {mapping}.",
        f"- Source fingerprint: {text(cohort['source_fingerprint'])}.",
        f"- Calibration: {CALIBRATION_TEXT}.",
        *(f"- {text(n)}" for n in _cohort_notes(cohort)),
        "",
    ]


def _summary_markdown(report: dict) -> list[str]:
    s = report["summary"]
    md = [
        f"## Results at {s['level']} level, beside the in-distribution test",
        "",
        "95% intervals: percentile bootstrap over subjects (scans where subjects are unknown).",
    ]
    if s.get("threshold") is not None:
        md[-1] += f" Threshold {s['threshold']:.3f}, chosen on the run's validation."
    md += [
        "",
        *reports.markdown_table(
            ["metric", "external cohort", "in-distribution test"],
            [
                [
                    reports.markdown_text(r["label"]),
                    _value(r["external"], r["external_ci95"]),
                    _value(r["in_distribution"], r["in_distribution_ci95"]),
                ]
                for r in s["rows"]
            ],
        ),
    ]
    if s["in_distribution_note"]:
        md += ["", f"Note: {s['in_distribution_note']}"]
    return [*md, ""]


def _stats_cells(side: dict) -> list[str]:
    i = side.get("intensity")
    spread = side.get("slices_per_scan") or {}
    counts = side.get("counts") or {}
    if i is None:
        return ["-"] * 8
    shapes = ", ".join(f"{k} ({v})" for k, v in i["shapes"].items())
    return [
        str(i["images"]),
        f"{i['mean']:.1f}",
        f"{i['std']:.1f}",
        f"{i['p1']:.0f}",
        f"{i['p99']:.0f}",
        shapes,
        f"{spread.get('min')} / {spread.get('median')} / {spread.get('max')}",
        f"{counts.get('subjects', '-')} / {counts.get('scans', '-')} / {counts.get('images', '-')}",
    ]


def _differences_markdown(report: dict) -> list[str]:
    d = report["differences"]
    run, ext = d["run_train"], d["external_test"]
    labels = [
        "images sampled (evenly, fixed)",
        "pixel mean (0-255)",
        "pixel std",
        "1st percentile",
        "99th percentile",
        "image shapes (images)",
        "slices per scan (min / median / max)",
        "subjects / scans / images",
    ]
    md = ["## How the cohorts differ", ""]
    if run.get("note"):
        md += [f"Note: {reports.markdown_text(run['note'])}.", ""]
    md += reports.markdown_table(
        ["measure", "run's train split", "external cohort"],
        [[a, b, c] for a, b, c in zip(labels, _stats_cells(run), _stats_cells(ext), strict=True)],
    )
    names = list((ext.get("counts") or {}).get("by_class", {}))
    if names:
        md += ["", "Per class (subjects / scans / images; the cohort's after the mapping):", ""]

        def cell(side, name):
            c = (side.get("counts") or {}).get("by_class", {}).get(name)
            return "-" if c is None else f"{c.get('subjects', '-')} / {c['scans']} / {c['images']}"

        md += reports.markdown_table(
            ["class", "run's train split", "external cohort"],
            [[reports.markdown_text(n), cell(run, n), cell(ext, n)] for n in names],
        )
    if d.get("volumes"):
        md += _volumes_markdown(d["volumes"])
    return [*md, ""]


def _volumes_markdown(volumes: dict) -> list[str]:
    def hist(h):
        return reports.markdown_text(", ".join(f"{k} ({v})" for k, v in h.items()))

    run, ext = volumes["run"], volumes["external"]
    rows = [
        ["volumes", run["volumes"], ext["volumes"]],
        ["shapes", hist(run["shapes"]), hist(ext["shapes"])],
        ["voxel sizes (mm)", hist(run["zooms"]), hist(ext["zooms"])],
        ["orientations", hist(run["orientations"]), hist(ext["orientations"])],
    ]
    for key in sorted(set(run["intensity_median"]) | set(ext["intensity_median"])):
        rows.append(
            [
                f"raw intensity {key} (median over volumes)",
                *(
                    f"{side['intensity_median'][key]:.4g}"
                    if key in side["intensity_median"]
                    else "-"
                    for side in (run, ext)
                ),
            ]
        )
    return ["", "### Volumes", "", *reports.markdown_table(["measure", "run", "external"], rows)]


def markdown_maker(task_markdown: Callable[[dict, dict], str]) -> Callable[[dict, dict], str]:
    """report_external_<cohort>.md's renderer: the cohort, the summary beside the
    in-distribution test and the differences first, then the task's own report (its title
    left out)."""

    def markdown(report: dict, figures: dict[str, str]) -> str:
        name = reports.markdown_text(report["cohort"]["name"])
        head = [
            f"# External evaluation: cohort {name}",
            "",
            *_cohort_markdown(report),
            *_summary_markdown(report),
            *_differences_markdown(report),
            "## The full report on this cohort",
            "",
        ]
        body = task_markdown(report, figures).split("\n", 1)[1]
        return "\n".join(head) + body

    return markdown
