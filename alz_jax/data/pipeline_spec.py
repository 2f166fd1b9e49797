"""The input pipeline's part of a run's spec: image size, host augmentation, Mixup/CutMix,
workers and buffers. Apart from `input_pipeline.py` (which imports Grain) so that the run spec,
the train step and `bench step` load where Grain is not installed;
`input_pipeline.PipelineSpec` is this one.
"""

from __future__ import annotations

import dataclasses

from alz_jax.data import augment, mixing
from alz_jax.host.errors import check_fields


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """How images reach the model: the input size, the host augmentations, Mixup/CutMix (off by
    default; its schedule needs the run's length), and the Grain workers and buffers."""

    image_size: int = 224
    augment: augment.AugmentSpec = dataclasses.field(default_factory=augment.AugmentSpec)
    mix: mixing.MixSpec = dataclasses.field(default_factory=lambda: mixing.MixSpec(prob=0.0))
    num_workers: int = 0
    eval_num_workers: int = 0
    prefetch_buffer_size: int = 2
    # Training draws records with replacement so that every class is equally likely
    # (data.balanced_sampling), instead of a shuffled pass over the train split per epoch.
    balanced_sampling: bool = False

    def __post_init__(self):
        size = self.image_size
        check_fields("data", [
            ("image_size", size, size > 0 and size % 32 == 0, "a positive multiple of 32"),
            ("num_workers", self.num_workers, self.num_workers >= 0, ">= 0"),
            ("eval_num_workers", self.eval_num_workers, self.eval_num_workers >= 0, ">= 0"),
            ("prefetch_buffer_size", self.prefetch_buffer_size, self.prefetch_buffer_size >= 0,
             ">= 0"),
        ])  # fmt: skip
