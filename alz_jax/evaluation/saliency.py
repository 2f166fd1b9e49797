"""Grad-CAM (Selvaraju et al., 2017): which parts of a slice the decision rests on, for a few
chosen scans, overlaid on the slices. It weighs a CNN's last feature map (what its head pools),
and a ViT's patch tokens entering its last attention (models/registry.py gradcam_target). A CNN
with a spatial attention head (model.spatial_attention) also gets the map its head pooled with,
drawn for the same scans and slices in a figure of its own (`scan_figures`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from alz_jax.data import neighbours, preprocess
from alz_jax.evaluation import figures, metrics
from alz_jax.models import registry, scan

OUTCOMES = ("TP", "TN", "FN", "FP")  # the order scans are picked in, round-robin


def make_gradcam_fn(model, pixel_stats: dict[str, float]) -> Callable:
    """Jitted (params, images uint8 (B, H, W, C), target_sign (B,)) -> (cams (B, H, W) in
    [0, 1], logit margins (B,)). A sign of +1 explains AD (the margin z_AD - z_NC), -1 NC.

    The class score's gradient with respect to the target map (registry.gradcam_target),
    averaged over space, weights that map's channels; the positive part of the weighted sum,
    upsampled (bilinear) to the image and divided by its maximum, is the map.
    """
    mean, std = pixel_stats["mean"], pixel_stats["std"]
    target = registry.gradcam_target(model.spec)

    def gradcam(params, images, target_sign):
        net = model.module(params)
        features, to_logits = target(net, preprocess.normalize(images, mean, std))

        def score(f):
            logits = to_logits(f)
            margin = logits[:, 1] - logits[:, 0]
            return jnp.sum(target_sign * margin), margin

        grads, margin = jax.grad(score, has_aux=True)(features)
        channel_weights = grads.mean(axis=(1, 2))
        cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", features, channel_weights))
        cam = jax.image.resize(cam, (images.shape[0], *images.shape[1:3]), "bilinear")
        cam = jnp.maximum(cam, 0.0)
        return cam / jnp.maximum(cam.max(axis=(1, 2), keepdims=True), 1e-12), margin

    return jax.jit(gradcam)


def make_attention_fn(model, pixel_stats: dict[str, float]) -> Callable:
    """Jitted (params, images uint8 (B, H, W, C)) -> maps (B, H, W) in [0, 1]: the spatial
    attention weights the head pooled its last feature map with (model.spatial_attention),
    upsampled (bilinear) to the image and divided by each slice's maximum."""
    mean, std = pixel_stats["mean"], pixel_stats["std"]

    def attention(params, images):
        net = model.module(params)
        if isinstance(net, scan.ScanModel):  # a scan model's slices: its encoder's maps
            net = net.encoder
        x = preprocess.normalize(images, mean, std)
        weights = net.attention_map(net.feature_map(x))
        maps = jax.image.resize(weights, (images.shape[0], *images.shape[1:3]), "bilinear")
        maps = jnp.maximum(maps, 0.0)
        return maps / jnp.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)

    return jax.jit(attention)


def choose_scans(scans: metrics.Units, threshold: float, count: int) -> list[tuple[str, int]]:
    """`count` scans, round-robin over outcomes TP, TN, FN, FP at `threshold`, the most
    confident of each outcome first: what the model gets right and how it fails."""
    predicted = scans.probs >= threshold
    outcome = np.where(scans.labels == 1, np.where(predicted, "TP", "FN"),
                       np.where(predicted, "FP", "TN"))  # fmt: skip
    queues = {}
    for name in OUTCOMES:
        members = np.flatnonzero(outcome == name)
        confidence = scans.probs[members] if name in ("TP", "FP") else -scans.probs[members]
        queues[name] = list(members[np.argsort(-confidence, kind="stable")])
    chosen = []
    while len(chosen) < count and any(queues.values()):
        for name in OUTCOMES:
            if queues[name] and len(chosen) < count:
                chosen.append(queues[name].pop(0))
    return [(str(scans.keys[i][0]), int(scans.keys[i][1])) for i in chosen]


def _local(tree):
    """A replicated (possibly multi-process) tree as host arrays: Grad-CAM runs on one process."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def gradcam_figure(
    source, records: dict, prob_ad: np.ndarray, scans: list[tuple[str, int]], model, params,
    pixel_stats: dict, image_size: int, slices_per_scan: int, threshold: float,
) -> Figure:  # fmt: skip
    """Rows: the chosen scans; columns: evenly spaced slices of each, with the Grad-CAM of the
    class the scan is predicted (at the scan-level `threshold`) over each slice (draw_gradcam)."""
    return scan_figures(source, records, prob_ad, scans, model, params, pixel_stats, image_size,
                        slices_per_scan, threshold)["gradcam"]  # fmt: skip


def scan_figures(
    source, records: dict, prob_ad: np.ndarray, scans: list[tuple[str, int]], model, params,
    pixel_stats: dict, image_size: int, slices_per_scan: int, threshold: float,
) -> dict[str, Figure]:  # fmt: skip
    """{'gradcam': gradcam_figure's figure} and, for a model with spatial attention
    (model.spatial_attention), 'spatial_attention': the weights its head pooled with, over the
    same scans and slices (draw_attention)."""
    scan_ids = np.asarray(records["scan_id"]).astype(str)
    labels = np.asarray(records["label"])
    slice_index = np.asarray(records["slice_index"])
    rows = []
    for scan_id, label in scans:
        members = np.flatnonzero((scan_ids == scan_id) & (labels == label))
        members = members[np.argsort(slice_index[members], kind="stable")]
        picks = np.unique(np.round(np.linspace(0, len(members) - 1, slices_per_scan)).astype(int))
        rows.append((scan_id, label, float(prob_ad[members].mean()), members[picks]))
    indices = np.concatenate([r[3] for r in rows])
    # With 2.5D input `source` carries each slice's neighbours (bags.split_source).
    images = np.stack([neighbours.eval_image(source[int(i)], image_size) for i in indices])
    signs = np.concatenate([np.full(len(r[3]), 1.0 if r[2] >= threshold else -1.0) for r in rows])
    local = _local(params)
    cams, _ = make_gradcam_fn(model, pixel_stats)(local, images, signs.astype(np.float32))
    scan_rows = [
        ScanRow(scan_id, label, prob, [str(records["file_name"][m]) for m in members],
                [int(slice_index[m]) for m in members])
        for scan_id, label, prob, members in rows
    ]  # fmt: skip
    shown = images[..., images.shape[-1] // 2]  # the slice itself, amid 2.5D neighbours
    out = {"gradcam": draw_gradcam(scan_rows, shown, np.asarray(cams), threshold)}
    if model.spec.spatial_attention:
        maps = make_attention_fn(model, pixel_stats)(local, images)
        out["spatial_attention"] = draw_attention(scan_rows, shown, np.asarray(maps), threshold)
    return out


class ScanRow(NamedTuple):
    """One scan of a Grad-CAM figure: its id, true label, mean P(AD) and its shown slices'
    file names and slice indices."""

    scan_id: str
    label: int
    prob: float
    file_names: list[str]
    slice_indices: list[int]


EXPLANATION = ("Red: regions that raised the score of the class the scan is predicted as; "
               "blue: little or none.")  # fmt: skip
CARD_EXPLANATION = "Red: raised the predicted class's score; blue: little or none."
ATTENTION_EXPLANATION = ("Red: where the head's spatial attention put the most weight when "
                         "pooling; blue: little or none.")  # fmt: skip
ATTENTION_CARD_EXPLANATION = "Red: most weight in the head's pooling; blue: little or none."


class MapKind(NamedTuple):
    """What a figure of maps over slices says: its title (given the threshold), its colour
    scale's label, what red means (figure, card), and whether a map is of the predicted class."""

    title: str
    bar_label: str
    explanation: str
    card_explanation: str
    of_class: bool


GRADCAM = MapKind("Grad-CAM of each scan's predicted class, threshold {threshold:.3f}",
                  "Grad-CAM (1: the slice's highest)", EXPLANATION, CARD_EXPLANATION,
                  True)  # fmt: skip
ATTENTION = MapKind("Spatial attention: the weights each slice's last feature map was pooled with",
                    "attention (1: the slice's highest)", ATTENTION_EXPLANATION,
                    ATTENTION_CARD_EXPLANATION, False)  # fmt: skip


def _scan_text(row: ScanRow, threshold: float, of_class: bool = True) -> str:
    """What a scan's row says: its id, truth, P(AD) and the class its maps explain."""
    predicted = "AD" if row.prob >= threshold else "NC"
    text = f"scan {row.scan_id}: true {metrics.CLASS_NAMES[row.label]}, P(AD) {row.prob:.2f}"
    return text + (f", map of {predicted}" if of_class else "")


def _overlay(ax, image: np.ndarray, cam: np.ndarray, title: str):
    """A slice (H, W) with its map over it, titled; returns the map's image (for a colour bar)."""
    ax.set_axis_off()
    ax.imshow(image, cmap="gray", vmin=0, vmax=255)
    shown = ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    ax.set_title(title)
    return shown


def _colorbar(fig: Figure, shown, axes, label: str = GRADCAM.bar_label) -> None:
    """The maps' colour scale beside `axes`."""
    bar = fig.colorbar(shown, ax=axes, shrink=0.8, ticks=[0, 0.5, 1])
    bar.set_label(label)


def _fit_titles(fig: Figure, axes) -> None:
    """Shortens each axes title in the middle ('...') until it is no wider than its axes, so
    neighbouring file names never overlap."""
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    for ax in axes:
        name, width = ax.get_title(), 0.95 * ax.get_window_extent(renderer).width
        for keep in range(len(name) - 1, 3, -1):
            if ax.title.get_window_extent(renderer).width <= width:
                break
            ax.title.set_text(name[: keep // 2] + "..." + name[len(name) - (keep - keep // 2) :])


def draw_gradcam(rows: list[ScanRow], images: np.ndarray, cams: np.ndarray,
                 threshold: float) -> Figure:  # fmt: skip
    """The Grad-CAM figure: a row per scan (ScanRow), its slices (`images` (N, H, W) uint8, in
    row order) under their maps (`cams` (N, H, W) in [0, 1]), titled with their file names, a
    colour scale and what red means. Cards: one scan each, slices titled by index."""
    return draw_maps(rows, images, cams, threshold, GRADCAM)


def draw_attention(rows: list[ScanRow], images: np.ndarray, maps: np.ndarray,
                   threshold: float) -> Figure:  # fmt: skip
    """The spatial attention figure, laid out as draw_gradcam's (the same scans and slices):
    `maps` (N, H, W) in [0, 1] the head's pooling weights, each slice's scaled to 1."""
    return draw_maps(rows, images, maps, threshold, ATTENTION)


def draw_maps(rows: list[ScanRow], images: np.ndarray, cams: np.ndarray, threshold: float,
              kind: MapKind) -> Figure:  # fmt: skip
    """A figure of maps over slices, saying what `kind` says: a row per scan, its slices under
    their maps, titled with their file names; cards: one scan each, slices titled by index."""
    columns = max(len(r.file_names) for r in rows)
    fig = Figure(figsize=(1.9 * columns + 1.2, 2.1 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), columns, squeeze=False)
    offsets = np.cumsum([0] + [len(r.file_names) for r in rows])
    shown = None
    for r, row in enumerate(rows):
        for col in range(columns):
            axes[r, col].set_axis_off()
            if col < len(row.file_names):
                k = offsets[r] + col
                shown = _overlay(
                    axes[r, col], images[k], cams[k], row.file_names[col].split("/")[-1]
                )
                axes[r, col].title.set_fontsize(7)
        text = _scan_text(row, threshold, kind.of_class)
        axes[r, 0].text(
            -0.08, 0.5, text.replace(": ", "\n").replace(", ", "\n"),
            transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8,
        )  # fmt: skip
    _colorbar(fig, shown, axes, kind.bar_label)
    fig.suptitle(kind.title.format(threshold=threshold))
    fig.supxlabel(kind.explanation)
    _fit_titles(fig, axes.ravel())

    def card(r: int) -> Callable[[], Figure]:
        def build() -> Figure:
            row, n = rows[r], len(rows[r].file_names)
            card_fig, card_axes = figures.card_figure(
                math.ceil(n / 3), min(n, 3), _scan_text(row, threshold, kind.of_class)
            )  # fmt: skip
            for col, ax in enumerate(card_axes.ravel()):
                ax.set_axis_off()
                if col < n:
                    k = offsets[r] + col
                    last = _overlay(ax, images[k], cams[k], f"slice {row.slice_indices[col]}")
            _colorbar(card_fig, last, card_axes, kind.bar_label)
            card_fig.supxlabel(kind.card_explanation)
            return card_fig

        return build

    return figures.with_cards(fig, [card(r) for r in range(len(rows))])
