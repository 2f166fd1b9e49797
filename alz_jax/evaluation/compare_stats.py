"""The statistics of `python -m alz_jax.compare`: per-model metrics with subject-bootstrap
intervals, the paired subject bootstrap of each model against the first, and the report's
Markdown, console table and figures.

Every model's predictions are on the same test images (checked: `align`). A resample draws the
test subjects with replacement, exactly as the reports draw them (`bootstrap.subject_draws`:
subjects sorted as text; `numpy.random.default_rng(seed).integers(0, S, size=(n, S))`), and
weights each unit (slice, scan, subject) by how often its subject was drawn; one draw serves
every level and every model. So with the report's seed and resample count a model's intervals
here are its report's, and the paired difference B - A of a resample is computed on the very
same subjects for both models: the spread of those differences is the uncertainty due to which
subjects happened to be tested, with the correlation between the models' errors taken into
account (intervals of each model alone would overstate it).

Metrics: for two classes accuracy, balanced accuracy (at the report's thresholds, chosen on
validation) and ROC AUC; for K classes accuracy, balanced accuracy, macro F1, macro one-vs-rest
AUC and quadratic kappa (argmax); for both the ECE (the report's bins; top-label for K).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from alz_jax.evaluation import bootstrap, metric_registry, metrics, tasks
from alz_jax.host.errors import UserError

RECORD_FIELDS = tasks.RECORD_COLUMNS


@dataclasses.dataclass(frozen=True)
class Predictions:
    """One model's predictions on a split, as its predictions CSV holds them, with what its
    report decided: per-level thresholds (two classes), the calibration bins, subjects known."""

    records: dict[str, np.ndarray]
    probs: np.ndarray  # P(AD) (n,), or class probabilities (n, K)
    subjects_known: bool
    thresholds: dict[str, float] = dataclasses.field(default_factory=dict)  # two classes only
    n_bins: int = 10
    task: tasks.Task | None = None  # None: the task whose outputs look like `probs`
    # Per level, the report's prediction-set calibration (conformal.calibrate's), if it had one.
    conformal: dict[str, dict] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.task is None:
            object.__setattr__(self, "task", tasks.of_outputs(self.probs))

    @property
    def num_classes(self) -> int:
        """The number of classes of the task."""
        return self.task.num_classes

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The metrics compared for this task (the registry's "compare" role)."""
        return self.task.metric_names("compare")

    def units(self) -> dict[str, metrics.Units]:
        """Slices, scans and (subjects known) subjects, as the report aggregates them."""
        return metrics.level_units(self.records, self.probs, self.subjects_known)

    def reordered(self, order: np.ndarray) -> Predictions:
        """The same predictions with the images in `order`."""
        records = {k: np.asarray(v)[order] for k, v in self.records.items()}
        return dataclasses.replace(self, records=records, probs=self.probs[order])


# ---- The same test set. ----


def _keys(p: Predictions) -> list[tuple]:
    return list(zip(*(map(str, p.records[f]) for f in RECORD_FIELDS), strict=True))


def _listed(items: set, limit: int = 10) -> str:
    shown = sorted(items)[:limit]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(shown) + more


def split_differences(a: Predictions, b: Predictions) -> list[str]:
    """What differs between two models' test sets (subjects, images, their labels, scans and
    subjects), in words; [] when they hold the same images with the same metadata."""
    if sorted(_keys(a)) == sorted(_keys(b)):
        return []
    out = []
    subjects_a, subjects_b = (
        set(map(str, a.records["subject_id"])),
        set(map(str, b.records["subject_id"])),
    )
    if subjects_a - subjects_b:
        out.append(f"subjects only in the first: {_listed(subjects_a - subjects_b)}")
    if subjects_b - subjects_a:
        out.append(f"subjects only in the second: {_listed(subjects_b - subjects_a)}")
    files_a = {k[0]: k for k in _keys(a)}
    files_b = {k[0]: k for k in _keys(b)}
    if set(files_a) - set(files_b):
        out.append(
            f"{len(set(files_a) - set(files_b))} images only in the first "
            f"({_listed(set(files_a) - set(files_b), 5)})"
        )
    if set(files_b) - set(files_a):
        out.append(
            f"{len(set(files_b) - set(files_a))} images only in the second "
            f"({_listed(set(files_b) - set(files_a), 5)})"
        )
    changed = {f for f in set(files_a) & set(files_b) if files_a[f] != files_b[f]}
    if changed:
        out.append(
            f"{len(changed)} images with another scan, subject or label ({_listed(changed, 5)})"
        )
    if not out:
        out.append("the same images, but some repeated a different number of times")
    return out


def align(predictions: Sequence[Predictions], names: Sequence[str]) -> list[Predictions]:
    """The models' predictions in one image order (the first model's), after checking that
    every model was evaluated on the same images (file, scan, subject, label); a UserError
    naming the differing subjects and images otherwise."""
    first = predictions[0]
    keys_first = _keys(first)
    duplicated = len(set(keys_first)) != len(keys_first)
    out = [first]
    for name, p in zip(names[1:], predictions[1:], strict=True):
        differences = split_differences(first, p)
        if differences:
            raise UserError(
                f"{names[0]} and {name} were not evaluated on the same test images, so they "
                "cannot be compared subject by subject: "
                + "; ".join(differences)
                + ". Evaluate both on one data set and split (same data folder and protocol)."
            )
        if p.num_classes != first.num_classes or p.subjects_known != first.subjects_known:
            raise UserError(
                f"{names[0]} has {first.num_classes} classes (subjects known: "
                f"{first.subjects_known}), {name} {p.num_classes} (subjects known: "
                f"{p.subjects_known}); expected the same classification task."
            )
        if p.task.kind != first.task.kind:
            raise UserError(
                f"{names[0]}'s task is {first.task.kind}, {name}'s {p.task.kind}: their "
                "metrics differ (ordered stages add MAE, within-one and the kappas). A report "
                "made before ordinal tasks reads as multiclass: evaluate that run again "
                "(python -m alz_jax.evaluate --workdir=...) and compare."
            )
        keys = _keys(p)
        if duplicated and keys != keys_first:
            # Repeated keys can't be matched image to image except by the data set's order.
            raise UserError(
                f"{names[0]} and {name} list repeated test images in different "
                "orders; expected both predictions files in the data set's order."
            )
        position = {k: i for i, k in enumerate(keys)}
        out.append(p if duplicated else p.reordered(np.array([position[k] for k in keys_first])))
    return out


# ---- Scores under weights (one row per resample). ----


def level_scores(
    p: Predictions, u: metrics.Units, weights: np.ndarray, level: str
) -> dict[str, np.ndarray]:
    """The compared metrics of one level's units under each row of `weights` (B, m), at the
    level's threshold from the report; NaN where a metric is undefined under a weighting (a
    class not drawn)."""
    threshold = p.thresholds.get(level, 0.5)
    return p.task.weighted_scores(u, weights, "compare", threshold, p.n_bins,
                                  p.conformal.get(level))  # fmt: skip


def _value(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def point_metrics(p: Predictions) -> dict[str, dict]:
    """Per level: the compared metrics on the whole split (None where undefined), `n` units and
    their subjects."""
    out = {}
    for level, u in p.units().items():
        scores = level_scores(p, u, np.ones((1, len(u.labels))), level)
        out[level] = {
            "n": len(u.labels),
            "n_subjects": len(set(map(str, u.subjects))),
            **{k: _value(v[0]) for k, v in scores.items()},
        }
    return out


def resampled_scores(p: Predictions, subjects: np.ndarray, counts: np.ndarray) -> dict:
    """{level: {metric: (n_samples,) values}} of `p` under the resamples `counts` of
    `subjects` (NaN where undefined)."""
    return bootstrap.resampled(
        p.units(), subjects, counts, lambda level, u, w: level_scores(p, u, w, level)
    )


def model_metrics(p: Predictions, n_samples: int, seed: int) -> dict[str, dict]:
    """Per level and metric: {value, ci95} (the percentile interval over subject resamples),
    with `n` and `n_subjects` per level."""
    subjects, counts = bootstrap.subject_draws(p.units(), n_samples, seed)
    resampled = resampled_scores(p, subjects, counts)
    out = {}
    for level, point in point_metrics(p).items():
        out[level] = {"n": point["n"], "n_subjects": point["n_subjects"]}
        for k in p.metric_names:
            interval = bootstrap.percentile_interval(resampled[level][k])
            out[level][k] = {"value": point[k], "ci95": interval}
    return out


def paired_differences(a: Predictions, b: Predictions, n_samples: int, seed: int) -> dict:
    """Per level and metric, B - A on the same subject resamples: the observed difference, the
    mean and 95% percentile interval of the resampled differences, the share of resamples in
    which B is better (higher; lower for ECE), worse, or equal, and how many resamples defined
    the metric for both. `a` and `b` must hold the same images (see `align`)."""
    subjects, counts = bootstrap.subject_draws(a.units(), n_samples, seed)
    sa, sb = resampled_scores(a, subjects, counts), resampled_scores(b, subjects, counts)
    pa, pb = point_metrics(a), point_metrics(b)
    out: dict[str, dict] = {}
    for level in sa:
        out[level] = {}
        for k in a.metric_names:
            diff = sb[level][k] - sa[level][k]
            diff = diff[~np.isnan(diff)]
            higher = metric_registry.higher_is_better(k)
            sign = 1.0 if higher else -1.0
            # A target, not a direction (coverage: 1 - alpha): no share of "better" resamples.
            directional = metric_registry.get(k).directional and len(diff)
            observed = (
                None
                if pa[level][k] is None or pb[level][k] is None
                else pb[level][k] - pa[level][k]
            )
            out[level][k] = {
                "observed": observed,
                "mean": float(diff.mean()) if len(diff) else None,
                "ci95": bootstrap.percentile_interval(diff),
                "share_b_better": float(np.mean(sign * diff > 0)) if directional else None,
                "share_b_worse": float(np.mean(sign * diff < 0)) if directional else None,
                "share_equal": float(np.mean(diff == 0)) if len(diff) else None,
                "resamples": len(diff),
                "higher_is_better": higher,
            }
    return out


# ---- Text. ----


def _num(x: float | None, digits: int = 3, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _with_ci(entry: dict, digits: int = 3) -> str:
    ci = entry.get("ci95")
    text = _num(entry.get("value"), digits)
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci and text != "-" else text


def _difference_cell(d: dict) -> str:
    if d["observed"] is None:
        return "-"
    ci = d["ci95"]
    text = f"{d['observed']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
    if d["share_b_better"] is not None:
        text += f", P(better) {d['share_b_better']:.2f}"
        if d["share_equal"]:
            text += f" (ties {d['share_equal']:.2f})"
    return text


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")


def markdown_metrics(result: dict) -> list[str]:
    """One table per level: each model's metrics with their 95% intervals."""
    names = result["metric_names"]
    md = []
    for level in metrics.LEVELS:
        rows = [m for m in result["models"] if level in m["metrics"]]
        if not rows:
            continue
        md += [
            "",
            f"### {level.capitalize()} level",
            "",
            "| model | n | subjects | "
            + " | ".join(metric_registry.label(k) for k in names)
            + " |",
            "|---" * (3 + len(names)) + "|",
        ]
        for m in rows:
            lv = m["metrics"][level]
            md.append(
                f"| {_cell(m['name'])} | {lv['n']} | {lv['n_subjects']} | "
                + " | ".join(_with_ci(lv[k], 4 if k == "ece" else 3) for k in names)
                + " |"
            )
    return md


def markdown_differences(result: dict) -> list[str]:
    """One table per level: each model's paired difference to the reference."""
    names = result["metric_names"]
    md = []
    for level in metrics.LEVELS:
        rows = [(n, d[level]) for n, d in result["paired_differences"].items() if level in d]
        if not rows:
            continue
        md += [
            "",
            f"### {level.capitalize()} level: B - {_cell(result['reference'])}",
            "",
            "| model B | " + " | ".join(metric_registry.label(k) for k in names) + " |",
            "|---" * (1 + len(names)) + "|",
        ]
        for name, d in rows:
            md.append(
                f"| {_cell(name)} | " + " | ".join(_difference_cell(d[k]) for k in names) + " |"
            )
    return md


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def has_device_peak(result: dict) -> bool:
    """Whether any model has a device peak (the device reports memory statistics: GPUs, TPUs)."""
    return any(m["cost"].get("device_peak_bytes") is not None for m in result["models"])


def markdown_costs(result: dict) -> list[str]:
    """Parameters, FLOPs, measured throughput and memory per model; the device peak column only
    where some model has one, else a line saying why there is none."""
    peak = has_device_peak(result)
    columns = [
        "model", "parameters", "GFLOPs / image (forward)", "image size", "batch",
        "train images/s", "inference images/s", "train step, XLA MiB per device",
        "inference step, XLA MiB per device",
    ] + (["device peak MiB (process, cumulative)"] if peak else [])  # fmt: skip
    md = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for m in result["models"]:
        c = m["cost"]
        train, infer = c.get("train") or {}, c.get("inference") or {}
        md.append(
            f"| {_cell(m['name'])} | {c['params']:,} | {c['flops_per_image'] / 1e9:.4g} | "
            f"{c['image_size']} | {c.get('batch', '-')} | {_rate(train.get('images_per_s'))} | "
            f"{_rate(infer.get('images_per_s'))} | {_mib(train.get('xla_bytes'))} | "
            f"{_mib(infer.get('xla_bytes'))} |"
            + (f" {_mib(c.get('device_peak_bytes'))} |" if peak else "")
        )
    if not peak and any(m["cost"].get("train") for m in result["models"]):
        backend = result["machine"]["backend"]
        md += ["", f"No device peak column: {backend} reports no device memory statistics."]
    return md


def robustness_columns(result: dict) -> tuple[str, str]:
    """The two slice-level metrics of the robustness tables and figures (the task's)."""
    task = tasks.for_classes(result["num_classes"], result.get("task"))
    first, second = task.metric_names("robustness")
    return first, second


def markdown_robustness(result: dict) -> list[str]:
    """One table per perturbation: rows models, columns levels, cells two slice metrics (and
    the subject-level accuracy where subjects are known)."""
    rob = result.get("robustness") or {}
    first, second = robustness_columns(result)
    md = []
    for name, p in rob.get("perturbations", {}).items():
        levels = p["level_names"]
        md += [
            "",
            f"### {name}: {p['parameter']}",
            "",
            f"Slice {metric_registry.label(first)} / {metric_registry.label(second)}"
            + (
                f"; subject {metric_registry.label('accuracy')} in parentheses."
                if p["subject_level"]
                else "."
            ),
            "",
            "| model | " + " | ".join(levels) + " |",
            "|---" * (1 + len(levels)) + "|",
        ]
        for model, curve in p["curves"].items():
            cells = []
            for i in range(len(levels)):
                text = f"{_num(curve['slice'][first][i])} / {_num(curve['slice'][second][i])}"
                if p["subject_level"]:
                    text += f" ({_num(curve[p['subject_level']]['accuracy'][i])})"
                cells.append(text)
            md.append(f"| {_cell(model)} | " + " | ".join(cells) + " |")
    return md


def format_markdown(result: dict) -> str:
    """compare.md: the header, the tables and the figures of a comparison."""
    machine = result["machine"]
    boot = result["bootstrap"]
    md = [
        f"# Model comparison: {result['split']} split",
        "",
        f"Machine: {machine['cpu']} ({machine['cores']} cores), JAX {machine['jax']} on "
        f"{machine['backend']} ({machine['device_count']} x {machine['device_kind']}). "
        f"Reference model (A): **{_cell(result['reference'])}**. Intervals: 95% percentile "
        f"bootstrap over {boot['unit']}s, {boot['samples']} resamples, seed {boot['seed']}.",
        "",
        "The paired difference of a model B is B - A on the same resampled "
        f"{boot['unit']}s: each resample draws the test {boot['unit']}s with replacement and "
        "computes both models' metric on them, so the interval is the uncertainty due to which "
        f"{boot['unit']}s were tested, with both models' errors on the same cases accounted "
        "for. P(better) is the share of resamples in which B beat A (higher; lower for ECE). An "
        "interval that excludes 0 says the difference is unlikely to be an accident of the "
        "test sample; it says nothing about training noise (another seed of the same model may "
        "differ by as much).",
        "",
        "## Models",
        "",
        "| model | architecture | workdir | checkpoint | weights | images |",
        "|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        md.append(
            f"| {_cell(m['name'])} | {_cell(m['title'])} | `{_cell(m['workdir'])}` | "
            f"{m['checkpoint_step']} | {m['weights']} | {m['num_images']} |"
        )
    md += ["", "## Test metrics", *markdown_metrics(result)]
    md += [
        "",
        f"## Paired differences to {_cell(result['reference'])}",
        *markdown_differences(result),
    ]
    md += [
        "",
        "## Cost",
        "",
        "Parameters and FLOPs from the model registry; throughput measured on the machine "
        "above (random images at each run's image size, after warm-up steps), so it "
        "compares models only on this machine. XLA MiB: the compiled step's argument + "
        "output + temporary buffers per device (XLA's memory analysis)."
        + (
            " Device peak: the process's peak bytes in use on device 0 after that model's "
            "steps, cumulative over the models measured before it."
            if has_device_peak(result)
            else ""
        ),
        "",
        *markdown_costs(result),
    ]
    if result.get("robustness"):
        rob = result["robustness"]
        md += [
            "",
            "## Robustness",
            "",
            "Each perturbation is applied to the stored test images before the evaluation "
            f"preprocessing (seed {rob['seed']}; docs/compare.md lists them). Decisions "
            "(thresholds, or the most probable class) and temperature as in each run's report.",
            *markdown_robustness(result),
        ]
    if result.get("notes"):
        md += ["", "## Notes", "", *[f"- {n}" for n in result["notes"]]]
    if result.get("figures"):
        md += ["", "## Figures", ""]
        md += [f"![{name}]({path})" for name, path in result["figures"].items()]
    return "\n".join(md) + "\n"


# The longest console line the summary packs its items into (the project keeps lines < 200).
SUMMARY_WIDTH = 120


def _packed(items: Sequence[str], indent: str) -> list[str]:
    """`items` joined by ", " into lines of at most SUMMARY_WIDTH characters, each indented."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 2 + len(item) <= SUMMARY_WIDTH:
            lines[-1] += ", " + item
        else:
            lines.append(indent + item)
    return lines


def format_summary(result: dict) -> str:
    """The console summary: each model's headline metrics at the last level and its paired
    difference to the reference, in lines of at most SUMMARY_WIDTH characters."""
    level = [lv for lv in metrics.LEVELS if lv in result["models"][0]["metrics"]][-1]
    names = [k for k in result["metric_names"] if k != "ece"]
    lines = [
        f"Comparison on the {result['split']} split, {level} level, reference "
        f"{result['reference']}; 95% intervals over {result['bootstrap']['samples']} "
        f"{result['bootstrap']['unit']} resamples"
    ]
    for m in result["models"]:
        lv = m["metrics"][level]
        lines.append(f"{m['name']}: {m['title']}")
        lines += _packed([f"{metric_registry.label(k)} {_with_ci(lv[k])}" for k in names], "  ")
        diff = result["paired_differences"].get(m["name"])
        if diff:
            lines.append("  vs reference:")
            lines += _packed(
                [f"{metric_registry.label(k)} {_difference_cell(diff[level][k])}" for k in names],
                "    ",
            )
    return "\n".join(lines)


# ---- Figures. ----

_STYLES = {"slice": "-", "scan": "--", "subject": ":"}


def robustness_figure(name: str, entry: dict, result: dict) -> Figure:
    """One perturbation's curves: a panel per slice metric, a line per model (solid: slice;
    dotted: subject, where known), the levels along the axis, the clean level marked."""
    columns = robustness_columns(result)
    fig = Figure(figsize=(4.6 * len(columns), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(columns)))
    x = np.arange(len(entry["level_names"]))
    levels = ["slice"] + ([entry["subject_level"]] if entry["subject_level"] else [])
    for ax, metric in zip(axes, columns, strict=True):
        for i, (model, curve) in enumerate(entry["curves"].items()):
            for level in levels:
                values = [np.nan if v is None else v for v in curve[level][metric]]
                ax.plot(
                    x, values, _STYLES[level], marker="o", color=f"C{i}", label=f"{model} ({level})"
                )
        ax.axvline(entry["clean_index"], color="gray", lw=0.8, ls=":")
        ax.set(
            xticks=x,
            xticklabels=entry["level_names"],
            xlabel=entry["parameter"],
            ylabel=metric_registry.label(metric),
            title=f"{metric_registry.label(metric)} under {name}",
        )
    axes[0].legend(fontsize="small")
    return fig


def differences_figure(result: dict, level: str) -> Figure:
    """The paired differences B - A at one level: a panel per metric, a dot (observed) and bar
    (95% interval) per model B."""
    names = result["metric_names"]
    models = list(result["paired_differences"])
    fig = Figure(figsize=(2.6 * len(names), 0.6 * len(models) + 1.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names), sharey=True))
    y = np.arange(len(models))
    for ax, metric in zip(axes, names, strict=True):
        for i, model in enumerate(models):
            d = result["paired_differences"][model][level][metric]
            if d["observed"] is None:
                continue
            lo, hi = d["ci95"] or (d["observed"], d["observed"])
            ax.errorbar(
                d["observed"],
                i,
                xerr=[[d["observed"] - lo], [hi - d["observed"]]],
                fmt="o",
                color=f"C{i + 1}",
                capsize=3,
            )
        ax.axvline(0, color="gray", lw=0.8)
        ax.set(title=metric_registry.label(metric), xlabel="B - A")
    axes[0].set(yticks=y, yticklabels=models)
    fig.suptitle(f"Paired differences to {result['reference']}, {level} level (95% intervals)")
    return fig
