"""Report figures (matplotlib, no display needed): ROC and precision-recall curves, confusion
matrices and reliability diagrams, as PNG files and as images for TensorBoard."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import matplotlib.text
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from alz_jax.evaluation import metrics
from alz_jax.host import storage

_COLORS = {"slice": "tab:blue", "scan": "tab:orange", "subject": "tab:green"}


def roc_figure(
    units: dict[str, metrics.Units], operating_points: dict[str, float] | None = None,
    title: str = "",
) -> Figure:  # fmt: skip
    """ROC (left) and precision-recall (right) curves per level; `operating_points` marks each
    level's threshold on its curves."""
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    roc_ax, pr_ax = fig.subplots(1, 2)
    for level, u in units.items():
        if len(set(u.labels.tolist())) < 2:
            continue
        color = _COLORS.get(level)
        roc = metrics.roc_curve(u.labels, u.probs)
        auc = metrics.roc_auc(u.labels, u.probs)
        roc_ax.plot(roc["fpr"], roc["tpr"], color=color, label=f"{level} (AUC {auc:.3f})")
        pr = metrics.pr_curve(u.labels, u.probs)
        ap = metrics.pr_auc(u.labels, u.probs)
        pr_ax.step(pr["recall"], pr["precision"], where="post", color=color,
                   label=f"{level} (AP {ap:.3f})")  # fmt: skip
        if operating_points and level in operating_points:
            t = operating_points[level]
            m = metrics.classification_metrics(u.labels, u.probs, t)
            roc_ax.plot(1 - m["specificity"], m["sensitivity"], "o", color=color)
            pr_ax.plot(m["sensitivity"], m["precision"], "o", color=color)
    roc_ax.plot([0, 1], [0, 1], ":", color="gray")
    roc_ax.set(xlabel="1 - specificity (NC called AD)", ylabel="sensitivity (AD recall)",
               title="ROC" + (" (dots: chosen thresholds)" if operating_points else ""),
               xlim=(0, 1), ylim=(0, 1.01))  # fmt: skip
    pr_ax.set(xlabel="recall (AD)", ylabel="precision (AD)", title="Precision-recall",
              xlim=(0, 1), ylim=(0, 1.01))  # fmt: skip
    if roc_ax.get_legend_handles_labels()[0]:  # no curve where a level has one class only
        roc_ax.legend(loc="lower right")
        pr_ax.legend(loc="lower left")
    if title:
        fig.suptitle(title)
    return fig


def confusion_figure(
    confusions: dict[str, list], thresholds: dict[str, float], title: str = ""
) -> Figure:
    """One 2x2 count matrix per level (rows: true NC, AD; columns: predicted)."""
    fig = Figure(figsize=(3.4 * len(confusions), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(confusions)))
    for ax, (level, level_counts) in zip(axes, confusions.items(), strict=True):
        counts = np.asarray(level_counts)
        rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        for (i, j), c in np.ndenumerate(counts):
            ax.text(j, i, f"{c}\n{rows[i, j]:.0%}", ha="center", va="center",
                    color="white" if rows[i, j] > 0.5 else "black")  # fmt: skip
        ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=metrics.CLASS_NAMES,
               yticklabels=metrics.CLASS_NAMES, xlabel="predicted", ylabel="true",
               title=f"{level}\nthreshold {thresholds[level]:.3f}")  # fmt: skip
    if title:
        fig.suptitle(title)
    return fig


def _reliability_grid(
    bins_by_level: dict[str, dict], title: str, x_key: str, y_key: str, labels: tuple[str, ...]
) -> Figure:
    """Reliability diagrams per level: `y_key` against `x_key` per bin, with the bin counts
    below; `labels` name the bars, the curve, the y axis and the count axis's x."""
    bar_label, curve_label, y_label, x_label = labels
    fig = Figure(figsize=(3.6 * len(bins_by_level), 4.4), layout="constrained")
    grid = fig.subplots(2, len(bins_by_level), height_ratios=(3, 1), squeeze=False)
    for k, (level, bins) in enumerate(bins_by_level.items()):
        ax, count_ax = grid[0, k], grid[1, k]
        edges = np.asarray(bins["edges"])
        centers = (edges[:-1] + edges[1:]) / 2
        filled = [i for i, c in enumerate(bins["count"]) if c]
        x = [bins[x_key][i] for i in filled]
        y = [bins[y_key][i] for i in filled]
        ax.bar(centers[filled], y, width=np.diff(edges)[filled], alpha=0.35,
               color=_COLORS.get(level), edgecolor="black", label=bar_label)  # fmt: skip
        ax.plot(x, y, "o-", color=_COLORS.get(level), label=curve_label)
        ax.plot([0, 1], [0, 1], ":", color="gray")
        ax.set(xlim=(0, 1), ylim=(0, 1), ylabel=y_label,
               title=f"{level}: ECE {bins['ece']:.3f}")  # fmt: skip
        ax.legend(loc="upper left", fontsize="small")
        count_ax.bar(centers, bins["count"], width=np.diff(edges), color="gray")
        count_ax.set(xlim=(0, 1), xlabel=x_label, ylabel="count")
    if title:
        fig.suptitle(title)
    return fig


def reliability_figure(bins_by_level: dict[str, dict], title: str = "") -> Figure:
    """Reliability diagrams: observed AD fraction against mean predicted P(AD) per bin, with
    the bin counts below."""
    labels = ("observed AD fraction", "at mean P(AD)", "observed AD fraction", "predicted P(AD)")
    return _reliability_grid(bins_by_level, title, "mean_predicted", "observed_ad_fraction",
                             labels)  # fmt: skip


def report_figures(report: dict, units: dict[str, metrics.Units]) -> dict[str, Figure]:
    """The figures of a report: ROC/PR with the validation thresholds, confusion matrices at
    them, reliability diagrams."""
    levels = [lv for lv in metrics.LEVELS if lv in report]
    where = f"{report['split']} split, step {report['checkpoint_step']}, {report['weights']}"
    thresholds = {lv: report[lv]["threshold"] for lv in levels}
    return {
        "roc": roc_figure({lv: units[lv] for lv in levels}, thresholds, where),
        "confusion": confusion_figure(
            {lv: report[lv]["confusion_matrix"]["counts"] for lv in levels},
            thresholds,
            f"{where}; thresholds chosen on validation",
        ),
        "reliability": reliability_figure({lv: report[lv]["calibration"] for lv in levels}, where),
    }


# ---- K >= 3 classes (multiclass_reports): argmax decides, so no thresholds. ----


def multiclass_confusion_figure(
    confusions: dict[str, dict], title: str = "", max_label: int = 12
) -> Figure:
    """One K x K matrix per level (report[level]["confusion_matrix"]): counts and the share of
    the true class's row in each cell, coloured by that share; class names on the axes."""
    k = max(len(m["counts"]) for m in confusions.values())
    side = max(3.4, 0.8 * k + 1.2)
    fig = Figure(figsize=(side * len(confusions), side), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(confusions)))
    for ax, (level, matrix) in zip(axes, confusions.items(), strict=True):
        counts = np.asarray(matrix["counts"])
        rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        names = [n if len(n) <= max_label else n[: max_label - 1] + "~"
                 for n in matrix["rows_true_cols_predicted"]]  # fmt: skip
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        for (i, j), c in np.ndenumerate(counts):
            ax.text(j, i, f"{c}\n{rows[i, j]:.0%}", ha="center", va="center",
                    color="white" if rows[i, j] > 0.5 else "black")  # fmt: skip
        ticks = range(len(names))
        ax.set(xticks=ticks, yticks=ticks, xticklabels=names, yticklabels=names,
               xlabel="predicted", ylabel="true", title=level)  # fmt: skip
        ax.tick_params(axis="x", labelrotation=30)
    if title:
        fig.suptitle(title)
    return fig


def top_label_reliability_figure(bins_by_level: dict[str, dict], title: str = "") -> Figure:
    """Top-label reliability diagrams: accuracy against mean confidence (the largest class
    probability) per bin, with the bin counts below."""
    labels = ("accuracy", "at mean confidence", "accuracy", "confidence (top-class probability)")
    return _reliability_grid(bins_by_level, title, "mean_confidence", "accuracy", labels)


def multiclass_figures(report: dict, units: dict[str, metrics.Units]) -> dict[str, Figure]:
    """The figures of a K-class report (multiclass_reports.build_report): confusion matrices
    and top-label reliability diagrams per level. `units` is taken so that callers call this
    as report_figures; both figures are drawn from the report's numbers."""
    del units
    levels = [lv for lv in metrics.LEVELS if lv in report]
    where = f"{report['split']} split, step {report['checkpoint_step']}, {report['weights']}"
    return {
        "confusion": multiclass_confusion_figure(
            {lv: report[lv]["confusion_matrix"] for lv in levels}, f"{where}; argmax"
        ),
        "reliability": top_label_reliability_figure(
            {lv: report[lv]["calibration"] for lv in levels}, where
        ),
    }


def to_image(fig: Figure, dpi: int = 80) -> np.ndarray:
    """The figure rendered to an RGB uint8 array (H, W, 3), e.g. for TensorBoard."""
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def to_tensorboard_image(fig: Figure, width_px: int = 440, min_font_px: float = 12.0) -> np.ndarray:
    """The figure for a TensorBoard image card, (1, H, W, 3): about `width_px` wide (an image
    card is about that wide, and scales wider images down), its text
    enlarged so the smallest is `min_font_px` pixels high (the full-size PNG in the workdir is
    rendered separately). Changes the figure's fonts: render other copies first."""
    dpi = width_px / fig.get_figwidth()
    texts = fig.findobj(matplotlib.text.Text)
    smallest = min((t.get_fontsize() for t in texts if t.get_text()), default=10.0)
    scale = max(1.0, min_font_px / (smallest * dpi / 72))
    for text in texts:
        text.set_fontsize(text.get_fontsize() * scale)
    return to_image(fig, dpi=int(dpi))[None]


def save(fig: Figure, path: str | Path, dpi: int = 110) -> None:
    """Writes the figure as PNG."""
    FigureCanvasAgg(fig)
    with storage.path(path).open("wb") as f:  # a local path or gs://
        fig.savefig(f, format="png", dpi=dpi)


def image_grid(
    batch: dict, num: int = 32, columns: int = 8, class_names: Sequence[str] = ("NC", "AD")
) -> np.ndarray:
    """Tiles the first `num` images of a batch into one uint8 (H, W, 1) image with captions: the
    class (its first 6 letters), or with mixed targets the two largest shares."""
    images = np.asarray(batch["image"])[:num]
    n, size = len(images), images.shape[1]
    rows = math.ceil(n / columns)
    caption = 12
    grid = np.full((rows * (size + caption), columns * size, 1), 40, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top = r * (size + caption)
        grid[top + caption : top + caption + size, c * size : (c + 1) * size] = image
        if "targets" in batch and len(class_names) == 2:
            text = f"AD {float(batch['targets'][i][1]):.2f}"
        elif "targets" in batch:
            top2 = np.argsort(-np.asarray(batch["targets"][i]))[:2]
            text = " ".join(f"{class_names[k][:3]}{float(batch['targets'][i][k]):.1f}"
                            for k in top2)  # fmt: skip
        else:
            text = class_names[int(batch["label"][i])][:6]
        cv2.putText(grid, text, (c * size + 2, top + caption - 3), cv2.FONT_HERSHEY_PLAIN,
                    0.8, 255, 1, cv2.LINE_AA)  # fmt: skip
    return grid
