"""The checkpoint part of a run's spec: how many are kept and the metric that picks the best.
Apart from `checkpointing.py` (which imports Orbax) so that the run spec loads without Orbax;
`checkpointing.CheckpointSpec` is this one.
"""

from __future__ import annotations

import dataclasses

from alz_jax.host.errors import check_fields


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    """How many checkpoints are kept, and the validation metric that picks the best (its name
    and direction are checked against the metric registry by run/specs.py)."""

    keep_latest: int = 2
    keep_best: int = 1
    best_metric: str = "validation/loss"
    best_mode: str = "min"

    def __post_init__(self):
        check_fields("checkpoint", [
            ("keep_latest", self.keep_latest, self.keep_latest >= 1, ">= 1"),
            ("keep_best", self.keep_best, self.keep_best >= 1, ">= 1"),
        ])  # fmt: skip
