"""Ways of calling a scan, measured side by side: a slice model's plain average, ClinicaDL's soft
vote weighted by each slice position's validation accuracy, and a bag model that reads the scan.

Everything here works on per-record arrays (one row per slice, as the predictions CSV) and the
records' `slice_index`, `scan_id`, `subject_id` and `label`; a method that decides per scan gives
each of its slices the scan's probability ("broadcast"), so `metrics.level_units` reads the
scan's own value at scan level and the mean of the subject's scans at subject level.

The comparison (`compare_methods`) chooses each method's threshold per level on validation (two
classes; K classes call the most probable class), scores the methods on test, and resamples the
test subjects once for all of them (`bootstrap.subject_draws`, the reports' draw and seed), so
that the difference of a method to the first is paired: both are scored on the same resampled
subjects. Also the strip of one scan's slices under their attention weights (`attention_strip`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from alz_jax.evaluation import bootstrap, figures, metric_registry, metrics, reports, tasks
from alz_jax.evaluation import multiclass as mc
from alz_jax.evaluation.settings import EvalSettings
from alz_jax.host.errors import UserError

AVERAGE = "slice model + average"
WEIGHTED_VOTE = "slice model + weighted vote"
REPORT_KEY = "scan_methods"  # the report JSON's key of the comparison
# The predictions CSV's columns of the weighted vote: P(AD), or one per class after the prefix.
VOTE_COLUMN = "vote_prob_ad"
VOTE_COLUMN_PREFIX = "vote_prob_"
COMPARED_LEVELS = ("scan", "subject")
HEADLINE = "balanced_accuracy"  # the first metric of the tables, and the weights' measure
STRIP_SLICES = 16  # at most this many slices in a strip (the highest weights)
CARD_SLICES_PER_ROW = 8  # at most; the rows of a card share its slices evenly


def bag_method(aggregator: str) -> str:
    """The name of a bag model's method: 'bag model (attention)'."""
    return f"bag model ({aggregator})"


# ---- ClinicaDL's soft vote. ----


def positions_known(records: Mapping[str, np.ndarray]) -> bool:
    """Whether every record has a slice position (`slice_index` >= 0): layouts that know no
    slice indices store -1, and the weighted vote is not defined for them."""
    index = records.get("slice_index")
    return index is not None and len(index) > 0 and bool(np.all(np.asarray(index) >= 0))


def _positions(records: Mapping[str, np.ndarray]) -> np.ndarray:
    if not positions_known(records):
        raise UserError(
            "The weighted vote weights each slice position, but these records have no slice "
            "index (slice_index is -1 or missing): expected a layout that names slices "
            "(<scanID>_<slice> file names, OASIS, volumes). Compare the other methods only."
        )
    return np.asarray(records["slice_index"]).astype(np.int64)


def _check_probs(task: tasks.Task, probs: np.ndarray, n: int, what: str) -> np.ndarray:
    probs = np.asarray(probs, np.float64)
    fits = len(probs) == n and tasks.of_outputs(probs).num_classes == task.num_classes
    # One call per record: two columns of a two-class task are not P(AD).
    if not fits or task.decide(probs).shape != (n,):
        raise ValueError(
            f"{what}: probabilities of shape {probs.shape}; expected one row per record ({n}) "
            f"of a {task.num_classes}-class task's probabilities (two classes: P(AD), (n,); "
            "K classes: (n, K))"
        )
    return probs


def position_weights(
    records: Mapping[str, np.ndarray], slice_probs: np.ndarray, task: tasks.Task,
    class_names: Sequence[str] | None = None, min_accuracy: float = 0.0,
) -> dict[int, float]:  # fmt: skip
    """Each slice position's weight: its balanced accuracy on these (validation) slices.

    A slice is called at 0.5 on P(AD) for two classes and by the argmax for K (`task.decide`),
    so the weights do not depend on any threshold chosen later. Balanced accuracy is the mean
    recall over the classes present at the position (for two classes, (sensitivity +
    specificity) / 2). Positions whose balanced accuracy is below `min_accuracy` get weight 0
    (ClinicaDL's selection threshold; 0 keeps every position). Positions absent here are
    weighted by `weighted_vote` with the mean of these weights."""
    positions = _positions(records)
    labels = np.asarray(records["label"]).astype(np.int64)
    what = f"validation slices of {', '.join(class_names)}" if class_names else "validation slices"
    predicted = task.decide(_check_probs(task, slice_probs, len(labels), what), 0.5)
    k = task.num_classes
    weights = {}
    for position in np.unique(positions):
        at = positions == position
        confusion = np.bincount(labels[at] * k + predicted[at], minlength=k * k).reshape(k, k)
        accuracy = float(mc.confusion_scores(confusion)[HEADLINE])
        weights[int(position)] = accuracy if accuracy >= min_accuracy else 0.0
    return weights


def _scan_groups(records: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each record's scan as a group index; groups are (scan, label) as metrics.level_units
    forms them."""
    index: dict[tuple, int] = {}
    pairs = zip(records["scan_id"], np.asarray(records["label"]).astype(np.int64), strict=True)
    return np.array([index.setdefault((scan, int(lab)), len(index)) for scan, lab in pairs])


def weighted_vote(
    records: Mapping[str, np.ndarray], slice_probs: np.ndarray, weights: Mapping[int, float]
) -> np.ndarray:
    """Each scan's vote sum_i w(position_i) p_i / sum_i w(position_i) over its slices (a plain
    mean where all its weights are 0), given back per record: (n,) or (n, K), every slice
    carrying its scan's vote. A position missing from `weights` (not in validation) gets the
    mean of the weights given."""
    if not weights:
        raise ValueError("weighted_vote: no position weights (position_weights of validation)")
    probs = np.asarray(slice_probs, np.float64)
    default = float(np.mean(list(weights.values())))
    w = np.array([weights.get(int(p), default) for p in _positions(records)], np.float64)
    group = _scan_groups(records)
    n_groups = int(group.max()) + 1 if len(group) else 0
    shape = (n_groups, *probs.shape[1:])
    weighted, plain = np.zeros(shape), np.zeros(shape)
    column = w.reshape(-1, *([1] * (probs.ndim - 1)))
    np.add.at(weighted, group, column * probs)
    np.add.at(plain, group, probs)
    total = np.bincount(group, w, n_groups).reshape(-1, *([1] * (probs.ndim - 1)))
    count = np.bincount(group, minlength=n_groups).reshape(total.shape)
    vote = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), plain / count)
    return vote[group]


# ---- The comparison. ----


def _check_methods(
    records_test: Mapping, methods_test: Mapping, records_val: Mapping, methods_val: Mapping,
    task: tasks.Task,
) -> None:  # fmt: skip
    if not methods_test:
        raise ValueError("compare_methods: no methods to compare")
    if list(methods_val) != list(methods_test):
        raise ValueError(
            f"compare_methods: validation methods {list(methods_val)}, test methods "
            f"{list(methods_test)}; expected the same names in the same order"
        )
    for name in methods_test:
        _check_probs(task, methods_test[name], len(records_test["label"]), f"{name} on test")
        _check_probs(task, methods_val[name], len(records_val["label"]), f"{name} on validation")


def _value(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _method_scores(
    task: tasks.Task, units: dict[str, metrics.Units], thresholds: dict[str, float],
    names: tuple[str, ...], draws: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[dict, dict]:  # fmt: skip
    """({level: {metric: value}}, {level: {metric: (B,) resampled values}}) of one method."""

    def score(level: str, u: metrics.Units, w: np.ndarray) -> dict[str, np.ndarray]:
        counts = task.counts(u, w, thresholds.get(level, 0.5))
        return metric_registry.scores(task.kind, names, counts)

    point = {
        level: {k: _value(v[0]) for k, v in score(level, u, np.ones((1, len(u.labels)))).items()}
        for level, u in units.items()
    }
    resampled = bootstrap.resampled(units, *draws, score) if draws else {}
    return point, resampled


def _difference(
    values: np.ndarray, reference: np.ndarray, point: float | None, point_ref: float | None
) -> dict:
    """A method minus the reference: observed, and over the paired resamples defined for both
    the mean, 95% interval and the share of resamples above 0."""
    diff = values - reference
    diff = diff[~np.isnan(diff)]
    return {
        "observed": None if point is None or point_ref is None else point - point_ref,
        "mean": float(diff.mean()) if len(diff) else None,
        "ci95": bootstrap.percentile_interval(diff),
        "share_positive": float(np.mean(diff > 0)) if len(diff) else None,
        "resamples": len(diff),
    }


def _level_entry(u: metrics.Units, threshold: dict | None, point: dict, resampled: dict) -> dict:
    """One method at one level: units, the threshold chosen on validation, each metric with its
    interval (None without resamples)."""
    return {
        "n": len(u.labels),
        "n_subjects": len(set(map(str, u.subjects))),
        "threshold": threshold["threshold"] if threshold else None,
        "threshold_details": threshold,
        "metrics": {
            k: {
                "value": v,
                "ci95": bootstrap.percentile_interval(resampled[k]) if resampled else None,
            }
            for k, v in point.items()
        },
    }


def compare_methods(
    records_test: Mapping[str, np.ndarray], methods_test: Mapping[str, np.ndarray],
    records_val: Mapping[str, np.ndarray], methods_val: Mapping[str, np.ndarray],
    task: tasks.Task, settings: EvalSettings, subjects_known: bool,
    class_names: Sequence[str],
) -> dict:  # fmt: skip
    """The report's 'scan_methods' section: per level (scan; subject when known) and method,
    the task's interval metrics on test with subject-bootstrap intervals, and each method's
    paired difference to the first method (the reference) on the same resamples.

    `methods_*` map a method's name to per-record probabilities, P(AD) (n,) or (n, K), on the
    test and validation records; two-class thresholds are chosen per method and level on
    validation (settings.threshold, as the reports choose theirs)."""
    _check_methods(records_test, methods_test, records_val, methods_val, task)
    names = task.metric_names("interval")
    levels = COMPARED_LEVELS if subjects_known else COMPARED_LEVELS[:1]
    reference = next(iter(methods_test))
    draws = None
    if settings.bootstrap_samples:  # every method is resampled on these same subjects
        all_units = metrics.level_units(records_test, methods_test[reference], subjects_known)
        draws = bootstrap.subject_draws(all_units, settings.bootstrap_samples,
                                        settings.bootstrap_seed)  # fmt: skip
    results: dict[str, dict] = {level: {} for level in levels}
    scored = {}
    for name, probs in methods_test.items():
        test_units = metrics.level_units(records_test, probs, subjects_known)
        val_units = metrics.level_units(records_val, methods_val[name], subjects_known)
        chosen = task.level_thresholds({lv: val_units[lv] for lv in levels}, settings)
        thresholds = {lv: c["threshold"] for lv, c in chosen.items()}
        units = {lv: test_units[lv] for lv in levels}
        point, resampled = scored[name] = _method_scores(task, units, thresholds, names, draws)
        for level, u in units.items():
            results[level][name] = _level_entry(
                u, chosen.get(level), point[level], resampled.get(level, {})
            )
    point_ref, resampled_ref = scored[reference]
    for name in list(methods_test)[1:]:
        point, resampled = scored[name]
        for level in levels:
            empty = np.array([])
            results[level][name]["difference"] = {
                k: _difference(resampled[level][k] if draws else empty,
                               resampled_ref[level][k] if draws else empty,
                               point[level][k], point_ref[level][k])
                for k in names
            }  # fmt: skip
    thresholded = any(r["threshold"] is not None for lv in results.values() for r in lv.values())
    return {
        "task": task.kind,
        "class_names": list(class_names),
        "reference": reference,
        "methods": list(methods_test),
        "levels": list(levels),
        "metric_names": list(names),
        "headline_metric": HEADLINE,
        "auc_metric": next(k for k in names if metric_registry.get(k).threshold_free),
        # None where the task decides without thresholds (the most probable class).
        "threshold_method": settings.threshold if thresholded else None,
        "bootstrap": reports.bootstrap_text(settings, subjects_known),
        "results": results,
    }


# ---- Text. ----


def _with_ci(entry: dict) -> str:
    value, ci = entry["value"], entry["ci95"]
    if value is None:
        return "-"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def _difference_text(d: dict | None) -> str:
    if d is None or d["observed"] is None:
        return "-"
    ci = d["ci95"]
    text = f"{d['observed']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
    return text + (f", P(>0) {d['share_positive']:.2f}" if d["share_positive"] is not None else "")


def _about(section: dict) -> str:
    """How the methods were decided and resampled, in one sentence each."""
    decision = (
        f"thresholds chosen on validation per method and level ({section['threshold_method']})"
        if section["threshold_method"]
        else "the most probable class"
    )
    return (
        f"Decision: {decision}. {reports.interval_text(section['bootstrap'])}, the same "
        f"resamples for every method; a difference is the method minus "
        f"{reports.markdown_text(section['reference'])} on the same resampled units, P(>0) "
        "the share of resamples where it is above 0."
    )


def methods_markdown(section: dict) -> str:
    """The comparison as Markdown: a table per level of each method's balanced accuracy and
    AUC with 95% intervals and their paired differences to the reference method."""
    headline, auc = section["headline_metric"], section["auc_metric"]
    versus = f"- {reports.markdown_text(section['reference'])}"
    md = ["## Scan-level methods", "", _about(section)]
    for level in section["levels"]:
        md += [
            "",
            f"### {level.capitalize()} level",
            "",
            f"| method | n | threshold | {metric_registry.label(headline)} [95% CI] | "
            f"{metric_registry.label(auc)} [95% CI] | {metric_registry.label(headline)} "
            f"{versus} | {metric_registry.label(auc)} {versus} |",
            "|---" * 7 + "|",
        ]
        for name, r in section["results"][level].items():
            diff = r.get("difference", {})
            threshold = "-" if r["threshold"] is None else f"{r['threshold']:.3f}"
            md.append(
                f"| {reports.markdown_text(name)} | {r['n']} | {threshold} | "
                f"{_with_ci(r['metrics'][headline])} | {_with_ci(r['metrics'][auc])} | "
                f"{_difference_text(diff.get(headline))} | {_difference_text(diff.get(auc))} |"
            )
    return "\n".join(md) + "\n"


def methods_text(section: dict) -> list[str]:
    """The comparison for the console: per level, a line per method (balanced accuracy and
    AUC with intervals) and a line with its differences to the reference."""
    headline, auc = section["headline_metric"], section["auc_metric"]
    short = {k: metric_registry.label(k) for k in (headline, auc)}
    lines = [f"Scan-level methods, differences to {section['reference']}:"]
    for level in section["levels"]:
        for name, r in section["results"][level].items():
            m = r["metrics"]
            lines.append(
                f"  {level} {name}: {short[headline]} {_with_ci(m[headline])}, "
                f"{short[auc]} {_with_ci(m[auc])}"
            )
            if "difference" in r:
                d = r["difference"]
                lines.append(
                    f"    difference: {short[headline]} {_difference_text(d[headline])}; "
                    f"{short[auc]} {_difference_text(d[auc])}"
                )
    return lines


# ---- The attention strip. ----


def strip_slices(positions: Sequence[int], weights: np.ndarray, limit: int = STRIP_SLICES):
    """The slices a strip shows, as indices in position order: all of them, or the `limit`
    with the highest weights."""
    weights = np.asarray(weights, np.float64)
    chosen = np.arange(len(weights))
    if len(weights) > limit:
        chosen = np.argsort(-weights, kind="stable")[:limit]
    return chosen[np.argsort(np.asarray(positions)[chosen], kind="stable")]


def _gray(images: np.ndarray) -> np.ndarray:
    """(K, S, S) gray slices: a channel axis gives its middle channel (a 2.5D input's own
    slice; any channel of a gray slice stored as RGB)."""
    images = np.asarray(images)
    if images.ndim == 4:
        return images[..., images.shape[-1] // 2]
    if images.ndim != 3:
        raise ValueError(f"attention_strip: images of shape {images.shape}; expected (K, S, S) "
                         "or (K, S, S, C)")  # fmt: skip
    return images


def _strip_axes(fig: Figure, tiles, weights, positions, top: int, per_row: int, slots: int,
                height_ratios: tuple[float, float]) -> None:  # fmt: skip
    """Rows of up to `per_row` slices in `slots` places (>= per_row: places as wide as the
    row's height allows a whole slice), each over a bar axis of their weights (numbered), the
    slice `top` (an index into `tiles`) framed and its bar red."""
    rows = math.ceil(len(tiles) / per_row)
    axes = fig.subplots(2 * rows, 1, height_ratios=height_ratios * rows)
    low, high = min(0.0, weights.min()), max(0.0, weights.max())
    span = (high - low) or 1.0
    for r in range(rows):
        index = np.arange(r * per_row, min(len(tiles), (r + 1) * per_row))
        blank = np.ma.masked_array(np.zeros((slots - len(index), *tiles.shape[1:3])), mask=True)
        row_tiles = np.ma.concatenate([np.ma.asarray(tiles[index], float), blank])
        montage = np.ma.concatenate(list(row_tiles), axis=1)
        image_ax, bar_ax = axes[2 * r], axes[2 * r + 1]
        image_ax.imshow(montage, cmap="gray", vmin=0, vmax=255, interpolation="nearest",
                        extent=(-0.5, slots - 0.5, 1, 0))  # fmt: skip
        # Tiles stay square; a taller box than they need pads above and below, not beside.
        image_ax.sharex(bar_ax)  # shared x: the aspect pads y, never x
        image_ax.set(aspect="equal", adjustable="datalim")
        image_ax.set_axis_off()
        x = np.arange(len(index))
        colors = ["tab:red" if i == top else "tab:blue" for i in index]
        bars = bar_ax.bar(x, weights[index], width=0.7, color=colors)
        bar_ax.bar_label(bars, fmt="%.2f", padding=1)
        bar_ax.axhline(0, color="gray", lw=0.6)
        # No y ticks: every bar carries its number; the room above it holds the number.
        bar_ax.set(xlim=(-0.5, slots - 0.5), xticks=x, yticks=[], ylabel="weight",
                   xticklabels=[str(int(positions[i])) for i in index],
                   ylim=(low - 0.6 * span * (low < 0), high + 0.6 * span))  # fmt: skip
        if top in index:
            image_ax.add_patch(Rectangle((top - r * per_row - 0.5, 0), 1, 1, fill=False,
                                         edgecolor="tab:red", lw=2, clip_on=False))  # fmt: skip
    axes[-1].set_xlabel("slice position (red: the highest weight)")


def attention_strip(
    images: np.ndarray, weights: np.ndarray, positions: Sequence[int], title: str,
    probability: float, label: str, probability_label: str = "P(AD)",
) -> Figure:  # fmt: skip
    """One scan's slices in a row (`images` (K, S, S) or (K, S, S, C) uint8), each over a bar of
    its weight (attention, or a mean bag's logit contribution) with the number, the highest
    framed in red; at most STRIP_SLICES slices (the highest weights), in position order. The
    title says `title`, the true `label` and the bag's `probability`. Card: the same in rows of
    at most CARD_SLICES_PER_ROW."""
    weights = np.asarray(weights, np.float64)
    tiles = _gray(images)
    if not len(weights) or len(tiles) != len(weights) or len(positions) != len(weights):
        raise ValueError(
            f"attention_strip: {len(tiles)} slices, {len(weights)} weights and "
            f"{len(positions)} positions; expected one weight and position per slice (>= 1)"
        )
    chosen = strip_slices(positions, weights)
    tiles, shown, where = tiles[chosen], weights[chosen], np.asarray(positions)[chosen]
    top = int(np.argmax(shown))
    scan = f"{title}: true {label}, {probability_label} {probability:.2f}"
    subset = (
        f"; the {len(chosen)} highest of {len(weights)} slices"
        if len(chosen) < len(weights)
        else ""
    )
    heading = f"{scan}; highest weight {shown[top]:.2f} at slice {int(where[top])}{subset}"
    n = len(chosen)
    width = max(6.0, 0.8 * n + 1.4)
    fig = Figure(figsize=(width, 3.4), layout="constrained")
    _strip_axes(fig, tiles, shown, where, top, n, max(n, 7), (1.2, 1.3))
    # About 11 characters of 10 pt per inch of width: the title's lines stay inside.
    fig.suptitle(figures.wrap_title(heading, int(11 * width)), fontsize=10)

    def card() -> Figure:
        rows = math.ceil(n / CARD_SLICES_PER_ROW)
        width, height = (px / figures.CARD_DPI for px in figures.CARD_PX)
        card_fig = Figure(figsize=(width, height), dpi=figures.CARD_DPI, layout="constrained")
        card_fig.suptitle(figures.wrap_title(scan + subset))  # its red bar says the rest
        _strip_axes(card_fig, tiles, shown, where, top, math.ceil(n / rows),
                    CARD_SLICES_PER_ROW, (1.4, 0.7) if rows > 1 else (1.0, 1.0))  # fmt: skip
        return card_fig

    return figures.with_cards(fig, [card])
