"""Each task kind's report, and the one evaluation path every report goes through.

A `Reporter` renders one task kind's report: it builds the report from the outputs, prints its
table, writes its Markdown, draws its figures and TensorBoard images. `REPORTERS` holds one per
kind of `tasks.KINDS` (`register` adds one). `evaluate_weights` predicts validation and a split,
calibrates on validation through the task, and writes the report, the predictions CSV and the
figures: validation during training, the test report at the end of `main`, `evaluate` and
`compare` all use it.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from alz_jax.core import steps
from alz_jax.data import bags, input_pipeline
from alz_jax.evaluation import (
    bag_predictions,
    figures,
    multiclass_reports,
    reports,
    saliency,
    scan_methods,
    tasks,
    uncertainty,
)
from alz_jax.evaluation.settings import EvalSettings
from alz_jax.host import storage


@dataclasses.dataclass(frozen=True)
class Reporter:
    """How one task kind's report is built and shown."""

    # (split, records, outputs by view, data metadata, step, calibration by view, settings,
    # class names) -> (report, units)
    build: Callable[..., tuple[dict, dict]]
    text: Callable[[dict], str]  # the console table
    markdown: Callable[[dict, dict[str, str]], str]  # report_<split>.md, figure paths given
    figures: Callable[[dict, dict], dict]  # (report, units) -> {name: Figure}
    # (records, outputs, class names, title) -> TensorBoard images of a validation
    validation_images: Callable[..., dict]
    # (report, units, data, split, records, probs, model, params, pixel stats, size, settings) ->
    # explanation figures (Grad-CAM), or None for a kind without them
    saliency: Callable[..., dict] | None = None


REPORTERS: dict[str, Reporter] = {
    # build, console table, Markdown, figures, validation images[, saliency]
    tasks.BinaryTask.kind: Reporter(
        reports.build_report, reports.format_report, reports.format_markdown,
        figures.report_figures, reports.validation_images, reports.saliency_figures,
    ),
    tasks.MulticlassTask.kind: Reporter(
        multiclass_reports.build_report, multiclass_reports.format_report,
        multiclass_reports.format_markdown, figures.multiclass_figures,
        multiclass_reports.validation_images,
    ),
    # Ordered stages: the K-class report with the ordinal metrics and the band (its `task`).
    tasks.OrdinalTask.kind: Reporter(
        multiclass_reports.build_report, multiclass_reports.format_report,
        multiclass_reports.format_markdown, figures.multiclass_figures,
        multiclass_reports.validation_images,
    ),
}  # fmt: skip


def register(kind: str, reporter: Reporter) -> None:
    """Adds the report of a task kind registered with tasks.register."""
    REPORTERS[kind] = reporter


def reporter(task: tasks.Task) -> Reporter:
    """The Reporter of `task`'s kind."""
    return REPORTERS[task.kind]


def format_report(report: dict) -> str:
    """The console table of a saved or fresh report of any task, then its scan-level methods
    side by side."""
    text = reporter(tasks.of_report(report)).text(report)
    if report.get("bag_model"):
        text = "\n".join([textwrap.fill(report["bag_model"], 100), text])
    if report.get("scan_methods"):
        text = "\n".join([text, *scan_methods.methods_text(report["scan_methods"])])
    if report.get("uncertainty"):
        names = report.get("class_names") or tasks.of_report(report).default_class_names()
        text = "\n".join([text, *uncertainty.text_lines(report["uncertainty"], names)])
    return text


def calibrate(
    task: tasks.Task, records: dict, outputs_by_view: dict[str, np.ndarray],
    settings: EvalSettings, subjects_known: bool,
) -> dict:  # fmt: skip
    """The task's calibration on validation: of the plain view ("plain", without test-time
    augmentation), and with test-time views of all of them ("tta") for a task that calibrates
    them apart; for another the plain view's calibration lists every view."""
    if not task.calibrates_views:
        return {"plain": task.calibrate(records, outputs_by_view, settings, subjects_known)}
    plain = dataclasses.replace(settings, tta=())
    out = {"plain": task.calibrate(records, {"plain": outputs_by_view["plain"]}, plain,
                                   subjects_known)}  # fmt: skip
    if settings.tta:
        out["tta"] = task.calibrate(records, outputs_by_view, settings, subjects_known)
    return out


def evaluate_weights(
    task: tasks.Task, *, data, model, params, pixel_stats: dict,
    pipeline: input_pipeline.PipelineSpec, batch_size: int, mesh, split: str, step: int,
    weights: str, selection: dict | None, workdir: str | Path, settings: EvalSettings,
    writer=None, about: dict | None = None,
) -> dict:  # fmt: skip
    """Predicts validation and `split` with `params`, calibrates on validation, and writes the
    report (JSON, Markdown), predictions CSV and figures into `workdir` (process 0); returns the
    report. `writer` (a CLU metric writer) also receives the figures as images; `about` (the
    run's model, config and data folder: SavedRun.about) heads the report."""
    views = ("plain", *settings.tta)
    fns = {view: steps.make_predict_step(model, pixel_stats, mesh, view) for view in views}
    splits = ["validation"] if split == "validation" else ["validation", split]
    if data.has_split(CALIBRATION):  # the prediction sets are calibrated on it
        splits.append(CALIBRATION)
    outputs, bag = {}, {}
    for s in splits:
        predictors = {v: (params, fns[v]) for v in views}
        if pipeline.bags:
            bag[s] = bag_predictions.predict_split_bags(
                data, s, predictors, pipeline, batch_size, mesh
            )
            outputs[s] = {v: found.outputs for v, found in bag[s].items()}
        else:
            outputs[s] = reports.predict_split_multi(
                data, s, predictors, pipeline, batch_size, mesh
            )
    metadata = data.report_metadata()
    subjects_known = metadata.get("subject_source") != "scan_id"
    calibration = calibrate(task, data.records("validation"), outputs["validation"], settings,
                            subjects_known)  # fmt: skip
    held_out = uncertainty_source(task, data, outputs, calibration["plain"], settings,
                                  subjects_known)  # fmt: skip
    records = data.records(split)
    shown = reporter(task)
    report, units = shown.build(split, records, outputs[split], metadata, step, calibration,
                                settings, data.class_names, task=task)  # fmt: skip
    report["task"] = task.kind
    report["task_options"] = task.options()
    report["weights"] = weights
    report["selection"] = selection
    report["about"] = about or {}
    if bag:
        report["bag_model"] = BAG_NOTE
    slice_outputs = {s: bag[s]["plain"].slice_outputs if bag else outputs[s]["plain"]
                     for s in splits}  # fmt: skip
    report["scan_methods"], vote = scan_level_methods(
        task, data, split, slice_outputs, {s: outputs[s]["plain"] for s in splits} if bag else {},
        model, settings, subjects_known,
    )  # fmt: skip
    if jax.process_index() != 0:
        return report
    workdir = storage.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    temperature = report["calibration"]["temperature"]
    plain = task.probabilities({"plain": outputs[split]["plain"]}, temperature)
    report["uncertainty"] = uncertainty.report(
        records, task.class_probs(plain), task.level_decide(calibration["plain"]), held_out,
        settings, subjects_known, data.class_names,
    )  # fmt: skip
    tta = task.probabilities(outputs[split], temperature) if settings.tta else None
    extra = {
        **(vote_columns(vote, data.class_names) if vote is not None else {}),
        **(bag_columns(bag[split]["plain"], data.class_names) if bag else {}),
    }
    task.write_predictions(records, plain, outputs[split]["plain"], data.class_names,
                           workdir / f"predictions_{split}.csv", tta, extra)  # fmt: skip
    rendered = shown.figures(report, units)
    rendered["risk_coverage"] = figures.risk_coverage_figure(
        {lv: m["risk_coverage"] for lv, m in report["uncertainty"]["levels"].items()},
        f"{split} split, step {step}, {weights}: accuracy of the cases answered",
    )  # fmt: skip
    if bag:
        rendered.update(attention_strips(report, units, data, split, records, bag[split]["plain"],
                                         pipeline, settings))  # fmt: skip
    if shown.saliency is not None:
        explained = shown.saliency(report, units, data, split, records, plain, model,
                                   params, pixel_stats, pipeline.image_size, settings)  # fmt: skip
        rendered.update(explained)
    return reports.write_outputs(report, rendered, workdir, writer, with_scan_methods(shown))


def uncertainty_source(
    task: tasks.Task, data, outputs: dict, calibration: dict, settings: EvalSettings,
    subjects_known: bool,
) -> dict:  # fmt: skip
    """The prediction sets' calibration (uncertainty.calibrate) on the plain view's
    probabilities of the calibration split where the data set has one
    (data.calibration_fraction), else of validation; the abstention threshold on validation."""

    def probs(split: str) -> np.ndarray:
        return task.probabilities({"plain": outputs[split]["plain"]}, calibration["temperature"])

    held_out = (data.records(CALIBRATION), probs(CALIBRATION)) if CALIBRATION in outputs else None
    return task.calibrate_uncertainty(data.records("validation"), probs("validation"),
                                      calibration, settings, subjects_known, held_out)  # fmt: skip


CALIBRATION = "calibration"


BAG_NOTE = (
    "A scan model: it predicts each scan from all its slices, and every image carries its "
    "scan's prediction, so the slice level is the scan level weighted by slices; its slice "
    "model alone is 'slice model + average' under Scan-level methods."
)


def with_scan_methods(shown: Reporter) -> Callable[[dict, dict[str, str]], str]:
    """The reporter's Markdown, followed by the scan-level methods side by side."""

    def markdown(report: dict, figure_paths: dict[str, str]) -> str:
        text = shown.markdown(report, figure_paths)
        if report.get("bag_model"):
            text = text.replace("\n## Metrics\n", f"\n## Metrics\n\n{report['bag_model']}\n", 1)
        if report.get("scan_methods"):
            text = (
                text.rstrip("\n") + "\n\n" + scan_methods.methods_markdown(report["scan_methods"])
            )
        if report.get("uncertainty"):
            block = uncertainty.markdown(report["uncertainty"], figure_paths.get("risk_coverage"))
            text = text.rstrip("\n") + "\n" + "\n".join(block) + "\n"
        return text

    return markdown


def scan_level_methods(
    task: tasks.Task, data, split: str, slice_outputs: dict[str, np.ndarray],
    bag_outputs: dict[str, np.ndarray], model: steps.Model, settings: EvalSettings,
    subjects_known: bool,
) -> tuple[dict | None, np.ndarray | None]:  # fmt: skip
    """The scan and subject levels of the slice model averaged, of its soft vote weighted by
    each slice position's validation accuracy (ClinicaDL's), and for a scan model of the bag
    model itself (its slices alone are the slice model), side by side with paired intervals
    (scan_methods.compare_methods); and the vote of each record's scan on `split` (None where
    slice positions are unknown). None, None for the validation split itself, which chooses."""
    if split == "validation":
        return None, None
    records = {s: data.records(s) for s in ("validation", split)}
    probs = {s: task.probabilities({"plain": slice_outputs[s]}, 1.0) for s in records}
    methods = {s: {scan_methods.AVERAGE: probs[s]} for s in records}
    weights = None
    if scan_methods.positions_known(records["validation"]):
        weights = scan_methods.position_weights(
            records["validation"], probs["validation"], task, data.class_names
        )
        for s, split_records in records.items():
            methods[s][scan_methods.WEIGHTED_VOTE] = scan_methods.weighted_vote(
                split_records, probs[s], weights
            )
    if bag_outputs:
        for s in records:
            methods[s][scan_methods.bag_method(model.spec.aggregator)] = task.probabilities(
                {"plain": bag_outputs[s]}, 1.0
            )
    section = scan_methods.compare_methods(
        records[split], methods[split], records["validation"], methods["validation"], task,
        settings, subjects_known, data.class_names,
    )  # fmt: skip
    # What `compare` needs to apply the vote to this run's predictions again.
    section["position_weights"] = {str(k): float(v) for k, v in (weights or {}).items()}
    return section, methods[split].get(scan_methods.WEIGHTED_VOTE)


def vote_columns(vote: np.ndarray, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """The weighted vote of each record's scan as predictions columns (`compare
    --weighted_vote` reads them): vote_prob_ad, or vote_prob_<class> per class."""
    if vote.ndim == 1:
        return {scan_methods.VOTE_COLUMN: vote}
    return {f"{scan_methods.VOTE_COLUMN_PREFIX}{name}": vote[:, k]
            for k, name in enumerate(class_names)}  # fmt: skip


def bag_columns(
    found: bag_predictions.BagPredictions, class_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """A scan model's extra predictions columns: each slice's weight in its scan's bag and its
    contribution to the bag's decision (weight x its margin alone, or for K classes x its
    logit of each class alone: for mean pooling these add up to the bag's)."""
    alone = np.asarray(found.slice_outputs)
    contribution = found.weights[:, None] * alone.reshape(len(alone), -1)
    columns = {"bag_weight": found.weights}
    if contribution.shape[1] == 1:
        columns["slice_contribution"] = contribution[:, 0]
    else:
        columns.update({f"slice_contribution_{name}": contribution[:, k]
                        for k, name in enumerate(class_names)})  # fmt: skip
    return columns


def _strip_scans(report: dict, units: dict, count: int) -> list[str]:
    """The scans whose bags are drawn: as Grad-CAM chooses them (what the model gets right and
    how it fails) for NC/AD; for K classes the most confident scan of each true class in turn."""
    scans = units["scan"]
    if np.ndim(scans.probs) == 1:
        return [scan for scan, _ in saliency.choose_scans(scans, report["scan"]["threshold"],
                                                          count)]  # fmt: skip
    order = np.argsort(-scans.probs.max(axis=1), kind="stable")
    queues = [[i for i in order if scans.labels[i] == c] for c in range(scans.probs.shape[1])]
    chosen = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(str(scans.keys[queue.pop(0)][0]))
    return chosen


def attention_strips(
    report: dict, units: dict, data, split: str, records: dict,
    found: bag_predictions.BagPredictions, pipeline: input_pipeline.PipelineSpec,
    settings: EvalSettings,
) -> dict:  # fmt: skip
    """A scan model's bags drawn as strips of their slices with each slice's weight, for the
    scans Grad-CAM would show (settings.gradcam_scans), noted in the report."""
    chosen = _strip_scans(report, units, settings.gradcam_scans)
    scans = bags.ScanIndex.from_records(records, split)
    scan_number = {str(scan): i for i, scan in enumerate(scans.scan_ids)}
    source, transform = data.source(split), input_pipeline.EvalTransform(pipeline.image_size)
    probs = {str(k[0]): p for k, p in zip(units["scan"].keys, units["scan"].probs, strict=True)}
    out = {}
    for i, scan_id in enumerate(chosen):
        rows = scans.members[scan_number[scan_id]]
        images = np.stack([transform(source[int(r)])["image"] for r in rows])
        label = data.class_names[int(records["label"][rows[0]])]
        prob = np.asarray(probs[scan_id])
        called = f"P({data.class_names[int(prob.argmax())]})" if prob.ndim else "P(AD)"
        out[f"attention_{i}"] = scan_methods.attention_strip(
            images, found.weights[rows], records["slice_index"][rows],
            f"scan {scan_id}: {len(rows)} slices", float(prob.max()), label, called,
        )  # fmt: skip
    report["attention_scans"] = chosen
    return out
