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
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from alz_jax.core import steps
from alz_jax.data import input_pipeline
from alz_jax.evaluation import figures, multiclass_reports, reports, tasks
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
}  # fmt: skip


def register(kind: str, reporter: Reporter) -> None:
    """Adds the report of a task kind registered with tasks.register."""
    REPORTERS[kind] = reporter


def reporter(task: tasks.Task) -> Reporter:
    """The Reporter of `task`'s kind."""
    return REPORTERS[task.kind]


def format_report(report: dict) -> str:
    """The console table of a saved or fresh report of any task."""
    return reporter(tasks.of_report(report)).text(report)


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
    outputs = {
        s: reports.predict_split_multi(
            data, s, {v: (params, fns[v]) for v in views}, pipeline, batch_size, mesh
        )
        for s in splits
    }
    metadata = data.report_metadata()
    subjects_known = metadata.get("subject_source") != "scan_id"
    calibration = calibrate(task, data.records("validation"), outputs["validation"], settings,
                            subjects_known)  # fmt: skip
    records = data.records(split)
    shown = reporter(task)
    report, units = shown.build(split, records, outputs[split], metadata, step, calibration,
                                settings, data.class_names)  # fmt: skip
    report["task"] = task.kind
    report["weights"] = weights
    report["selection"] = selection
    report["about"] = about or {}
    if jax.process_index() != 0:
        return report
    workdir = storage.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    temperature = report["calibration"]["temperature"]
    plain = task.probabilities({"plain": outputs[split]["plain"]}, temperature)
    tta = task.probabilities(outputs[split], temperature) if settings.tta else None
    task.write_predictions(records, plain, outputs[split]["plain"], data.class_names,
                           workdir / f"predictions_{split}.csv", tta)  # fmt: skip
    rendered = shown.figures(report, units)
    if shown.saliency is not None:
        explained = shown.saliency(report, units, data, split, records, plain, model,
                                   params, pixel_stats, pipeline.image_size, settings)  # fmt: skip
        rendered.update(explained)
    return reports.write_outputs(report, rendered, workdir, writer, shown.markdown)
