"""Report figures (matplotlib, no display needed): ROC and precision-recall curves, confusion
matrices and reliability diagrams, as PNG files and as images for TensorBoard.

A figure for a file shows every panel side by side; TensorBoard gets one image per panel (the
`cards` a figure carries), drawn at the size of an image card, `CARD_PX`: TensorBoard 2.21
shows an image scaled down to its card, about 350 px wide in the Images tab of a 1400 px wide
window and at least 303 px in the Time Series tab (cards `minmax(335px, 1fr)` less 16 px padding
each side, 320 px high), so a 440 px figure of three panels shrinks its text below legibility.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import matplotlib
import matplotlib.patches
import matplotlib.text
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from alz_jax.evaluation import metrics
from alz_jax.host import storage

_COLORS = {"slice": "tab:blue", "scan": "tab:orange", "subject": "tab:green"}

CARD_PX = (360, 270)  # (width, height) of one TensorBoard image: see the module docstring
CARD_DPI = 100
# Card text 10.4 to 12.5 px high (points at 100 dpi): legible where the card shows ~1:1.
CARD_RC = {
    "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5, "legend.fontsize": 7.5, "figure.titlesize": 9,
    "figure.labelsize": 8,
}  # fmt: skip
_CARD_TITLE_CHARS = 52  # card titles wrap to lines this long (about 330 px at 9 pt)
_CARDS = "alz_cards"  # the figure attribute holding its card builders


def with_cards(fig: Figure, builders: Sequence[Callable[[], Figure]]) -> Figure:
    """`fig` carrying `builders`: one per panel, each making that panel's TensorBoard card
    (card_figure); to_tensorboard_image draws them instead of `fig`."""
    setattr(fig, _CARDS, list(builders))
    return fig


def card_figure(rows: int = 1, columns: int = 1, title: str = "", **kwargs) -> tuple:
    """(figure, axes (rows, columns)) of one TensorBoard image card, CARD_PX at CARD_DPI, its
    `title` wrapped to the card's width. Call inside matplotlib.rc_context(CARD_RC)."""
    fig = Figure(figsize=(CARD_PX[0] / CARD_DPI, CARD_PX[1] / CARD_DPI), dpi=CARD_DPI,
                 layout="constrained")  # fmt: skip
    axes = fig.subplots(rows, columns, squeeze=False, **kwargs)
    if title:
        fig.suptitle(wrap_title(title))
    return fig, axes


def wrap_title(title: str, width: int = _CARD_TITLE_CHARS) -> str:
    """`title` in lines of at most `width` characters, broken after '; ' or ', ' first."""
    return "\n".join(textwrap.wrap(title, width, break_long_words=False)) or title


def card_figures(fig: Figure) -> list[Figure]:
    """The TensorBoard cards of `fig` (with_cards), each built and drawn with CARD_RC; `[fig]`
    when it has none."""
    builders = getattr(fig, _CARDS, None)
    if not builders:
        return [fig]
    cards = []
    with matplotlib.rc_context(CARD_RC):
        for build in builders:
            card = build()
            FigureCanvasAgg(card).draw()
            cards.append(card)
    return cards


def _roc_axes(ax, units: dict[str, metrics.Units], operating_points: dict[str, float] | None):
    """ROC curves per level on `ax`; `operating_points` marks each level's threshold."""
    for level, u in units.items():
        if len(set(u.labels.tolist())) < 2:
            continue
        auc = metrics.roc_auc(u.labels, u.probs)
        roc = metrics.roc_curve(u.labels, u.probs)
        ax.plot(roc["fpr"], roc["tpr"], color=_COLORS.get(level), label=f"{level} (AUC {auc:.3f})")
        if operating_points and level in operating_points:
            m = metrics.classification_metrics(u.labels, u.probs, operating_points[level])
            ax.plot(1 - m["specificity"], m["sensitivity"], "o", color=_COLORS.get(level))
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set(xlabel="1 - specificity (NC called AD)", ylabel="sensitivity (AD recall)",
           title="ROC" + (" (dots: chosen thresholds)" if operating_points else ""),
           xlim=(0, 1), ylim=(0, 1.01))  # fmt: skip
    if ax.get_legend_handles_labels()[0]:  # no curve where a level has one class only
        ax.legend(loc="lower right")


def _pr_axes(ax, units: dict[str, metrics.Units], operating_points: dict[str, float] | None):
    """Precision-recall curves per level on `ax`; `operating_points` marks the thresholds."""
    for level, u in units.items():
        if len(set(u.labels.tolist())) < 2:
            continue
        pr = metrics.pr_curve(u.labels, u.probs)
        ap = metrics.pr_auc(u.labels, u.probs)
        ax.step(pr["recall"], pr["precision"], where="post", color=_COLORS.get(level),
                label=f"{level} (AP {ap:.3f})")  # fmt: skip
        if operating_points and level in operating_points:
            m = metrics.classification_metrics(u.labels, u.probs, operating_points[level])
            ax.plot(m["sensitivity"], m["precision"], "o", color=_COLORS.get(level))
    ax.set(xlabel="recall (AD)", ylabel="precision (AD)", title="Precision-recall",
           xlim=(0, 1), ylim=(0, 1.01))  # fmt: skip
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left")


def roc_figure(
    units: dict[str, metrics.Units], operating_points: dict[str, float] | None = None,
    title: str = "",
) -> Figure:  # fmt: skip
    """ROC (left) and precision-recall (right) curves per level; `operating_points` marks each
    level's threshold on its curves. Cards: the ROC and the precision-recall panel."""
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    roc_ax, pr_ax = fig.subplots(1, 2)
    _roc_axes(roc_ax, units, operating_points)
    _pr_axes(pr_ax, units, operating_points)
    if title:
        fig.suptitle(title)

    def card(draw: Callable) -> Callable[[], Figure]:
        def build() -> Figure:
            card_fig, axes = card_figure(title=title)
            draw(axes[0, 0], units, operating_points)
            return card_fig

        return build

    return with_cards(fig, [card(_roc_axes), card(_pr_axes)])


def _confusion_axes(ax, counts: np.ndarray, names: Sequence[str], title: str) -> None:
    """A count matrix on `ax` (rows: true class; columns: predicted), each cell's count and
    its share of the row, coloured by that share; `names` on both axes."""
    counts = np.asarray(counts)
    rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for (i, j), c in np.ndenumerate(counts):
        ax.text(j, i, f"{c}\n{rows[i, j]:.0%}", ha="center", va="center",
                color="white" if rows[i, j] > 0.5 else "black")  # fmt: skip
    ticks = range(len(names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="true", title=title)  # fmt: skip


def _fit_cell_text(fig: Figure, ax) -> None:
    """Shrinks the cell texts of a count matrix on `ax` until each fits its cell (one data
    unit square), so that no count spills out of its cell."""
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    corner = ax.transData.transform([(0, 0), (1, 1)])
    cell_w, cell_h = np.abs(corner[1] - corner[0]) * 0.92
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        scale = min(1.0, cell_w / max(box.width, 1), cell_h / max(box.height, 1))
        if scale < 1.0:
            text.set_fontsize(text.get_fontsize() * scale)


def confusion_figure(
    confusions: dict[str, list], thresholds: dict[str, float], title: str = ""
) -> Figure:
    """One 2x2 count matrix per level (rows: true NC, AD; columns: predicted). Cards: one
    level each."""
    fig = Figure(figsize=(3.4 * len(confusions), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(confusions)))
    for ax, (level, level_counts) in zip(axes, confusions.items(), strict=True):
        _confusion_axes(ax, level_counts, metrics.CLASS_NAMES,
                        f"{level}\nthreshold {thresholds[level]:.3f}")  # fmt: skip
    if title:
        fig.suptitle(title)

    def card(level: str) -> Callable[[], Figure]:
        def build() -> Figure:
            card_fig, card_axes = card_figure(title=title)
            _confusion_axes(card_axes[0, 0], confusions[level], metrics.CLASS_NAMES,
                            f"{level}, threshold {thresholds[level]:.3f}")  # fmt: skip
            _fit_cell_text(card_fig, card_axes[0, 0])
            return card_fig

        return build

    return with_cards(fig, [card(level) for level in confusions])


def _reliability_axes(
    ax, count_ax, level: str, bins: dict, keys: tuple, labels: tuple, legend_size="small"
) -> None:
    """One level's reliability diagram on `ax` (`keys` = (x, y) of each bin) and its bin
    counts on `count_ax`; `labels` name the bars, the curve, the y axis and the x axis."""
    bar_label, curve_label, y_label, x_label = labels
    edges = np.asarray(bins["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    filled = [i for i, c in enumerate(bins["count"]) if c]
    x = [bins[keys[0]][i] for i in filled]
    y = [bins[keys[1]][i] for i in filled]
    ax.bar(centers[filled], y, width=np.diff(edges)[filled], alpha=0.35,
           color=_COLORS.get(level), edgecolor="black", label=bar_label)  # fmt: skip
    ax.plot(x, y, "o-", color=_COLORS.get(level), label=curve_label)
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel=y_label, title=f"{level}: ECE {bins['ece']:.3f}")
    ax.tick_params(labelbottom=False)  # the count axis below carries the x labels
    ax.legend(loc="upper left", fontsize=legend_size)
    count_ax.bar(centers, bins["count"], width=np.diff(edges), color="gray")
    count_ax.set(xlim=(0, 1), xlabel=x_label, ylabel="count")


def _reliability_grid(
    bins_by_level: dict[str, dict], title: str, x_key: str, y_key: str, labels: tuple[str, ...]
) -> Figure:
    """Reliability diagrams per level: `y_key` against `x_key` per bin, with the bin counts
    below; `labels` name the bars, the curve, the y axis and the count axis's x. Cards: one
    level each."""
    fig = Figure(figsize=(3.6 * len(bins_by_level), 4.4), layout="constrained")
    grid = fig.subplots(2, len(bins_by_level), height_ratios=(3, 1), squeeze=False,
                        sharex="col")  # fmt: skip
    for k, (level, bins) in enumerate(bins_by_level.items()):
        _reliability_axes(grid[0, k], grid[1, k], level, bins, (x_key, y_key), labels)
    if title:
        fig.suptitle(title)

    def card(level: str) -> Callable[[], Figure]:
        def build() -> Figure:
            card_fig, axes = card_figure(2, 1, title, height_ratios=(3, 1), sharex="col")
            _reliability_axes(axes[0, 0], axes[1, 0], level, bins_by_level[level],
                              (x_key, y_key), labels, legend_size=None)  # fmt: skip
            return card_fig

        return build

    return with_cards(fig, [card(level) for level in bins_by_level])


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


def wrap_name(name: str, width: int = 12) -> str:
    """A class name in lines of about `width` characters, broken between its words
    ('VeryMildDemented' -> 'VeryMild\\nDemented'), for matrix axes that hold whole names."""
    lines: list[str] = []
    for token in _tokens(name):
        if lines and len((lines[-1] + token).rstrip()) <= width:
            lines[-1] += token
        else:
            lines.append(token)
    return "\n".join(line.rstrip() for line in lines)


def _class_matrix_axes(ax, matrix: dict, title: str, band: bool = False) -> None:
    """A K x K confusion matrix on `ax` with the whole class names, wrapped (wrap_name) and
    upright on the x axis, so that neighbouring names never overlap; with `band` (ordered
    stages) each row's cells at most one stage off outlined."""
    names = [wrap_name(n) for n in matrix["rows_true_cols_predicted"]]
    _confusion_axes(ax, matrix["counts"], names, title)
    ax.tick_params(axis="x", labelrotation=90)
    k = len(names)
    for i in range(k) if band else ():
        lo, hi = max(0, i - 1), min(k - 1, i + 1)
        ax.add_patch(matplotlib.patches.Rectangle(
            (lo - 0.5, i - 0.5), hi - lo + 1, 1, fill=False, linestyle="--", linewidth=1.2,
            edgecolor="black"))  # fmt: skip


def multiclass_confusion_figure(
    confusions: dict[str, dict], title: str = "", band: bool = False
) -> Figure:
    """One K x K matrix per level (report[level]["confusion_matrix"]): counts and the share of
    the true class's row in each cell, coloured by that share; the full class names on the
    axes; `band`: the diagonal band (at most one stage off) outlined. Cards: one level each."""
    k = max(len(m["counts"]) for m in confusions.values())
    side = max(3.4, 0.8 * k + 1.2)
    fig = Figure(figsize=(side * len(confusions), side), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(confusions)))
    for ax, (level, matrix) in zip(axes, confusions.items(), strict=True):
        _class_matrix_axes(ax, matrix, level, band)
    if title:
        fig.suptitle(title)

    def card(level: str) -> Callable[[], Figure]:
        def build() -> Figure:
            card_fig, card_axes = card_figure(title=title)
            ax = card_axes[0, 0]
            _class_matrix_axes(ax, confusions[level], level, band)
            _fit_cell_text(card_fig, ax)
            return card_fig

        return build

    return with_cards(fig, [card(level) for level in confusions])


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
    ordinal = report.get("task") == "ordinal"
    decision = (report.get("task_options") or {}).get("decision", "argmax")
    return {
        "confusion": multiclass_confusion_figure(
            {lv: report[lv]["confusion_matrix"] for lv in levels},
            f"{where}; {decision}" + ("; dashed: within one stage" if ordinal else ""),
            band=ordinal,
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
    """The figure for TensorBoard, (N, H, W, 3): its cards (with_cards), one image per panel at
    CARD_PX; a figure without cards as one image about `width_px` wide, its text enlarged so
    the smallest is `min_font_px` pixels high (this changes its fonts: render other copies
    first)."""
    if getattr(fig, _CARDS, None):
        with matplotlib.rc_context(CARD_RC):
            images = [to_image(card, dpi=CARD_DPI) for card in card_figures(fig)]
        height = max(i.shape[0] for i in images)
        width = max(i.shape[1] for i in images)
        batch = np.full((len(images), height, width, 3), 255, np.uint8)  # one shape for all
        for n, image in enumerate(images):
            batch[n, : image.shape[0], : image.shape[1]] = image
        return batch
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


# ---- The grid of augmented training images (train/augmented, `preview`). ----

_GRID_FONT = cv2.FONT_HERSHEY_PLAIN
_GRID_SCALE = 0.8
_GRID_LINE_PX = 12  # the height of one caption line


def _tokens(text: str) -> list[str]:
    """`text` cut where a line may break: after a space, '_' or '-', and before a capital
    that follows a lower-case letter or digit ('VeryMildDemented' -> Very, Mild, Demented);
    the tokens join back to `text`."""
    return [t for t in re.split(r"(?<=[\s_-])|(?<=[a-z0-9])(?=[A-Z])", text) if t]


def caption_width(text: str) -> int:
    """The width in pixels of one caption line as image_grid draws it."""
    return cv2.getTextSize(text, _GRID_FONT, _GRID_SCALE, 1)[0][0]


def _wrap(text: str, width_px: int) -> list[str]:
    """`text` in lines of whole tokens (_tokens), each no wider than `width_px` where its
    tokens allow; trailing spaces dropped."""
    lines: list[str] = []
    for token in _tokens(text):
        if lines and caption_width((lines[-1] + token).rstrip()) <= width_px:
            lines[-1] += token
        else:
            lines.append(token)
    return [line.rstrip() for line in lines]


def grid_captions(batch: dict, num: int, class_names: Sequence[str], width_px: int) -> list:
    """Each tile's caption lines (image_grid): the full class name, or with mixed targets the
    two largest shares and their classes (binary: the AD share), wrapped at word boundaries
    to fit `width_px` where the words allow."""
    captions = []
    for i in range(min(num, len(batch["image"]))):
        if "targets" in batch and len(class_names) == 2:
            captions.append([f"AD {float(batch['targets'][i][1]):.2f}"])
        elif "targets" in batch:
            top2 = np.argsort(-np.asarray(batch["targets"][i]))[:2]
            captions.append([line for k in top2 for line in _wrap(
                f"{float(batch['targets'][i][k]):.1f} {class_names[k]}", width_px)])  # fmt: skip
        else:
            captions.append(_wrap(class_names[int(batch["label"][i])], width_px))
    return captions


def image_grid(
    batch: dict, num: int = 32, columns: int = 8, class_names: Sequence[str] = ("NC", "AD")
) -> np.ndarray:
    """Tiles the first `num` images of a batch into one uint8 (H, W, 1) image, each under its
    caption (grid_captions): a cell is as wide as its image, or as its longest caption word,
    and 4 px more."""
    images = np.asarray(batch["image"])[:num]
    n, size = len(images), images.shape[1]
    rows = math.ceil(n / columns)
    captions = grid_captions(batch, num, class_names, size - 2)
    # A gap between columns keeps neighbouring captions apart.
    cell = max([size] + [caption_width(line) + 4 for lines in captions for line in lines]) + 4
    caption = _GRID_LINE_PX * max(len(lines) for lines in captions)
    grid = np.full((rows * (size + caption), columns * cell, 1), 40, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = r * (size + caption), c * cell + (cell - size) // 2
        grid[top + caption : top + caption + size, left : left + size] = image
        for k, line in enumerate(captions[i]):
            cv2.putText(grid, line, (c * cell + 2, top + (k + 1) * _GRID_LINE_PX - 3),
                        _GRID_FONT, _GRID_SCALE, 255, 1, cv2.LINE_AA)  # fmt: skip
    return grid


# ---- Selective prediction (selective.risk_coverage): accuracy against the share answered. ----

_MARKED_COVERAGES = (0.8, 0.9, 0.95)


def _risk_coverage_axes(ax, curves: dict[str, dict]) -> None:
    """Accuracy (solid) and balanced accuracy (dashed) against coverage per level or model on
    `ax`, with the 80/90/95% coverages marked by dotted lines."""
    for k, (name, curve) in enumerate(curves.items()):
        color = _COLORS.get(name, f"C{k}")
        ax.plot(curve["coverage"], curve["accuracy"], "-", color=color,
                label=f"{name} accuracy")  # fmt: skip
        ax.plot(curve["coverage"], curve["balanced_accuracy"], "--", color=color,
                label=f"{name} balanced")  # fmt: skip
    for coverage in _MARKED_COVERAGES:
        ax.axvline(coverage, linestyle=":", color="gray")
    ax.set(xlabel="coverage (share answered, most confident first)", ylabel="accuracy",
           title="Risk-coverage (dotted: 80/90/95% answered)", xlim=(0, 1.01),
           ylim=(0, 1.01))  # fmt: skip
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left")


def risk_coverage_figure(curves: dict[str, dict], title: str = "") -> Figure:
    """Accuracy and balanced accuracy against coverage (selective.risk_coverage's curves), one
    colour per level or model, with the 80/90/95% coverages marked. Cards: the one panel."""
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    _risk_coverage_axes(fig.subplots(), curves)
    if title:
        fig.suptitle(title)

    def build() -> Figure:
        card_fig, axes = card_figure(title=title)
        _risk_coverage_axes(axes[0, 0], curves)
        return card_fig

    return with_cards(fig, [build])
