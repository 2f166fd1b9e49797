"""Grad-CAM (Selvaraju et al., 2017): which parts of a slice the decision rests on, for a few
chosen scans, overlaid on the slices. It weighs a CNN's last feature map (what its head pools),
and a ViT's patch tokens entering its last attention (models/registry.py gradcam_target)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from alz_jax.data import preprocess
from alz_jax.evaluation import metrics
from alz_jax.models import registry

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
    class the scan is predicted (at the scan-level `threshold`) over each slice."""
    scan_ids = np.asarray(records["scan_id"]).astype(str)
    labels = np.asarray(records["label"])
    rows = []
    for scan_id, label in scans:
        members = np.flatnonzero((scan_ids == scan_id) & (labels == label))
        members = members[np.argsort(np.asarray(records["slice_index"])[members], kind="stable")]
        picks = np.unique(np.round(np.linspace(0, len(members) - 1, slices_per_scan)).astype(int))
        rows.append((scan_id, label, float(prob_ad[members].mean()), members[picks]))
    indices = np.concatenate([r[3] for r in rows])
    images = np.stack([
        preprocess.to_model_input(preprocess.decode_image(source[int(i)]["image"]), image_size)
        for i in indices
    ])  # fmt: skip
    signs = np.concatenate([np.full(len(r[3]), 1.0 if r[2] >= threshold else -1.0) for r in rows])
    cams, _ = make_gradcam_fn(model, pixel_stats)(_local(params), images, signs.astype(np.float32))
    cams = np.asarray(cams)
    columns = max(len(r[3]) for r in rows)
    fig = Figure(figsize=(1.9 * columns, 2.1 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), columns, squeeze=False)
    k = 0
    for row, (scan_id, label, prob, members) in enumerate(rows):
        predicted = "AD" if prob >= threshold else "NC"
        for col in range(columns):
            ax = axes[row, col]
            ax.set_axis_off()
            if col >= len(members):
                continue
            ax.imshow(images[k, :, :, 0], cmap="gray", vmin=0, vmax=255)
            ax.imshow(cams[k], cmap="jet", alpha=0.4, vmin=0, vmax=1)
            name = str(records["file_name"][members[col]])
            ax.set_title(name, fontsize=7)
            k += 1
        axes[row, 0].text(
            -0.08, 0.5, f"scan {scan_id}\ntrue {metrics.CLASS_NAMES[label]}\nP(AD) {prob:.2f}"
            f"\nmap: {predicted}", transform=axes[row, 0].transAxes, ha="right", va="center",
            fontsize=8,
        )  # fmt: skip
    fig.suptitle(f"Grad-CAM of each scan's predicted class, threshold {threshold:.3f}")
    return fig
