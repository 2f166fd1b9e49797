"""Every metric the project reports, registered once: name, display label, direction, the task
kinds and roles it serves, and its formula over weighted counts or probabilities.

Each list of metric names elsewhere derives from here (`names(kind, role)`): the bootstrap
intervals and report tables ("interval"), validation scalars ("validation"), the choices of
`checkpoint.best_metric` ("selection", `best_metric_choices`), `compare`'s columns
("compare") and its robustness curves ("robustness"), cross-validation's summary ("cv"), the
test scalars ("test"), and TensorBoard's HParams columns (`hparam_metrics`). The order of the
registry is the order of every table. `tests/test_metric_registry.py` fails when a list of
metric names is written anywhere else.

A formula maps one level's `Counts` (the units' weighted confusion matrices under B weightings,
with their labels, probabilities and weights) to B values, NaN where the metric is undefined
under a weighting (a class not drawn): a bootstrap resample is one weighting, and the point
estimate is the weighting of all ones.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import numpy as np

from alz_jax.evaluation import metrics
from alz_jax.evaluation import multiclass as mc

LEVELS = metrics.LEVELS
ROLES = ("interval", "validation", "selection", "compare", "cv", "test", "robustness")
BINARY, MULTICLASS, ORDINAL = "binary", "multiclass", "ordinal"


@dataclasses.dataclass
class Counts:
    """One level's units under B weightings (rows of `weights` (B, m)): what formulas read."""

    labels: np.ndarray  # (m,) true classes
    predicted: np.ndarray  # (m,) the task's decision per unit
    probs: np.ndarray  # (m,) P(positive) or (m, K)
    weights: np.ndarray  # (B, m)
    num_classes: int
    n_bins: int = 10  # calibration bins of the ECE
    sets: np.ndarray | None = None  # (m, K) prediction sets (conformal.py), where calibrated

    @functools.cached_property
    def confusion(self) -> np.ndarray:
        """Weighted confusion matrices (B, K, K), rows true, columns predicted."""
        k = self.num_classes
        cells = np.zeros((len(self.labels), k * k))
        cells[np.arange(len(self.labels)), self.labels * k + self.predicted] = 1.0
        return np.einsum("bm,mc->bc", self.weights, cells).reshape(-1, k, k)

    @functools.cached_property
    def binary_rates(self) -> dict[str, np.ndarray]:
        """metrics.confusion_rates of the 2 x 2 matrices, with the (weighted) counts."""
        c = self.confusion
        tn, fp, fn, tp = c[:, 0, 0], c[:, 0, 1], c[:, 1, 0], c[:, 1, 1]
        return {**metrics.confusion_rates(tn, fp, fn, tp), "tn": tn, "fp": fp, "fn": fn, "tp": tp}

    @functools.cached_property
    def class_scores(self) -> dict[str, np.ndarray]:
        """multiclass.confusion_scores of the K x K matrices."""
        return mc.confusion_scores(self.confusion)

    def weighted_ece(self, residual: np.ndarray, score: np.ndarray) -> np.ndarray:
        """(1 / sum w) sum_bins |sum_{i in bin} w_i residual_i| per weighting, bins (lo, hi] of
        `score` as the reports' reliability bins."""
        edges = np.linspace(0.0, 1.0, self.n_bins + 1)
        cells = np.zeros((len(score), self.n_bins))
        cells[np.arange(len(score)), np.searchsorted(edges[1:-1], score)] = residual
        return np.abs(self.weights @ cells).sum(axis=1) / self.weights.sum(axis=1)


def _rate(name: str, *denominators: str) -> Callable[[Counts], np.ndarray]:
    """A binary rate, NaN where its denominator (a sum of counts; the smaller of two sums for
    balanced accuracy) is empty in a weighting."""

    def formula(c: Counts) -> np.ndarray:
        r = c.binary_rates
        sums = [sum(r[k] for k in group.split("+")) for group in denominators]
        return np.where(np.minimum.reduce(sums) > 0, r[name], np.nan) if sums else r[name]

    return formula


def _score(name: str) -> Callable[[Counts], np.ndarray]:
    return lambda c: c.class_scores[name]


def _roc_auc(c: Counts) -> np.ndarray:
    return metrics.ranking_areas(c.labels, c.probs, c.weights)[0]


def _pr_auc(c: Counts) -> np.ndarray:
    return metrics.ranking_areas(c.labels, c.probs, c.weights)[1]


def _binary_ece(c: Counts) -> np.ndarray:
    return c.weighted_ece(c.labels - c.probs, c.probs)


def _top_label_ece(c: Counts) -> np.ndarray:
    confidence = c.probs.max(axis=1)
    return c.weighted_ece((np.argmax(c.probs, axis=1) == c.labels) - confidence, confidence)


def _set_mean(values: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    """The weighted mean over units of `values(sets, labels)`; NaN without prediction sets."""

    def formula(c: Counts) -> np.ndarray:
        if c.sets is None:
            return np.full(len(c.weights), np.nan)
        return (c.weights @ values(c.sets, c.labels)) / c.weights.sum(axis=1)

    return formula


_set_coverage = _set_mean(lambda sets, labels: sets[np.arange(len(labels)), labels] * 1.0)
_set_size = _set_mean(lambda sets, labels: sets.sum(axis=1) * 1.0)


def _macro_ovr_auc(c: Counts) -> np.ndarray:
    # NaN, as wanted, when any class's area is undefined under a weighting.
    return mc.ovr_areas(c.labels, c.probs, c.weights).mean(axis=1)


@dataclasses.dataclass(frozen=True)
class Metric:
    """One registered metric."""

    name: str
    label: str  # a table's column header
    higher_is_better: bool
    # Task kind -> the roles it has there.
    roles: Mapping[str, frozenset[str]]
    # Task kind -> formula over Counts (absent: not computed from counts, e.g. the loss).
    formulas: Mapping[str, Callable[[Counts], np.ndarray]] = dataclasses.field(default_factory=dict)
    levels: tuple[str, ...] = LEVELS
    # Levels whose validation scalar a best checkpoint may be chosen on (slice: no prefix).
    selection_levels: tuple[str, ...] = ("slice",)
    # (split, level, column position) of the HParams tab's columns.
    hparam_columns: tuple[tuple[str, str, int], ...] = ()
    # Role -> the metric this one follows in that role's tables (else registry order).
    after: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Levels shown in the console line of each validation, and the metric's name there.
    progress_levels: tuple[str, ...] = ()
    short: str = ""
    # Binary: the confusion counts the rate is taken over ("tp+fn": the AD units); empty: every
    # unit. A report's rule-of-three caveat counts them.
    counted: str = ""
    # Whether the metric ranks probabilities (no threshold): reports show it once per level.
    threshold_free: bool = False
    # Whether more (or less) is better at all; a target (coverage: 1 - alpha) has no direction,
    # and `compare` gives no share of resamples in which a model is "better".
    directional: bool = True

    @property
    def tasks(self) -> frozenset[str]:
        """The task kinds where the metric is defined."""
        return frozenset(self.roles)

    def formula(self, kind: str) -> Callable[[Counts], np.ndarray]:
        """The formula of the metric for task `kind`."""
        return self.formulas[kind]


def _roles(text: str) -> dict[str, frozenset[str]]:
    """{kind: roles} of "binary roles | K-class roles" (a kind without roles left out)."""
    binary, multiclass = text.split("|")
    return {
        k: frozenset(t.split())
        for k, t in ((BINARY, binary), (MULTICLASS, multiclass))
        if t.split()
    }


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Adds a metric (at the end of every table it appears in)."""
    unknown = {r for roles in metric.roles.values() for r in roles} - set(ROLES)
    if unknown:
        raise ValueError(f"metric {metric.name}: unknown roles {sorted(unknown)}")
    METRICS[metric.name] = metric
    return metric


# Roles per task kind, as "binary roles | K-class roles".
for _metric in (
    Metric("loss", "loss", False, _roles("selection | selection"),
           hparam_columns=(("validation", "slice", 0),), progress_levels=("slice",), short="loss"),
    Metric("accuracy", "accuracy", True,
           _roles("interval validation selection compare cv test robustness"
                  " | interval validation selection compare cv test"),
           {BINARY: _rate("accuracy"), MULTICLASS: _score("accuracy")},
           selection_levels=("slice", "scan"),
           hparam_columns=(("validation", "slice", 1), ("validation", "scan", 2),
                           ("test", "slice", 10), ("test", "scan", 12), ("test", "subject", 13)),
           progress_levels=("slice", "scan"), short="acc"),
    Metric("balanced_accuracy", "balanced acc.", True,
           _roles("interval validation selection compare cv test"
                  " | interval validation selection compare cv test"),
           {BINARY: _rate("balanced_accuracy", "tp+fn", "tn+fp"),
            MULTICLASS: _score("balanced_accuracy")},
           hparam_columns=(("test", "slice", 11),)),
    Metric("sensitivity", "sensitivity", True, _roles("interval validation cv |"),
           {BINARY: _rate("sensitivity", "tp+fn")}, counted="tp+fn"),
    Metric("specificity", "specificity", True, _roles("interval validation cv |"),
           {BINARY: _rate("specificity", "tn+fp")}, counted="tn+fp"),
    Metric("precision", "PPV (precision)", True, _roles("interval |"),
           {BINARY: _rate("precision", "tp+fp")}, counted="tp+fp"),
    # Reported beside PPV only: no validation scalar, so no HParams column or selection.
    Metric("npv", "NPV", True, _roles("interval |"), {BINARY: _rate("npv", "tn+fn")},
           counted="tn+fn"),
    Metric("f1_ad", "F1 (AD)", True, _roles("interval |"), {BINARY: _rate("f1_ad")}),
    Metric("macro_f1", "macro F1", True,
           _roles("interval selection cv test"
                  " | interval validation selection compare cv test robustness"),
           {BINARY: _rate("macro_f1"), MULTICLASS: _score("macro_f1")}),
    Metric("weighted_f1", "weighted F1", True, _roles("| interval cv"),
           {MULTICLASS: _score("weighted_f1")}),
    # For K classes the validation scalar `roc_auc` is the macro one-vs-rest AUC.
    Metric("roc_auc", "ROC AUC", True,
           _roles("interval validation selection compare cv test robustness"
                  " | validation selection"),
           {BINARY: _roc_auc, MULTICLASS: _macro_ovr_auc}, threshold_free=True,
           hparam_columns=(("validation", "slice", 3), ("test", "slice", 14),
                           ("test", "scan", 15)),
           progress_levels=("slice",), short="AUC"),
    Metric("roc_auc_ovr_macro", "macro AUC (OvR)", True,
           _roles("| interval compare cv robustness"), {MULTICLASS: _macro_ovr_auc},
           threshold_free=True),
    Metric("pr_auc", "PR AUC", True, _roles("interval cv |"), {BINARY: _pr_auc},
           threshold_free=True),
    Metric("ece", "ECE", False, _roles("compare | compare"),
           {BINARY: _binary_ece, MULTICLASS: _top_label_ece}),
):  # fmt: skip
    register(_metric)

# Ordered classes (dementia stages) report everything K classes do, and the ordinal metrics,
# which read the class order as a scale and so do not apply to unordered classes.
for _metric in list(METRICS.values()):
    if MULTICLASS in _metric.roles:
        register(dataclasses.replace(
            _metric, roles={**_metric.roles, ORDINAL: _metric.roles[MULTICLASS]},
            formulas={**_metric.formulas, **({ORDINAL: _metric.formulas[MULTICLASS]}
                                             if MULTICLASS in _metric.formulas else {})},
        ))  # fmt: skip
# Prediction sets (uncertainty.py), compared beside the decisions: coverage is read against the
# target 1 - alpha and with the set size that buys it.
for _metric in (
    Metric("coverage", "set coverage", True,
           {k: frozenset({"compare"}) for k in (BINARY, MULTICLASS, ORDINAL)},
           {k: _set_coverage for k in (BINARY, MULTICLASS, ORDINAL)}, directional=False),
    Metric("set_size", "mean set size", False,
           {k: frozenset({"compare"}) for k in (BINARY, MULTICLASS, ORDINAL)},
           {k: _set_size for k in (BINARY, MULTICLASS, ORDINAL)}),
):  # fmt: skip
    register(_metric)
_ORDINAL_ROLES = frozenset({"interval", "validation", "selection", "compare", "cv", "test"})
for _metric in (
    Metric("quadratic_kappa", "quadratic kappa", True, {ORDINAL: _ORDINAL_ROLES},
           {ORDINAL: _score("quadratic_kappa")}, after={"compare": "roc_auc_ovr_macro"}),
    Metric("linear_kappa", "linear kappa", True, {ORDINAL: _ORDINAL_ROLES - {"selection"}},
           {ORDINAL: _score("linear_kappa")}, after={"compare": "quadratic_kappa"}),
    Metric("mae", "MAE (stages)", False, {ORDINAL: _ORDINAL_ROLES},
           {ORDINAL: _score("mae")}, after={"compare": "linear_kappa"}),
    Metric("within_one", "within one stage", True, {ORDINAL: _ORDINAL_ROLES},
           {ORDINAL: _score("within_one")}, after={"compare": "mae"}),
):  # fmt: skip
    register(_metric)


def get(name: str) -> Metric:
    """The registered metric `name` (a KeyError names the known ones)."""
    if name not in METRICS:
        raise KeyError(f"metric {name!r} is not registered; known: {', '.join(METRICS)}")
    return METRICS[name]


def names(kind: str, role: str) -> tuple[str, ...]:
    """The metrics of task `kind` in `role`, in registry order."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}; expected one of {ROLES}")
    chosen = [m for m in METRICS.values() if role in m.roles.get(kind, ())]
    for metric in [m for m in chosen if role in m.after]:
        target = METRICS.get(metric.after[role])
        if target in chosen:
            chosen.remove(metric)
            chosen.insert(chosen.index(target) + 1, metric)
    return tuple(m.name for m in chosen)


def label(name: str) -> str:
    """A metric's column header."""
    return get(name).label


def higher_is_better(name: str) -> bool:
    """Whether a larger value of the metric is better."""
    return get(name).higher_is_better


def level_prefix(level: str) -> str:
    """The prefix of a level's scalars: none for slices, else 'scan_', 'subject_'."""
    return "" if level == "slice" else f"{level}_"


def unprefixed(scalar: str) -> str:
    """The metric of a level's scalar name ('scan_accuracy' -> 'accuracy')."""
    for level in LEVELS:
        if level != "slice" and scalar.startswith(level_prefix(level)):
            return scalar.removeprefix(level_prefix(level))
    return scalar


def best_metric_choices() -> tuple[str, ...]:
    """`checkpoint.best_metric`'s values: 'validation/<level prefix><name>' of every metric a
    best checkpoint may be chosen on, for any task kind."""
    return tuple(
        f"validation/{level_prefix(level)}{m.name}"
        for m in METRICS.values()
        if any("selection" in roles for roles in m.roles.values())
        for level in m.selection_levels
    )


def best_mode(best_metric: str) -> str:
    """'max' or 'min': the better direction of `best_metric` ('validation/scan_accuracy')."""
    return "max" if higher_is_better(unprefixed(best_metric.removeprefix("validation/"))) else "min"


def hparam_metrics() -> tuple[tuple[str, str], ...]:
    """(run, tag) of the HParams tab's metric columns: validation ones first, then test."""
    columns = [
        (position, split, f"{level_prefix(level)}{m.name}")
        for m in METRICS.values()
        for split, level, position in m.hparam_columns
    ]
    return tuple((split, tag) for _, split, tag in sorted(columns))


def progress_columns() -> tuple[tuple[str, str], ...]:
    """(validation scalar, its short name) of the console line of each validation."""
    return tuple(
        (f"{level_prefix(level)}{m.name}", f"{level} {m.short}" if level != "slice" else m.short)
        for m in METRICS.values()
        for level in m.progress_levels
    )


def scores(kind: str, metric_names: tuple[str, ...], counts: Counts) -> dict[str, np.ndarray]:
    """{name: (B,) values} of the named metrics of task `kind` from `counts`."""
    return {name: get(name).formula(kind)(counts) for name in metric_names}
