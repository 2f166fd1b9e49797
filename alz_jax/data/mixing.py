"""Mixup and CutMix on host, on whole batches, with timm's semantics and the seed's schedule.

Per group of `group_size` consecutive examples (so a global batch is mixed the same way whatever
the number of processes): with probability `prob(step)` the group is mixed, by CutMix with
probability `switch_prob` else Mixup; lam ~ Beta(alpha, alpha); the partner of example i is
example G-1-i of its group (the group reversed). CutMix copies a box of side sqrt(1 - lam) from
the partner and corrects lam to the uncovered area. Modes: 'batch' (one lam per group), 'pair'
(one per partner pair), 'elem' (one per example). Targets are label-smoothed one-hots (smoothing
applied here, once) mixed with the same lam; the loss takes them as soft targets.

Images stay uint8: a Mixup blend is rounded to the nearest level (at most 0.5/255 off), which
keeps the host-to-device transfer at one byte per pixel.

The mixing probability follows the seed report's three phases: `prob` until `explore_end` of
training, a linear fade to zero at `transition_end`, none after. It is a function of the step.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from alz_jax.host.errors import check_fields

MODES = ("batch", "pair", "elem")


@dataclasses.dataclass(frozen=True)
class MixSpec:
    """Mixup/CutMix settings (config.mix) resolved for a run."""

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"
    group_size: int = 64
    explore_end: float = 0.5  # fractions of training
    transition_end: float = 0.75
    label_smoothing: float = 0.1
    num_classes: int = 2
    total_steps: int = 1

    def __post_init__(self):
        check_fields("mix", [
            ("prob", self.prob, 0.0 <= self.prob <= 1.0, "in [0, 1]"),
            ("switch_prob", self.switch_prob, 0.0 <= self.switch_prob <= 1.0, "in [0, 1]"),
            ("mixup_alpha", self.mixup_alpha, 0 <= self.mixup_alpha < math.inf,
             ">= 0 and finite"),
            ("cutmix_alpha", self.cutmix_alpha, 0 <= self.cutmix_alpha < math.inf,
             ">= 0 and finite"),
            ("mode", self.mode, self.mode in MODES, "|".join(MODES)),
            ("group_size", self.group_size, self.group_size > 0, "> 0"),
            ("explore_end/transition_end", (self.explore_end, self.transition_end),
             0.0 <= self.explore_end <= self.transition_end <= 1.0,
             "0 <= explore_end <= transition_end <= 1"),
            # Set from config.optim.label_smoothing, config.model.num_classes and the run's length.
            ("label_smoothing", self.label_smoothing, 0 <= self.label_smoothing < 1,
             "in [0, 1) (config.optim.label_smoothing)"),
            ("num_classes", self.num_classes, self.num_classes >= 2,
             ">= 2 (config.model.num_classes)"),
            ("total_steps", self.total_steps, self.total_steps >= 1, ">= 1"),
        ])  # fmt: skip

    @property
    def enabled(self) -> bool:
        """Whether mixing can happen at all."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def probability_at(step: int, spec: MixSpec) -> float:
    """The mixing probability at optimizer step `step` (three-phase schedule)."""
    explore = spec.explore_end * spec.total_steps
    transition = spec.transition_end * spec.total_steps
    if step < explore:
        return spec.prob
    if step >= transition:
        return 0.0
    return spec.prob * (transition - step) / (transition - explore)


def smooth_one_hot(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
    """Label-smoothed one-hot targets: off = s/K, on = 1 - s + s/K."""
    off = smoothing / num_classes
    targets = np.full((len(labels), num_classes), off, np.float32)
    targets[np.arange(len(labels)), labels] = 1.0 - smoothing + off
    return targets


def cutmix_box(
    rng: np.random.Generator, height: int, width: int, lam: float
) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of timm's CutMix box for lam, clipped to the image."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(y0), int(y1), int(x0), int(x1)


def _draw(rng: np.random.Generator, spec: MixSpec, prob: float) -> tuple[bool, float]:
    """(use_cutmix, lam) for one unit; lam = 1 when this unit is not mixed."""
    mix = rng.random() < prob
    use_cutmix = spec.cutmix_alpha > 0 and (
        spec.mixup_alpha <= 0 or rng.random() < spec.switch_prob
    )
    alpha = spec.cutmix_alpha if use_cutmix else spec.mixup_alpha
    lam = float(rng.beta(alpha, alpha)) if mix else 1.0
    return use_cutmix, lam


def mix_group(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, spec: MixSpec, prob: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mixes one group (G, H, W, C) uint8, or (G, K, H, W, C) bags (a partner bag's slices, the
    same box on each slice); returns (images, soft targets (G, classes), lam each)."""
    n, (height, width) = len(images), images.shape[-3:-1]
    partner = np.arange(n)[::-1]
    source = images.astype(np.float32)
    out = source.copy()
    lam = np.ones(n, np.float64)
    if spec.mode == "batch":
        units = [np.arange(n)]
    elif spec.mode == "pair":
        units = [np.array([i, n - 1 - i]) for i in range(n // 2)]
    else:
        units = [np.array([i]) for i in range(n)]
    for unit in units:
        use_cutmix, unit_lam = _draw(rng, spec, prob)
        if unit_lam == 1.0:
            continue
        if use_cutmix:
            y0, y1, x0, x1 = cutmix_box(rng, height, width, unit_lam)
            out[unit, ..., y0:y1, x0:x1, :] = source[partner[unit], ..., y0:y1, x0:x1, :]
            unit_lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
        else:
            out[unit] = unit_lam * source[unit] + (1.0 - unit_lam) * source[partner[unit]]
        lam[unit] = unit_lam
    targets = smooth_one_hot(labels, spec.num_classes, spec.label_smoothing)
    mixed_targets = lam[:, None] * targets + (1.0 - lam[:, None]) * targets[partner]
    mixed = np.clip(np.rint(out), 0, 255).astype(images.dtype)
    return mixed, mixed_targets.astype(np.float32), lam


@dataclasses.dataclass(frozen=True)
class BatchMixer:
    """Grain `map_with_index` transform: mixes a per-process batch group by group.

    Each group's random stream is seeded by (seed, the group's global position), so a global
    batch is mixed identically whatever the process count; the step is the batch index.
    """

    spec: MixSpec
    seed: int
    process_index: int
    process_count: int
    per_process_batch: int

    def __call__(self, step: int, batch: dict) -> dict:
        g, b = self.spec.group_size, self.per_process_batch
        prob = probability_at(step, self.spec)
        first_group = (step * b * self.process_count + self.process_index * b) // g
        images, targets = [], []
        for k in range(b // g):
            rng = np.random.default_rng([self.seed, first_group + k])
            part = slice(k * g, (k + 1) * g)
            mixed, soft, _ = mix_group(
                rng, batch["image"][part], batch["label"][part], self.spec, prob
            )
            images.append(mixed)
            targets.append(soft)
        return dict(batch, image=np.concatenate(images), targets=np.concatenate(targets))
