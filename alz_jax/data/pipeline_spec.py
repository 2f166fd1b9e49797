"""The input pipeline's part of a run's spec: image size, host augmentation, Mixup/CutMix,
workers and buffers. Apart from `input_pipeline.py` (which imports Grain) so that the run spec,
the train step and `bench step` load where Grain is not installed;
`input_pipeline.PipelineSpec` is this one.
"""

from __future__ import annotations

import dataclasses

from alz_jax.data import augment, mixing
from alz_jax.host.errors import check_fields

BAG_AUGMENTS = ("slice", "bag")  # each slice its own augmentation draw, or one draw per bag


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
    # Bags of slices (data/bags.py): each scan is one training example of `bag_size` slices
    # (0: as many as the longest scan has), augmented per slice or with one draw per bag.
    bags: bool = False
    bag_size: int = 16
    bag_augment: str = "slice"
    # 2.5D: each slice with its `neighbours` neighbours either side in its scan as channels.
    neighbours: int = 0

    def __post_init__(self):
        size = self.image_size
        check_fields("data", [
            ("image_size", size, size > 0 and size % 32 == 0, "a positive multiple of 32"),
            ("num_workers", self.num_workers, self.num_workers >= 0, ">= 0"),
            ("eval_num_workers", self.eval_num_workers, self.eval_num_workers >= 0, ">= 0"),
            ("prefetch_buffer_size", self.prefetch_buffer_size, self.prefetch_buffer_size >= 0,
             ">= 0"),
            ("bag_size", self.bag_size, _is_int(self.bag_size) and self.bag_size >= 0,
             "an integer >= 0 (slices per training bag; 0: all, as many as the longest scan)"),
            ("bag_augment", self.bag_augment, self.bag_augment in BAG_AUGMENTS,
             "|".join(BAG_AUGMENTS)),
            ("neighbours", self.neighbours, _is_int(self.neighbours) and self.neighbours >= 0,
             "an integer >= 0 (neighbouring slices either side as channels; 0: none)"),
        ])  # fmt: skip

    @property
    def channels(self) -> int:
        """Channels of a model input: 1, or 2 * neighbours + 1 with 2.5D."""
        return 2 * self.neighbours + 1


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
