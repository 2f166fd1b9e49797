"""What a report says about when the model does not know, for every task: prediction sets with a
coverage guarantee (split-conformal, conformal.py) and selective prediction (selective.py).

Both are fitted per level, with the probabilities the report uses (after the temperature) and
the task's decision: `calibrate`. The prediction sets calibrate on validation, or on the
calibration split carved out of train (data.calibration_fraction). Conformal calibration needs
exchangeable units: subjects are used as they are; at slice and scan level one unit is drawn
per subject (seeded), never a subject's slices or repeat scans as independent cases. The
abstention threshold of each level, always on validation, is the confidence below which
validation's least confident `eval.abstain_rate` of that level's units fall. `report` applies
both to a split, with subject-bootstrap intervals; `annotate` applies them to `predict`'s
rows. docs/uncertainty.md says what the guarantee means and what it does not.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence

import numpy as np

from alz_jax.evaluation import bootstrap, conformal, metrics, selective
from alz_jax.evaluation.settings import EvalSettings

# (level, class probabilities (n, K)) -> the task's call per unit
Decide = Callable[[str, np.ndarray], np.ndarray]
ABSTENTION_RATES = (0.05, 0.1, 0.2)
CURVE_POINTS = 100  # the risk-coverage curve in the report's JSON: coverage 1%, 2%, ... 100%


def one_per_subject(u: metrics.Units, seed: int) -> metrics.Units:
    """One unit per subject, drawn with `seed`, in the units' order."""
    order = np.random.default_rng(seed).permutation(len(u.labels))
    _, first = np.unique(np.asarray(u.subjects, str)[order], return_index=True)
    keep = np.sort(order[first])
    return metrics.Units([u.keys[i] for i in keep], u.labels[keep], u.probs[keep],
                         u.subjects[keep])  # fmt: skip


def calibration_units(units: dict[str, metrics.Units], seed: int) -> dict[str, metrics.Units]:
    """The exchangeable units each level calibrates on: one per subject, drawn with `seed`, at
    slice and scan level (a subject's slices, or repeat scans, are not independent cases);
    subjects as they are. Without subject IDs a scan is its own subject."""
    return {level: u if level == "subject" else one_per_subject(u, seed)
            for level, u in units.items()}  # fmt: skip


def _threshold_or_none(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def calibrate(
    records: dict, class_probs: np.ndarray, decide: Decide, settings: EvalSettings,
    subjects_known: bool, ordinal: bool, source: str = "validation",
) -> dict:  # fmt: skip
    """Per level: the conformal quantiles (conformal.calibrate) on the level's exchangeable
    units, and the abstention threshold on all its units; JSON-ready. `source` names where
    `records` come from."""
    units = metrics.level_units(records, class_probs, subjects_known)
    exchangeable = calibration_units(units, settings.bootstrap_seed)
    levels = {}
    for level, u in units.items():
        cal = exchangeable[level]
        fitted = conformal.calibrate(
            cal.probs, cal.labels, settings.conformal_alpha, settings.conformal_score,
            settings.conformal_calibration, ordinal,
        )  # fmt: skip
        confidence = selective.confidence(u.probs, decide(level, u.probs))
        threshold = selective.abstention_threshold(confidence, settings.abstain_rate)
        levels[level] = {
            "conformal": fitted,
            "calibration_units": len(cal.labels),
            "abstain_threshold": _threshold_or_none(threshold),
        }
    return {
        "source": source,
        "alpha": settings.conformal_alpha,
        "score": settings.conformal_score,
        "calibration": settings.conformal_calibration,
        "ordinal": ordinal,
        "abstain_rate": settings.abstain_rate,
        "levels": levels,
    }


def _set_scorer(sets: dict[str, np.ndarray]) -> bootstrap.Scorer:
    """conformal.set_scores of each level's sets under the bootstrap's weights."""
    return lambda level, u, w: conformal.set_scores(sets[level], u.labels, w)


def _curve(curve: dict) -> dict:
    """The risk-coverage curve at coverage 1%, 2%, ... 100% (the k = ceil(c n) most confident)."""
    n = len(curve["coverage"])
    if not n:
        return curve
    picks = sorted({max(1, int(np.ceil(c * n - 1e-9))) - 1
                    for c in np.arange(1, CURVE_POINTS + 1) / CURVE_POINTS})  # fmt: skip
    return {key: [curve[key][i] for i in picks] if isinstance(curve[key], list) else curve[key]
            for key in curve}  # fmt: skip


def report(
    records: dict, class_probs: np.ndarray, decide: Decide, calibrated: dict,
    settings: EvalSettings, subjects_known: bool, class_names: Sequence[str],
) -> dict:  # fmt: skip
    """The prediction sets and selective prediction of a split per level: coverage (overall and
    per class), set size, singletons and empty sets with subject-bootstrap intervals; the
    risk-coverage curve, the accuracy at 5, 10 and 20% abstention, and the share `predict`
    would refer at the validation threshold."""
    k = class_probs.shape[1]
    units = metrics.level_units(records, class_probs, subjects_known)
    units = {lv: u for lv, u in units.items() if lv in calibrated["levels"]}
    sets = {lv: conformal.prediction_sets(u.probs, calibrated["levels"][lv]["conformal"])
            for lv, u in units.items()}  # fmt: skip
    intervals = (
        bootstrap.intervals(
            units, _set_scorer(sets), settings.bootstrap_samples, settings.bootstrap_seed
        )
        if settings.bootstrap_samples
        else {lv: {} for lv in units}
    )
    levels = {}
    for level, u in units.items():
        fitted = calibrated["levels"][level]
        summary = conformal.set_summary(sets[level], u.labels, k)
        predicted = decide(level, u.probs)
        confidence = selective.confidence(u.probs, predicted)
        threshold = fitted["abstain_threshold"]
        referred = (selective.refer(confidence, threshold) if threshold is not None
                    else np.zeros(len(u.labels), bool))  # fmt: skip
        answered = ~referred
        levels[level] = {
            **summary,
            "conformal": fitted["conformal"],  # what `compare` recomputes the sets with
            # conformal.set_scores' intervals (per-class coverage is under per_class).
            "ci95": {
                name: ci
                for name, ci in intervals[level].items()
                if not name.startswith("coverage_class")
            },
            "per_class": {
                name: {
                    "coverage": summary["coverage_per_class"][c],
                    "units": int(np.sum(u.labels == c)),
                    "ci95": intervals[level].get(f"coverage_class{c}"),
                }
                for c, name in enumerate(class_names)
            },
            "warning": conformal.warning_text(fitted["conformal"], list(class_names)),
            "calibration_units": fitted["calibration_units"],
            "risk_coverage": _curve(selective.risk_coverage(u.labels, predicted, confidence, k)),
            "abstention": selective.accuracy_at_abstention(
                u.labels, predicted, confidence, k, ABSTENTION_RATES
            ),
            "referred": {
                "threshold": threshold,
                "share": float(referred.mean()) if len(referred) else 0.0,
                "accuracy_answered": float(np.mean(predicted[answered] == u.labels[answered]))
                if answered.any()
                else None,
            },
        }
    return {key: calibrated[key] for key in
            ("source", "alpha", "score", "calibration", "ordinal", "abstain_rate")} | {
        "levels": levels}  # fmt: skip


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _everyone(m: dict, key: str) -> float | None:
    """The metric with every unit answered (the curve's last point), None without units."""
    values = m["risk_coverage"][key]
    return values[-1] if values else None


def _size(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ci(interval) -> str:
    return f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else ""


def heading(section: dict) -> str:
    """One sentence: what the sets promise and where they were calibrated."""
    kind = "a quantile per class (Mondrian)" if section["calibration"] == "class" else "marginal"
    shape = "; ordinal: each set a range of stages" if section["ordinal"] else ""
    return (
        f"Prediction sets: {section['score'].upper()} score, {kind}, alpha "
        f"{section['alpha']:g} (target coverage {100 * (1 - section['alpha']):.0f}%), "
        f"calibrated on {section['source']} (slices and scans: one per subject){shape}."
    )


def _ci95(m: dict, name: str):
    return m["ci95"].get(name)


def text_lines(section: dict, class_names: Sequence[str]) -> list[str]:
    """The console block of the prediction sets and selective prediction."""
    lines = [*textwrap.wrap(heading(section), 140),
             f"{'level':<8} {'coverage [95% CI]':<24} {'size':>5} {'single':>7} {'empty':>6}  "
             "coverage per class"]  # fmt: skip
    for level, m in section["levels"].items():
        per_class = ", ".join(f"{name[:12]} {_pct(c['coverage'])}"
                              for name, c in m["per_class"].items())  # fmt: skip
        lines.append(f"{level:<8} {_pct(m['coverage']) + _ci(_ci95(m, 'coverage')):<24} "
                     f"{_size(m['mean_set_size']):>5} {_pct(m['singleton_share']):>7} "
                     f"{_pct(m['empty_share']):>6}  {per_class}")  # fmt: skip
    lines += [m["warning"] for m in section["levels"].values() if m["warning"]]
    lines.append("Selective prediction: accuracy when the least confident are left out:")
    for level, m in section["levels"].items():
        cells = ", ".join(f"{_pct(a['rate'])} out: {_pct(a['accuracy'])}" for a in m["abstention"])
        refer = m["referred"]
        ref = (
            f"; refer at validation's threshold {refer['threshold']:.3f}: "
            f"{_pct(refer['share'])} referred"
            if refer["threshold"] is not None
            else ""
        )
        lines.append(f"{level:<8} all: {_pct(_everyone(m, 'accuracy'))}, {cells}{ref}")
    return lines


def markdown(section: dict, figure: str | None = None) -> list[str]:
    """The report's sections on prediction sets and selective prediction."""
    md = ["", "## Prediction sets", "", heading(section) + " On exchangeable data the sets "
          "contain the true class at least 1 - alpha of the time on average over calibration "
          "draws (docs/uncertainty.md); not under a shift of cohort or scanner.", "",
          "| level | coverage [95% CI] | mean set size [95% CI] | singletons | empty sets | "
          "calibration units |", "|---|---|---|---|---|---|"]  # fmt: skip
    for level, m in section["levels"].items():
        size_ci = _ci95(m, "set_size")
        md.append(f"| {level} | {_pct(m['coverage'])}{_ci(_ci95(m, 'coverage'))} | "
                  f"{_size(m['mean_set_size'])}"
                  + (f" [{size_ci[0]:.2f}, {size_ci[1]:.2f}]" if size_ci else "")
                  + f" | {_pct(m['singleton_share'])} | {_pct(m['empty_share'])} | "
                  f"{m['calibration_units']} |")  # fmt: skip
    names = next((list(m["per_class"]) for m in section["levels"].values()), [])
    md += [
        "",
        "Coverage per class [95% CI] (units):",
        "",
        "| level | " + " | ".join(names) + " |",
        "|---" * (1 + len(names)) + "|",
    ]
    for level, m in section["levels"].items():
        md.append(f"| {level} | " + " | ".join(
            f"{_pct(c['coverage'])}{_ci(c['ci95'])} ({c['units']})"
            for c in m["per_class"].values()) + " |")  # fmt: skip
    md += [f"- {m['warning']}" for m in section["levels"].values() if m["warning"]]
    md += ["", "## Selective prediction", "",
           "Accuracy (balanced accuracy) of the cases answered when the least confident (by the "
           "probability of the called class) are left out; the curve is in the JSON report "
           "(`uncertainty.levels.<level>.risk_coverage`).", "",
           "| level | all | " + " | ".join(f"{_pct(r)} out" for r in ABSTENTION_RATES)
           + " | referred at validation's threshold |",
           "|---" * (3 + len(ABSTENTION_RATES)) + "|"]  # fmt: skip
    for level, m in section["levels"].items():
        refer = m["referred"]
        everyone = f"{_pct(_everyone(m, 'accuracy'))} ({_pct(_everyone(m, 'balanced_accuracy'))})"
        md.append(f"| {level} | {everyone} | "
                  + " | ".join(f"{_pct(a['accuracy'])} ({_pct(a['balanced_accuracy'])})"
                               for a in m["abstention"])
                  + (f" | {_pct(refer['share'])} (threshold {refer['threshold']:.3f})"
                     if refer["threshold"] is not None else
                     f" | none (eval.abstain_rate = {section['abstain_rate']:g}: floor(rate x "
                     "validation units) = 0)")
                  + " |")  # fmt: skip
    if figure:
        md += ["", f"![risk-coverage]({figure})"]
    return md


def annotate(
    rows: list[dict], class_probs: np.ndarray, predicted: np.ndarray, level: dict,
    class_names: Sequence[str], ordinal: bool,
) -> list[dict]:  # fmt: skip
    """`predict`'s rows of one level with their prediction set and, where the checkpoint has an
    abstention threshold, "refer" for the least confident (`level`: calibrate's entry)."""
    sets = conformal.prediction_sets(class_probs, level["conformal"])
    confidence = selective.confidence(class_probs, predicted)
    threshold = level["abstain_threshold"]
    referred = (selective.refer(confidence, threshold) if threshold is not None
                else np.zeros(len(rows), bool))  # fmt: skip
    return [
        {**row, "set": conformal.format_set(s, list(class_names), ordinal), "refer": bool(r)}
        for row, s, r in zip(rows, sets, referred, strict=True)
    ]
