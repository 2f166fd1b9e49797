"""Evaluating a trained run on another cohort: a collection it never saw, read with the run's own
preprocessing, its classes mapped onto the run's, every image of it predicted.

    python -m alz_jax.evaluate --workdir=W --data.manual_dir=OTHER [--data.layout=auto] \
        [--class_mapping=A:B,C:-] [--cohort=NAME] [--checkpoint=best] [--weights=selected]

The other cohort's data set is the run's `config.data` with only the fields of DATA_FLAGS
replaced (the folder, its layout, where TFDS keeps the build, how its labels are named), built
under the `external` protocol (every image in test). The temperature and thresholds are those
stored with the checkpoint, chosen on the run's own validation split: nothing is fitted on the
other cohort. Writes report_external_<cohort>.{json,md}, predictions_external_<cohort>.csv and
the figures <name>_external_<cohort>.png into the workdir; report_test.* is never touched.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
from pathlib import Path

import jax
import numpy as np

from alz_jax.core import sharding, steps
from alz_jax.data import dataset, preprocess
from alz_jax.evaluation import external_report, metrics, reports, task_reports, uncertainty
from alz_jax.host import storage
from alz_jax.host.errors import UserError
from alz_jax.run import specs
from alz_jax.run.saved_run import SavedRun
from alz_jax.tfds_builders.mri_slices.layouts.base import LayoutError

# The config.data fields that describe how the other cohort is read and labelled, one
# `--data.<field>` flag each; every other data field (slicing, windows) stays the run's.
DATA_FLAGS = (
    "manual_dir", "layout", "data_dir", "label_names",
    # A volume layout's labelling (its slicing stays the run's: the same preprocessing).
    "labels_tsv", "volume_classes", "oasis_labels", "oasis_ad_cdr", "oasis_blank_cdr",
    "oasis_image", "volume_voxels", "volume_workers",
)  # fmt: skip
# The run's data fields that describe its own folder: the other cohort's start from these
# (detected layout, its own label table), unless given as --data.<field>.
COHORT_DEFAULTS = {"layout": "auto", "labels_tsv": "", "label_names": "",
                   "group_near_duplicates": False}  # fmt: skip
# Images sampled per cohort (evenly over the records, deterministic) for pixel statistics.
INTENSITY_SAMPLE = 512
DROP = "-"  # --class_mapping=X:- leaves class X out


def cohort_name(manual_dir: str, given: str | None = None) -> str:
    """The cohort's name in file names: `given`, else the folder's name, reduced to
    [A-Za-z0-9_-] (other runs of characters become one '_')."""
    raw = given or Path(str(manual_dir).rstrip("/\\")).expanduser().name
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", raw).strip("_")
    if not name:
        raise UserError(f"--cohort={raw!r}: no letters, digits, '_' or '-' to name the files by.")
    return name


def parse_class_mapping(text: str) -> dict[str, str]:
    """--class_mapping 'A:B,C:-' as {A: B, C: '-'}; a UserError for an entry without ':'."""
    mapping = {}
    for entry in (e.strip() for e in (text or "").split(",")):
        if not entry:
            continue
        source, colon, target = (p.strip() for p in entry.partition(":"))
        if not colon or not source or not target:
            raise UserError(
                f"--class_mapping entry {entry!r}: expected COHORT_CLASS:RUN_CLASS or "
                f"COHORT_CLASS:{DROP} (leave it out), entries separated by commas."
            )
        mapping[source] = target
    return mapping


def map_classes(found: list[str], run_names: list[str], given: dict[str, str]) -> list[int | None]:
    """Each of the cohort's classes (label order) -> the run's label index, or None (dropped):
    identity for equal names, else --class_mapping; a UserError names what cannot be mapped."""
    unknown = [s for s in given if s not in found]
    if unknown:
        raise UserError(
            f"--class_mapping names {', '.join(unknown)}, not a class of the cohort "
            f"(its classes: {', '.join(found)})."
        )
    bad = sorted({t for t in given.values() if t != DROP and t not in run_names})
    if bad:
        raise UserError(
            f"--class_mapping maps to {', '.join(bad)}, not a class of the run (its "
            f"classes: {', '.join(run_names)}; '{DROP}' leaves a class out)."
        )
    unmapped = [n for n in found if n not in given and n not in run_names]
    if unmapped:
        example = ",".join(f"{n}:{run_names[-1]}" for n in unmapped)
        raise UserError(
            f"The cohort's class{'es' if len(unmapped) > 1 else ''} {', '.join(unmapped)} "
            f"{'are' if len(unmapped) > 1 else 'is'} not among the run's classes "
            f"({', '.join(run_names)}): map each with --class_mapping (e.g. "
            f"--class_mapping={example}) or leave it out with --class_mapping=NAME:{DROP}."
        )
    target = {n: given.get(n, n) for n in found}
    return [None if target[n] == DROP else run_names.index(target[n]) for n in found]


def external_spec(run_data: dataset.DataSpec, overrides: dict[str, str]) -> dataset.DataSpec:
    """The other cohort's DataSpec: the run's (its slicing and normalisation above all: the same
    preprocessing), with COHORT_DEFAULTS and then the DATA_FLAGS fields given replaced, read from
    a folder (never the synthetic stand-in), every image in test (the `external` protocol, a
    pooled build: also a cohort too small to split, or a class missing from a folder)."""
    unknown = set(overrides) - set(DATA_FLAGS)
    if unknown:
        accepted = ", ".join(f"--data.{f}" for f in DATA_FLAGS)
        raise UserError(f"--data.{sorted(unknown)[0]}: not one of {accepted}.")
    typed = dict(overrides)
    for field, value in overrides.items():
        if isinstance(getattr(run_data, field), int) and isinstance(value, str):
            try:  # the flags are text; a number field (volume_workers) takes its number
                typed[field] = int(value)
            except ValueError:
                raise UserError(f"--data.{field}={value}: expected a whole number.") from None
    return dataclasses.replace(
        run_data,
        # What describes the run's own folder, not the other's: its layout, its label table,
        # its parquet label names, near-duplicate groups standing in for missing subject IDs.
        **{**COHORT_DEFAULTS, **typed},
        synthetic_seed=None,
        protocol="external",
    )


def run_slice_range(saved: SavedRun) -> str:
    """The run's slice window as `lo,hi` where it chose one with `auto` (from its
    run/split_manifest.json: the window of its own classes, not one recomputed on the other
    cohort's), else its data.slice_range as configured."""
    configured = saved.spec.data.slice_range
    path = storage.path(saved.workdir) / "run" / "split_manifest.json"
    if configured != "auto" or not path.exists():
        return configured
    window = json.loads(path.read_text()).get("protocol", {}).get("slice_window")
    return f"{window[0]},{window[1]}" if window else configured


def _unit_counts(records: dict, keep: np.ndarray) -> dict[str, int]:
    return {
        "images": int(keep.sum()),
        "scans": len(set(records["scan_id"][keep].tolist())),
        "subjects": len(set(records["subject_id"][keep].tolist())),
    }


def remap_labels(data: dataset.AdniData, targets: list[int | None]) -> dict:
    """Relabels the cohort's pooled records with the run's labels and leaves the dropped classes
    out of its test split (the built data set is not rebuilt); returns what was dropped, per
    class as found and in all."""
    found = list(data.class_names)
    records = data.records("test")
    labels = np.asarray(records["label"], np.int64)
    dropped = np.isin(labels, [k for k, t in enumerate(targets) if t is None])
    lookup = np.array([-1 if t is None else t for t in targets], np.int64)
    # Dropped records keep -1: they are in no split.
    data.pooled = {**data.pooled, "label": lookup[np.asarray(data.pooled["label"], np.int64)]}
    data.positions = {**data.positions, "test": data.positions["test"][~dropped]}
    by_class = {
        n: _unit_counts(records, dropped & (labels == k))["images"]
        for k, n in enumerate(found)
        if targets[k] is None
    }
    if not len(data.positions["test"]):
        raise UserError(
            f"Every image of {data.manual_dir} was left out by --class_mapping "
            f"(classes {', '.join(found)}): nothing to evaluate."
        )
    return {**_unit_counts(records, dropped), "by_class": by_class}


def intensity_stats(source, limit: int = INTENSITY_SAMPLE) -> dict:
    """Pixel statistics (0-255) of up to `limit` decoded images of a source, sampled evenly
    over its records (the same ones every time): mean, std, 1st and 99th percentile, and the
    histogram of the image shapes found."""
    n = len(source)
    chosen = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int)) if n else []
    pixels, shapes = [], collections.Counter()
    for i in chosen:
        image = preprocess.decode_image(source[int(i)]["image"])
        pixels.append(image.ravel())
        shapes["x".join(str(s) for s in image.shape)] += 1
    values = np.concatenate(pixels).astype(np.float64) if pixels else np.zeros(1)
    p1, p99 = np.percentile(values, [1, 99])
    return {
        "images": len(chosen),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p1": float(p1),
        "p99": float(p99),
        "shapes": dict(shapes.most_common()),
    }


def slices_per_scan(records: dict) -> dict:
    """How many slices the scans hold: min, median and max."""
    counts = np.array(list(collections.Counter(records["scan_id"].tolist()).values()))
    if not len(counts):
        return {}
    return {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max())}


def volume_summary(volumes: dict | None) -> dict | None:
    """A builder's `volumes` metadata ({scan: {shape, zooms, orientation, intensity}}) in
    brief: histograms of shapes, voxel sizes and orientations, and the median raw-intensity
    percentiles and moments; None without it."""
    if not volumes:
        return None
    entries = list(volumes.values())

    def histogram(key: str) -> dict[str, int]:
        def text(value) -> str:
            if key == "orientation":
                return str(value)
            return "x".join(f"{v:g}" for v in np.ravel(np.asarray(value, np.float64)))

        return dict(collections.Counter(text(e.get(key)) for e in entries).most_common())

    intensity = {
        k: float(np.median([e["intensity"][k] for e in entries if k in e.get("intensity", {})]))
        for k in ("p_low", "p_high", "mean", "std", "min", "max")
        if any(k in e.get("intensity", {}) for e in entries)
    }
    return {
        "volumes": len(entries),
        "shapes": histogram("shape"),
        "zooms": histogram("zooms"),
        "orientations": histogram("orientation"),
        "intensity_median": intensity,
    }


def _run_data(saved: SavedRun) -> tuple[dataset.AdniData | None, str | None]:
    """The run's own data set (for its train split's statistics), or None and why not."""
    try:
        return dataset.prepare(saved.spec.data), None
    except (UserError, LayoutError) as e:
        return None, f"the run's data set could not be opened: {str(e).splitlines()[0]}"


def differences(saved: SavedRun, data: dataset.AdniData, run_names: list[str]) -> dict:
    """The two cohorts side by side: pixel statistics and shapes of a fixed sample, slices per
    scan, subjects/scans/images per class, and the volumes where both builds recorded them."""
    run_data, why = _run_data(saved)
    external = data.records("test")
    known = data.metadata.get("subject_source") != "scan_id"
    out = {
        "external_test": {
            "intensity": intensity_stats(data.source("test")),
            "slices_per_scan": slices_per_scan(external),
            "counts": metrics.split_counts(external, known, run_names),
            "image_sizes_in_folder": data.metadata.get("audit", {}).get("image_sizes"),
        },
        "run_train": {"note": why, "pixel_stats": saved.pixel_stats},
    }
    if run_data is not None:
        train = run_data.records("train")
        out["run_train"].update(
            {
                "intensity": intensity_stats(run_data.source("train")),
                "slices_per_scan": slices_per_scan(train),
                "counts": metrics.split_counts(
                    train,
                    run_data.metadata.get("subject_source") != "scan_id",
                    list(run_data.class_names),
                ),
                "image_sizes_in_folder": run_data.metadata.get("audit", {}).get("image_sizes"),
            }
        )
        ours, theirs = run_data.metadata.get("volumes"), data.metadata.get("volumes")
        if ours and theirs:
            out["volumes"] = {"run": volume_summary(ours), "external": volume_summary(theirs)}
    return out


def in_distribution(workdir: str) -> dict | None:
    """The run's report_test.json, or None where the test split was not evaluated."""
    path = storage.path(workdir) / "report_test.json"
    return json.loads(path.read_text()) if path.exists() else None


def _calibration(saved: SavedRun, restored) -> dict:
    """The checkpoint's stored validation calibration, with what a report reads filled in for
    a checkpoint that stored none (temperature 1, thresholds 0.5)."""
    cal = dict(saved.calibration(restored))
    temperature = cal.get("temperature", 1.0)
    cal.setdefault("temperature_applied", temperature != 1.0)
    cal.setdefault("temperature_fit", {"temperature": temperature, "at_bound": False})
    cal.setdefault("views", ["plain"])
    if "thresholds" in cal:
        cal.setdefault(
            "threshold_details",
            {lv: {"threshold": t, "defined": True} for lv, t in cal["thresholds"].items()},
        )
    return cal


@dataclasses.dataclass(frozen=True)
class Request:
    """What `evaluate --data.manual_dir` asks for."""

    workdir: str
    data: dict  # DATA_FLAGS fields given (manual_dir among them)
    class_mapping: str = ""
    cohort: str | None = None
    checkpoint: str = "best"
    weights: str = "selected"
    bootstrap_samples: int | None = None


def _open(request: Request):
    """The run, its restored weights and calibration, and the other cohort prepared and mapped."""
    folder = Path(request.data["manual_dir"]).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"--data.manual_dir={request.data['manual_dir']}: no such folder (the "
            "other cohort's images, in any layout that audit reads)."
        )
    name = cohort_name(request.data["manual_dir"], request.cohort)
    mapping = parse_class_mapping(request.class_mapping)
    saved = SavedRun.open(request.workdir)
    mesh = sharding.make_mesh()
    restored = saved.restore(request.checkpoint, request.weights, mesh)
    run_names = saved.class_names(restored)
    run_data = dataclasses.replace(saved.spec.data, slice_range=run_slice_range(saved))
    data = dataset.prepare(external_spec(run_data, request.data))
    found = list(data.class_names)
    targets = map_classes(found, run_names, mapping)
    by_class = {
        n: _unit_counts(data.records("test"), data.records("test")["label"] == k)
        for k, n in enumerate(found)
    }
    dropped = remap_labels(data, targets)
    present = set(data.records("test")["label"].tolist())
    cohort = {
        "name": name,
        "folder": str(data.manual_dir),
        "layout": data.metadata.get("layout"),
        "class_names_found": found,
        "classes_found": by_class,
        "mapping": {
            n: (DROP if t is None else run_names[t]) for n, t in zip(found, targets, strict=True)
        },
        "dropped": dropped,
        "run_classes_absent": [n for k, n in enumerate(run_names) if k not in present],
        "source_fingerprint": data.source_fingerprint,
        "subject_source": data.metadata.get("subject_source"),
    }
    return saved, restored, mesh, data, run_names, cohort


def evaluate(request: Request) -> tuple[dict, list[Path]]:
    """Evaluates the run on the other cohort and writes its report, predictions and figures
    into the workdir; returns the report and the paths written."""
    saved, restored, mesh, data, run_names, cohort = _open(request)
    settings = specs.eval_settings(
        saved.config.eval, bootstrap_samples=request.bootstrap_samples, tta=(), gradcam_scans=0
    )
    task, split = saved.spec.task, f"external_{cohort['name']}"
    predict = steps.make_predict_step(saved.model(), saved.pixel_stats, mesh, "plain")
    outputs = reports.predict_split_multi(
        data,
        "test",
        {"plain": (restored.params, predict)},
        saved.spec.pipeline,
        saved.spec.batch_size,
        mesh,
    )
    records = data.records("test")
    metadata = {
        **data.report_metadata(),
        "class_names": run_names,
        "class_distribution": {
            "test": {n: int(np.sum(records["label"] == k)) for k, n in enumerate(run_names)}
        },
    }
    calibration = _calibration(saved, restored)
    shown = task_reports.reporter(task)
    report, units = shown.build(
        split,
        records,
        outputs,
        metadata,
        restored.step,
        {"plain": calibration},
        settings,
        run_names,
        task=task,
    )
    if "uncertainty" in calibration:  # the run's prediction sets, calibrated on its validation
        probs = task.probabilities({"plain": outputs["plain"]}, calibration["temperature"])
        report["uncertainty"] = uncertainty.report(
            records, task.class_probs(probs), task.level_decide(calibration),
            calibration["uncertainty"], settings, report["subjects_known"], run_names,
        )  # fmt: skip
    report.update(
        task=task.kind,
        task_options=task.options(),
        weights=restored.weights,
        selection=restored.selection,
        # What the report is about: the run's model and config, the cohort's folder (never
        # the run's synthetic stand-in).
        about=dataclasses.replace(
            saved,
            spec=dataclasses.replace(
                saved.spec,
                data=external_spec(saved.spec.data, {"manual_dir": str(data.manual_dir)}),
            ),
        ).about(data),
    )
    reference = in_distribution(saved.workdir)
    head = {
        "split": split,
        "cohort": cohort,
        "summary": external_report.summary(report, reference, request.workdir),
        "calibration_source": external_report.CALIBRATION_TEXT,
        "differences": differences(saved, data, run_names),
    }
    report = {**head, **{k: v for k, v in report.items() if k not in head}}
    workdir = storage.path(saved.workdir)
    csv = workdir / f"predictions_{split}.csv"
    if jax.process_index() == 0:
        probs = task.probabilities({"plain": outputs["plain"]}, calibration["temperature"])
        task.write_predictions(records, probs, outputs["plain"], run_names, csv)
        rendered = shown.figures(report, units)
        markdown = external_report.markdown_maker(shown.markdown)
        report = reports.write_outputs(report, rendered, workdir, None, markdown)
    logging.info("External evaluation of %s on %s written.", saved.workdir, cohort["folder"])
    paths = [workdir / f"report_{split}.json", workdir / f"report_{split}.md", csv]
    return report, paths
