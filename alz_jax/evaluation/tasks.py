"""The kinds of task a run can be, one class each: two classes (NC/AD) and K classes (stages).

A task says what the predict step returns per image, how those outputs become probabilities,
what validation calibrates (a temperature, and for two classes the per-level thresholds), the
flat validation scalars that pick the best checkpoint, the predictions CSV's columns, how the
`predict` command calls an image or a scan, what the export says about its logits, and which
registered metrics it reports. The task is resolved once into the run spec (`for_classes`) or
read from a saved report (`of_report`); nothing else in the code base branches on the number
of classes. Rendering the report (tables, figures) is `task_reports`' job, keyed by `kind`.

A new kind (an ordinal task, set-valued predictions) is a subclass registered with `register`;
`for_classes` and `of_report` find it through `resolve_kind`.
"""

from __future__ import annotations

import abc
import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import jax
import numpy as np

from alz_jax.evaluation import bootstrap, conformal, metric_registry, metrics, uncertainty
from alz_jax.evaluation import multiclass as mc
from alz_jax.evaluation import settings as settings_lib
from alz_jax.evaluation.settings import EvalSettings
from alz_jax.host import storage, tables
from alz_jax.host.errors import UserError
from alz_jax.models import heads

RECORD_COLUMNS = ("file_name", "scan_id", "subject_id", "label")


class Task(abc.ABC):
    """One kind of classification task over `num_classes` classes."""

    kind: ClassVar[str]
    probability_label: ClassVar[str] = "P"  # the heading of `predict`'s probabilities
    # Whether test-time views get their own calibration (binary: thresholds chosen under the
    # views); otherwise the plain view's calibration serves them and lists them.
    calibrates_views: ClassVar[bool] = False
    # What `uncalibrated` amounts to, for the warning when a checkpoint stored no calibration.
    uncalibrated_text: ClassVar[str] = "temperature 1"

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.num_classes == self.num_classes

    def __hash__(self) -> int:
        return hash((self.kind, self.num_classes))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes})"

    # Whether the classes are an ordinal scale (prediction sets are then ranges).
    ordered: ClassVar[bool] = False

    def options(self) -> dict:
        """What besides the kind and class count makes the task (a report stores them)."""
        return {}

    # ---- Prediction sets and abstention (uncertainty.py): over class probabilities (n, K). ----

    def class_probs(self, probs: np.ndarray) -> np.ndarray:
        """The report's probabilities as class probabilities (n, K)."""
        return np.asarray(probs, np.float64)

    def from_class_probs(self, class_probs: np.ndarray) -> np.ndarray:
        """The inverse of class_probs."""
        return class_probs

    def level_decide(self, calibration: dict) -> uncertainty.Decide:
        """(level, class probabilities) -> the call at the level's threshold (where any)."""
        thresholds = calibration.get("thresholds") or {}
        return lambda level, cp: self.decide(self.from_class_probs(cp),
                                             thresholds.get(level, 0.5))  # fmt: skip

    def calibrate_uncertainty(
        self, records: dict, probs: np.ndarray, calibration: dict, settings: EvalSettings,
        subjects_known: bool, held_out: tuple[dict, np.ndarray] | None = None,
    ) -> dict:  # fmt: skip
        """uncertainty.calibrate on validation's `records` and `probs` (the report's, after the
        calibration's temperature); with `held_out` (the calibration split's records and
        probabilities) the prediction sets calibrate on it, the abstention stays validation's."""
        decide = self.level_decide(calibration)
        fitted = uncertainty.calibrate(records, self.class_probs(probs), decide, settings,
                                       subjects_known, self.ordered)  # fmt: skip
        if held_out is None:
            return fitted
        sets = uncertainty.calibrate(
            held_out[0],
            self.class_probs(held_out[1]),
            decide,
            settings,
            subjects_known,
            self.ordered,
            "the calibration split",
        )
        for level, entry in sets["levels"].items():
            entry["abstain_threshold"] = fitted["levels"][level]["abstain_threshold"]
        return sets

    # ---- Metric names, from the registry. ----

    def metric_names(self, role: str) -> tuple[str, ...]:
        """The registered metrics this task reports in `role` (metric_registry.ROLES)."""
        return metric_registry.names(self.kind, role)

    @abc.abstractmethod
    def decide(self, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """The class index called for each unit's probabilities (at `threshold` where the task
        has one)."""

    def counts(
        self, units: metrics.Units, weights: np.ndarray, threshold: float = 0.5, n_bins: int = 10,
        conformal_fit: dict | None = None,
    ) -> metric_registry.Counts:  # fmt: skip
        """What the registry's formulas read: `units` under each row of `weights` (B, m), with
        their prediction sets where `conformal_fit` (conformal.calibrate's) is given."""
        sets = (
            None
            if conformal_fit is None
            else conformal.prediction_sets(self.class_probs(units.probs), conformal_fit)
        )
        return metric_registry.Counts(
            labels=np.asarray(units.labels, np.int64),
            predicted=self.decide(units.probs, threshold),
            probs=np.asarray(units.probs, np.float64),
            weights=weights,
            num_classes=self.num_classes,
            n_bins=n_bins,
            sets=sets,
        )

    def weighted_scores(
        self, units: metrics.Units, weights: np.ndarray, role: str = "interval",
        threshold: float = 0.5, n_bins: int = 10, conformal_fit: dict | None = None,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """The metrics of `role` for `units` under each row of `weights`, NaN where undefined."""
        counts = self.counts(units, weights, threshold, n_bins, conformal_fit)
        return metric_registry.scores(self.kind, self.metric_names(role), counts)

    def bootstrap_intervals(
        self, units: dict[str, metrics.Units], n_samples: int = 1000, seed: int = 0,
        thresholds: dict[str, float] | None = None, confidence: float = 0.95,
        chunk: int = bootstrap.CHUNK,
    ) -> dict[str, dict[str, list[float] | None]]:  # fmt: skip
        """Percentile intervals of the "interval" metrics per level (each level decided at its
        threshold, 0.5 unless given), resampling subjects (bootstrap.py)."""
        thresholds = thresholds or {}

        def score(level: str, u: metrics.Units, w: np.ndarray) -> dict[str, np.ndarray]:
            return self.weighted_scores(u, w, "interval", thresholds.get(level, 0.5))

        return bootstrap.intervals(units, score, n_samples, seed, confidence, chunk)

    def level_thresholds(
        self, units: dict[str, metrics.Units], settings: EvalSettings
    ) -> dict[str, dict]:
        """Each level's decision threshold chosen on validation `units` by
        `settings.threshold` (metrics.choose_threshold's entries); none where the task decides
        without one."""
        del units, settings
        return {}

    # ---- Outputs and probabilities. ----

    @abc.abstractmethod
    def device_outputs(self, logits: jax.Array) -> jax.Array:
        """What the predict step returns per image from the model's logits (B, K), traced."""

    @abc.abstractmethod
    def probabilities(self, outputs_by_view: dict[str, np.ndarray], temperature: float):
        """Probabilities the report uses: the mean over views at `temperature`."""

    @abc.abstractmethod
    def default_class_names(self) -> list[str]:
        """Class names when a checkpoint recorded none."""

    def check_class_names(self, class_names: Sequence[str]) -> None:
        """Refuses a data set whose classes this task would misread (UserError); any K
        classes do for the base."""
        del class_names

    # ---- Validation. ----

    @abc.abstractmethod
    def calibrate(
        self, records: dict, outputs_by_view: dict[str, np.ndarray], settings: EvalSettings,
        subjects_known: bool,
    ) -> dict:  # fmt: skip
        """What is chosen on validation outputs and applied unchanged to every other split."""

    @abc.abstractmethod
    def validation_metrics(self, records: dict, outputs: np.ndarray) -> dict:
        """Flat scalars for TensorBoard and best-checkpoint selection."""

    @abc.abstractmethod
    def uncalibrated(self) -> dict:
        """The calibration `predict` and `export` use when a checkpoint stored none."""

    # ---- Files. ----

    @abc.abstractmethod
    def prediction_columns(self, class_names: Sequence[str], tta: bool = False) -> list[str]:
        """The predictions CSV's columns."""

    @abc.abstractmethod
    def prediction_cells(
        self, i: int, probs: np.ndarray, outputs: np.ndarray, class_names: Sequence[str],
        probs_tta: np.ndarray | None,
    ) -> dict:  # fmt: skip
        """The task's cells of image `i`'s CSV row."""

    @abc.abstractmethod
    def read_probabilities(self, rows: list[dict], class_names: Sequence[str]) -> np.ndarray:
        """The probabilities the report used, from the CSV rows."""

    def write_predictions(
        self, records: dict, probs: np.ndarray, outputs: np.ndarray,
        class_names: Sequence[str], path: str | Path, probs_tta: np.ndarray | None = None,
        extra: dict[str, np.ndarray] | None = None,
    ) -> None:  # fmt: skip
        """One CSV row per image: file_name, scan_id, subject_id, label and the task's cells,
        then the `extra` columns (a scan model's slice weights)."""
        extra = extra or {}
        columns = self.prediction_columns(class_names, probs_tta is not None) + list(extra)

        def rows():
            for i in range(len(probs)):
                yield {
                    "file_name": records["file_name"][i],
                    "scan_id": records["scan_id"][i],
                    "subject_id": records["subject_id"][i],
                    "label": int(records["label"][i]),
                    **self.prediction_cells(i, probs, outputs, class_names, probs_tta),
                    **{name: f"{float(values[i]):.6g}" for name, values in extra.items()},
                }

        # Written whole (a local path or gs://); names quoted where a spreadsheet would run them.
        storage.path(path).write_text(tables.to_text(columns, rows()))

    def read_predictions(
        self, path: str | Path, class_names: Sequence[str] = ()
    ) -> tuple[dict, np.ndarray]:
        """A predictions CSV back as (records, probabilities), names unquoted as written."""
        rows = list(csv.DictReader(io.StringIO(storage.path(path).read_text(), newline="")))
        records = {
            k: np.asarray([tables.read_cell(r[k]) for r in rows], dtype=object)
            for k in RECORD_COLUMNS[:3]
        }
        records["label"] = np.asarray([int(r["label"]) for r in rows], np.int64)
        return records, self.read_probabilities(rows, class_names)

    # ---- Pooled metrics (cross-validation) and `compare`. ----

    @abc.abstractmethod
    def multilevel_metrics(
        self, records: dict, probs: np.ndarray, subjects_known: bool,
        class_names: Sequence[str] | None = None,
    ) -> dict:  # fmt: skip
        """The metrics of every level at the task's default decision."""

    @abc.abstractmethod
    def thresholds_of(self, report: dict) -> dict[str, float]:
        """The per-level decision thresholds a report applied ({} where none)."""

    @abc.abstractmethod
    def pooled_decision_text(self) -> str:
        """How cross-validation's pooled and per-fold metrics decide."""

    # ---- `predict` and `export`. ----

    @abc.abstractmethod
    def image_rows(self, base_rows: list[dict], outputs: np.ndarray, loaded: dict) -> list[dict]:
        """`predict`'s row per image: `base_rows` ({file, scan_id, slice}) completed."""

    @abc.abstractmethod
    def scan_rows(self, rows: list[dict], calibration: dict) -> list[dict]:
        """`predict`'s row per scan (files named <scanID>_<slice>)."""

    @abc.abstractmethod
    def decision_text(self, result: dict) -> str:
        """How `predict` called the images (the thresholds, or the argmax)."""

    @abc.abstractmethod
    def prediction_line(self, probability: str, call: str, name: str) -> str:
        """One line of `predict`'s table."""

    @abc.abstractmethod
    def called_probability(self, row: dict) -> float:
        """The probability shown beside a row's call."""

    def row_class_probs(self, rows: list[dict], class_names: Sequence[str]) -> np.ndarray:
        """Class probabilities (n, K) of `predict`'s rows."""
        return np.asarray([[r[f"prob_{n}"] for n in class_names] for r in rows], np.float64)

    def format_predictions(self, result: dict) -> list[str]:
        """`predict`'s table: the checkpoint and its calibration, then per image and per scan
        the probability, the call ("refer" for the least confident where the checkpoint has an
        abstention rate) and the prediction set."""

        def rows(items: list[dict], name: str) -> list[str]:
            return [
                self.prediction_line(
                    f"{self.called_probability(r):.3f}",
                    r.get("call", r["predicted"]),
                    name.format(**r) + (f"  set {r['set']}" if "set" in r else ""),
                )
                for r in items
            ]

        sets = result.get("uncertainty")
        lines = [
            f"Checkpoint step {result['checkpoint_step']} ({result['weights']} weights); "
            f"temperature {result['calibration']['temperature']:.3f}; "
            + self.decision_text(result)
            + (
                f"; sets: {sets['score'].upper()} {sets['calibration']}, coverage "
                f"{100 * (1 - sets['alpha']):.0f}% on {sets['source']}"
                + (
                    f", refer {100 * sets['abstain_rate']:.0f}% least confident"
                    if sets["abstain_rate"]
                    else ""
                )
                if sets
                else ""
            ),
            self.prediction_line(self.probability_label, "call", "file"),
            *rows(result["images"], "{file}"),
        ]
        if result["scans"]:
            lines.append(self.prediction_line(self.probability_label, "call", "scan (slices)"))
            lines += rows(result["scans"], "{scan_id} ({slices})")
        return lines

    @abc.abstractmethod
    def export_output_text(self) -> str:
        """How to read the exported logits."""


class BinaryTask(Task):
    """NC against AD: the predict step returns the margin z_AD - z_NC, P(AD) = sigmoid(margin /
    T), and validation chooses a decision threshold per level."""

    kind = "binary"
    probability_label = "P(AD)"
    calibrates_views = True
    uncalibrated_text = "temperature 1, thresholds 0.5"

    def device_outputs(self, logits: jax.Array) -> jax.Array:
        """The margin z_AD - z_NC per image."""
        return logits[:, 1] - logits[:, 0]

    def decide(self, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """AD (1) where P(AD) >= threshold."""
        return (np.asarray(probs) >= threshold).astype(np.int64)

    def probabilities(self, outputs_by_view: dict[str, np.ndarray], temperature: float):
        """P(AD): the mean over views of sigmoid(margin / temperature)."""
        return np.mean([metrics.sigmoid(m / temperature) for m in outputs_by_view.values()], axis=0)

    def class_probs(self, probs: np.ndarray) -> np.ndarray:
        """(P(NC), P(AD)) per unit."""
        p = np.asarray(probs, np.float64)
        return np.stack([1.0 - p, p], axis=1)

    def from_class_probs(self, class_probs: np.ndarray) -> np.ndarray:
        """P(AD)."""
        return np.asarray(class_probs)[:, 1]

    def row_class_probs(self, rows: list[dict], class_names: Sequence[str]) -> np.ndarray:
        """(P(NC), P(AD)) of `predict`'s rows."""
        return self.class_probs(np.asarray([r["prob_ad"] for r in rows], np.float64))

    def default_class_names(self) -> list[str]:
        """NC and AD."""
        return list(metrics.CLASS_NAMES)

    def check_class_names(self, class_names: Sequence[str]) -> None:
        """The two classes must be NC then AD: the report reads the second as the positive
        class (sensitivity for AD, P(AD), NC/AD calls) and would mislabel anything else."""
        if tuple(class_names) != tuple(metrics.CLASS_NAMES):
            raise UserError(
                f"The data set's two classes are {', '.join(class_names)}; the two-class path "
                "reads them as NC and AD. Name the folders as control and disease (NC/CN/Normal, "
                "AD/Alzheimer/Demented: docs/stages.md) so that the second is the positive class."
            )

    def calibrate(
        self, records: dict, outputs_by_view: dict[str, np.ndarray], settings: EvalSettings,
        subjects_known: bool,
    ) -> dict:  # fmt: skip
        """The temperature and per-level thresholds chosen on validation predictions.

        The temperature is fitted on the plain view's slices and applied only with
        `settings.temperature_scaling`; thresholds are chosen on the probabilities the report
        uses (after temperature, averaged over views)."""
        fit = metrics.fit_temperature(records["label"], outputs_by_view["plain"])
        temperature = fit["temperature"] if settings.temperature_scaling else 1.0
        probs = self.probabilities(outputs_by_view, temperature)
        method, target = metrics.parse_threshold_method(settings.threshold)
        chosen = {
            level: metrics.choose_threshold(u.labels, u.probs, method, target)
            for level, u in metrics.level_units(records, probs, subjects_known).items()
        }
        out = {
            "temperature": temperature,
            "temperature_applied": settings.temperature_scaling,
            "temperature_fit": fit,
            "threshold_method": settings.threshold,
            "thresholds": {level: c["threshold"] for level, c in chosen.items()},
            "threshold_details": chosen,
            "views": list(outputs_by_view),
            "validation_images": len(probs),
            # What the thresholds were chosen on, for the report to say.
            "validation_counts": metrics.split_counts(records, subjects_known),
        }
        out["uncertainty"] = self.calibrate_uncertainty(records, probs, out, settings,
                                                        subjects_known)  # fmt: skip
        return out

    def level_thresholds(
        self, units: dict[str, metrics.Units], settings: EvalSettings
    ) -> dict[str, dict]:
        """The threshold of each level chosen on validation `units` as `calibrate` chooses
        them: youden or sensitivity:T (settings.threshold) on the level's P(AD)."""
        method, target = metrics.parse_threshold_method(settings.threshold)
        return {
            level: metrics.choose_threshold(u.labels, u.probs, method, target)
            for level, u in units.items()
        }

    def validation_metrics(self, records: dict, outputs: np.ndarray) -> dict:
        """At threshold 0.5: loss, then the slice and scan (scan_ prefix) validation metrics
        defined here, then the slice ECE."""
        prob_ad = metrics.sigmoid(outputs)
        levels = metrics.multilevel_metrics(records, prob_ad, subjects_known=False)
        out = {"loss": metrics.nll(records["label"], prob_ad)}
        for level, prefix in (("slice", ""), ("scan", "scan_")):
            m = levels[level]
            for name in self.metric_names("validation"):
                if m[name] is not None:
                    out[prefix + name] = m[name]
        out["ece"] = metrics.reliability_bins(records["label"], prob_ad)["ece"]
        return out

    def uncalibrated(self) -> dict:
        """Temperature 1 and thresholds 0.5."""
        return {"temperature": 1.0, "thresholds": {lv: 0.5 for lv in metrics.LEVELS},
                "threshold_method": "none stored: 0.5"}  # fmt: skip

    def prediction_columns(self, class_names: Sequence[str], tta: bool = False) -> list[str]:
        """file_name, scan_id, subject_id, label, prob_ad (the probability the report used),
        logit_ad (z_AD - z_NC) [, prob_ad_tta]."""
        return [*RECORD_COLUMNS, "prob_ad", "logit_ad", *(("prob_ad_tta",) if tta else ())]

    def prediction_cells(self, i, probs, outputs, class_names, probs_tta) -> dict:
        """prob_ad, logit_ad [, prob_ad_tta]."""
        row = {"prob_ad": f"{probs[i]:.6f}", "logit_ad": f"{outputs[i]:.6f}"}
        if probs_tta is not None:
            row["prob_ad_tta"] = f"{probs_tta[i]:.6f}"
        return row

    def read_probabilities(self, rows: list[dict], class_names: Sequence[str]) -> np.ndarray:
        """P(AD) per image."""
        return np.asarray([float(r["prob_ad"]) for r in rows], np.float64)

    def multilevel_metrics(self, records, probs, subjects_known, class_names=None) -> dict:
        """metrics.multilevel_metrics at 0.5."""
        return metrics.multilevel_metrics(records, probs, subjects_known)

    def thresholds_of(self, report: dict) -> dict[str, float]:
        """Each level's threshold chosen on validation."""
        return {lv: report[lv]["threshold"] for lv in metrics.LEVELS if lv in report}

    def pooled_decision_text(self) -> str:
        """Thresholds: each fold's own; 0.5 when pooled."""
        return (
            "across_folds: each fold's own, chosen on its validation split; "
            "pooled_out_of_fold: 0.5 (the folds' thresholds differ); AUCs need none"
        )

    def image_rows(self, base_rows: list[dict], outputs: np.ndarray, loaded: dict) -> list[dict]:
        """{file, scan_id, slice, logit_ad, prob_ad, predicted (at the slice threshold)}."""
        cal = loaded["calibration"]
        rows = []
        for row, margin in zip(base_rows, outputs, strict=True):
            prob = float(metrics.sigmoid(float(margin) / cal["temperature"]))
            call = "AD" if prob >= cal["thresholds"]["slice"] else "NC"
            rows.append({**row, "logit_ad": float(margin), "prob_ad": prob, "predicted": call})
        return rows

    def scan_rows(self, rows: list[dict], calibration: dict) -> list[dict]:
        """Per scan: slice count, mean P(AD), the call at the scan threshold."""
        by_scan: dict[str, list[float]] = {}
        for row in rows:
            if row["scan_id"]:
                by_scan.setdefault(row["scan_id"], []).append(row["prob_ad"])
        threshold = calibration["thresholds"]["scan"]
        return [
            {"scan_id": scan, "slices": len(p), "prob_ad": float(np.mean(p)),
             "predicted": "AD" if np.mean(p) >= threshold else "NC"}
            for scan, p in sorted(by_scan.items())
        ]  # fmt: skip

    def decision_text(self, result: dict) -> str:
        """The thresholds chosen on validation."""
        cal = result["calibration"]
        return (
            f"thresholds chosen on validation ({cal['threshold_method']}): slice "
            f"{cal['thresholds']['slice']:.3f}, scan {cal['thresholds']['scan']:.3f}"
        )

    def prediction_line(self, probability: str, call: str, name: str) -> str:
        """P(AD), the call and the file or scan."""
        return f"{probability:>7} {call:>4}  {name}"

    def called_probability(self, row: dict) -> float:
        """P(AD)."""
        return row["prob_ad"]

    def export_output_text(self) -> str:
        """P(AD) from the two logits, called at the level's threshold."""
        return ("logits (B, 2) float32 in class_names order; P(AD) = sigmoid((logit_AD - "
                "logit_NC) / temperature); call AD when P(AD) >= the level's threshold (a scan's "
                "P(AD) is the mean over its slices)")  # fmt: skip


class MulticlassTask(Task):
    """K unordered (or name-ordered) classes: the predict step returns the logits (B, K), the
    most probable class is the call, and validation fits only a temperature."""

    kind = "multiclass"

    def device_outputs(self, logits: jax.Array) -> jax.Array:
        """The logits (B, K)."""
        return logits

    def decide(self, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """The most probable class (ties to the lowest index)."""
        del threshold
        return np.argmax(probs, axis=1).astype(np.int64)

    def probabilities(self, outputs_by_view: dict[str, np.ndarray], temperature: float):
        """Class probabilities (n, K): the mean over views of softmax(logits / temperature)."""
        return np.mean([mc.softmax(z / temperature) for z in outputs_by_view.values()], axis=0)

    def default_class_names(self) -> list[str]:
        """ "0".."K-1"."""
        return [str(k) for k in range(self.num_classes)]

    def calibrate(
        self, records: dict, outputs_by_view: dict[str, np.ndarray], settings: EvalSettings,
        subjects_known: bool,
    ) -> dict:  # fmt: skip
        """The temperature fitted on the plain view's validation logits (n, K), applied only
        with `settings.temperature_scaling`. No threshold: the argmax decides."""
        fit = mc.fit_temperature(records["label"], outputs_by_view["plain"])
        out = {
            "temperature": fit["temperature"] if settings.temperature_scaling else 1.0,
            "temperature_applied": settings.temperature_scaling,
            "temperature_fit": fit,
            "views": list(outputs_by_view),
            "validation_images": len(outputs_by_view["plain"]),
            "validation_counts": metrics.split_counts(records, subjects_known),
        }
        # The plain view's, as the report's and predict's (test-time views are the report's).
        probs = self.probabilities({"plain": outputs_by_view["plain"]}, out["temperature"])
        out["uncertainty"] = self.calibrate_uncertainty(records, probs, out, settings,
                                                        subjects_known)  # fmt: skip
        return out

    def validation_metrics(self, records: dict, outputs: np.ndarray) -> dict:
        """Loss (NLL, no smoothing), then the slice and scan (scan_ prefix) validation metrics
        defined here (macro one-vs-rest AUC as `roc_auc`; undefined ones omitted), then the
        slice top-label ECE."""
        probs = mc.softmax(outputs)
        levels = mc.multilevel_metrics(records, probs, subjects_known=False, decide=self.decide)
        out = {"loss": mc.nll(records["label"], probs)}
        for level, prefix in (("slice", ""), ("scan", "scan_")):
            m = {**levels[level], "roc_auc": levels[level]["roc_auc_ovr_macro"]}
            for name in self.metric_names("validation"):
                if m[name] is not None:
                    out[prefix + name] = m[name]
        out["ece"] = levels["slice"]["ece"]
        return out

    def uncalibrated(self) -> dict:
        """Temperature 1."""
        return {"temperature": 1.0}

    def prediction_columns(self, class_names: Sequence[str], tta: bool = False) -> list[str]:
        """file_name, scan_id, subject_id, label, predicted (class indices), prob_<class> and
        logit_<class> per class [, prob_<class>_tta per class]."""
        names = list(class_names)
        return [
            *RECORD_COLUMNS, "predicted",
            *(f"prob_{n}" for n in names), *(f"logit_{n}" for n in names),
            *((f"prob_{n}_tta" for n in names) if tta else ()),
        ]  # fmt: skip

    def prediction_cells(self, i, probs, outputs, class_names, probs_tta) -> dict:
        """The predicted index (the task's decision on the report's probabilities), then per
        class the probability and logit [, the test-time augmentation's probability]."""
        row = {"predicted": int(self.decide(probs[i : i + 1])[0])}
        for c, name in enumerate(class_names):
            row[f"prob_{name}"] = f"{probs[i, c]:.6f}"
            row[f"logit_{name}"] = f"{outputs[i, c]:.6f}"
            if probs_tta is not None:
                row[f"prob_{name}_tta"] = f"{probs_tta[i, c]:.6f}"
        return row

    def read_probabilities(self, rows: list[dict], class_names: Sequence[str]) -> np.ndarray:
        """Class probabilities (n, K) in `class_names` order."""
        return np.asarray(
            [[float(r[f"prob_{n}"]) for n in class_names] for r in rows], np.float64
        ).reshape(len(rows), len(class_names))

    def multilevel_metrics(self, records, probs, subjects_known, class_names=None) -> dict:
        """multiclass.multilevel_metrics, each unit called by the task's decision."""
        return mc.multilevel_metrics(records, probs, subjects_known, class_names, self.decide)

    def thresholds_of(self, report: dict) -> dict[str, float]:
        """None: the argmax decides."""
        return {}

    def pooled_decision_text(self) -> str:
        """The argmax."""
        return "the most probable class (no threshold)"

    def image_rows(self, base_rows: list[dict], outputs: np.ndarray, loaded: dict) -> list[dict]:
        """{file, scan_id, slice, predicted (the most probable class), prob_<class> each},
        probabilities at the validation temperature."""
        temperature = loaded["calibration"]["temperature"]
        probs = mc.softmax(np.asarray(outputs, np.float64) / temperature)
        names = loaded["class_names"]
        return [
            {**row, "predicted": names[int(c)],
             **{f"prob_{n}": float(v) for n, v in zip(names, p, strict=True)}}
            for row, p, c in zip(base_rows, probs, self.decide(probs), strict=True)
        ]  # fmt: skip

    def scan_rows(self, rows: list[dict], calibration: dict) -> list[dict]:
        """Per scan: slice count, the mean of each class's probability and the most probable."""
        if not rows:
            return []
        names = [k.removeprefix("prob_") for k in rows[0] if k.startswith("prob_")]
        by_scan: dict[str, list[list[float]]] = {}
        for row in rows:
            if row["scan_id"]:
                by_scan.setdefault(row["scan_id"], []).append([row[f"prob_{n}"] for n in names])
        out = []
        for scan, probs in sorted(by_scan.items()):
            mean = np.mean(probs, axis=0)
            out.append({
                "scan_id": scan, "slices": len(probs),
                "predicted": names[int(self.decide(mean[None])[0])],
                **{f"prob_{n}": float(v) for n, v in zip(names, mean, strict=True)},
            })  # fmt: skip
        return out

    def decision_text(self, result: dict) -> str:
        """The most probable of the classes."""
        return f"the most probable class of {', '.join(result['class_names'])}"

    def prediction_line(self, probability: str, call: str, name: str) -> str:
        """The called class's probability, the class and the file or scan."""
        return f"{probability:>7} {call:<18} {name}"

    def called_probability(self, row: dict) -> float:
        """The probability of the called class."""
        return row["prob_" + row["predicted"]]

    def export_output_text(self) -> str:
        """Softmax of the K logits; the most probable class."""
        return (f"logits (B, {self.num_classes}) float32 in class_names order; probabilities = "
                "softmax(logits / temperature); call the most probable class (a scan's "
                "probabilities are the mean over its slices)")  # fmt: skip


DECISIONS = settings_lib.DECISIONS


def ordinal_decision(probs: np.ndarray, rule: str) -> np.ndarray:
    """The stage called from class probabilities (n, K) by `rule`: "argmax" the most probable
    (ties to the lowest), "median" the smallest stage whose cumulative probability reaches 1/2
    (what CORAL and CORN call by counting P(y > k) > 1/2), "expected" the expected stage
    sum_k k p_k rounded half up."""
    probs = np.asarray(probs, np.float64)
    if rule == "argmax":
        return np.argmax(probs, axis=1).astype(np.int64)
    if rule == "median":
        # A hair below 1/2 so that a cumulative sum of exactly 1/2 (in exact arithmetic) counts.
        return np.argmax(np.cumsum(probs, axis=1) >= 0.5 - 1e-12, axis=1).astype(np.int64)
    if rule == "expected":
        expected = probs @ np.arange(probs.shape[1])
        return np.clip(np.floor(expected + 0.5), 0, probs.shape[1] - 1).astype(np.int64)
    raise UserError(f"config.eval.ordinal_decision = {rule!r}: expected one of "
                    f"{', '.join(DECISIONS)}.")  # fmt: skip


DECISION_WORDS = {"argmax": "the most probable stage", "median": "the median stage",
                  "expected": "the expected stage, rounded"}  # fmt: skip


class OrdinalTask(MulticlassTask):
    """K ordered classes (dementia stages): the model's head is softmax, CORAL or CORN; the
    predict step returns K class log-probabilities (the logits, for softmax), so every K-class
    file, calibration and report reads them unchanged; the call is the decision rule's, and the
    report adds the ordinal metrics (MAE, within-one, the kappas)."""

    kind = "ordinal"
    ordered = True

    def __init__(self, num_classes: int, head: str = "softmax", decision: str = "auto"):
        super().__init__(num_classes)
        heads.get(head)  # an unknown head fails here, naming model.head's choices
        if decision not in DECISIONS:
            ordinal_decision(np.ones((1, 1)), decision)
        self.head = head
        # CORAL and CORN call the median stage (counting P(y > k) > 1/2); softmax the argmax.
        self.decision = decision if decision != "auto" else (
            "argmax" if head == "softmax" else "median")  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and (other.head, other.decision) == (self.head, self.decision)

    def __hash__(self) -> int:
        return hash((self.kind, self.num_classes, self.head, self.decision))

    def __repr__(self) -> str:
        return (f"OrdinalTask(num_classes={self.num_classes}, head={self.head!r}, "
                f"decision={self.decision!r})")  # fmt: skip

    def options(self) -> dict:
        """The head and the decision rule."""
        return {"head": self.head, "decision": self.decision}

    def device_outputs(self, logits: jax.Array) -> jax.Array:
        """Softmax: the logits (B, K); CORAL or CORN: the K class log-probabilities from the
        K - 1 binary logits (models/heads.py), whose softmax is the class probabilities."""
        if self.head == "softmax":
            return logits
        return heads.get(self.head).log_probs(logits)

    def decide(self, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """The stage the decision rule calls (ordinal_decision)."""
        del threshold
        return ordinal_decision(probs, self.decision)

    def decision_text(self, result: dict) -> str:
        """The decision rule over the ordered stages."""
        return f"{DECISION_WORDS[self.decision]} of {' < '.join(result['class_names'])}"

    def pooled_decision_text(self) -> str:
        """The decision rule."""
        return f"{DECISION_WORDS[self.decision]} (no threshold)"

    def export_output_text(self) -> str:
        """What the head's outputs are and how the stage is called."""
        read = {
            "softmax": f"logits (B, {self.num_classes}) float32 in class_names order; "
                       "probabilities = softmax(logits / temperature)",
            "coral": f"CORAL logits (B, {self.num_classes - 1}) float32: P(stage > k) = "
                     "sigmoid(logit_k); class probabilities are their differences",
            "corn": f"CORN logits (B, {self.num_classes - 1}) float32: P(stage > k | stage > "
                    "k-1) = sigmoid(logit_k), P(stage > k) their running product",
        }[self.head]  # fmt: skip
        tempered = ("" if self.head == "softmax" else "; the reports and `predict` apply the "
                    "temperature as softmax(log(probabilities) / temperature)")  # fmt: skip
        return (f"{read}{tempered}; call {DECISION_WORDS[self.decision]} (a scan's "
                "probabilities are the mean over its slices)")  # fmt: skip


KINDS: dict[str, type[Task]] = {}


def register(task_type: type[Task]) -> type[Task]:
    """Adds a task kind (usable as a class decorator)."""
    KINDS[task_type.kind] = task_type
    return task_type


register(BinaryTask)
register(MulticlassTask)
register(OrdinalTask)


def resolve_kind(num_classes: int) -> str:
    """The kind of task of a classifier over `num_classes` classes: the only place the count
    decides it (two classes are NC/AD, with thresholds; more are stages, argmax)."""
    return BinaryTask.kind if num_classes == 2 else MulticlassTask.kind


def for_classes(num_classes: int, kind: str | None = None, options: dict | None = None) -> Task:
    """The task of a run with `num_classes` classes (of `kind`, with its `options`, when a
    config or report names them)."""
    return KINDS[kind or resolve_kind(num_classes)](num_classes, **(options or {}))


def for_run(num_classes: int, head: str, ordinal: bool | None, decision: str = "auto") -> Task:
    """The task of a run: two classes are NC/AD; more are ordinal when `ordinal` (None: when
    the head is an ordinal one, until the class names are known: `with_class_names`)."""
    if num_classes == 2:
        return BinaryTask(2)
    if ordinal or (ordinal is None and head != "softmax"):
        return OrdinalTask(num_classes, head, decision)
    return MulticlassTask(num_classes)


def of_report(report: dict) -> Task:
    """The task a saved report was made by (reports before the field: by their classes)."""
    num_classes = int(report.get("num_classes", 2))
    return for_classes(num_classes, report.get("task"), report.get("task_options"))


def of_outputs(outputs: np.ndarray) -> Task:
    """The task whose predict step returns `outputs`: margins (n,) or logits (n, K)."""
    return for_classes(2 if np.ndim(outputs) == 1 else np.shape(outputs)[1])
