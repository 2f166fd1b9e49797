"""The checkpoint part of a run's spec: how many are kept and the metric that picks the best.
Apart from `checkpointing.py` (which imports Orbax) so that the run spec loads without Orbax;
`checkpointing.CheckpointSpec` is this one.
"""

from __future__ import annotations

import dataclasses

from alz_jax.host.errors import check_fields

# Names of the validation scalars a best checkpoint may be chosen on.
BEST_METRICS = tuple(
    f"validation/{name}"
    for name in (
        "loss",
        "accuracy",
        "balanced_accuracy",
        "scan_accuracy",
        "roc_auc",
        "macro_f1",
        "quadratic_kappa",
    )  # the last one: K > 2 classes only
)


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    """How many checkpoints are kept, and the validation metric that picks the best."""

    keep_latest: int = 2
    keep_best: int = 1
    best_metric: str = "validation/loss"
    best_mode: str = "min"

    def __post_init__(self):
        mode = "min" if self.best_metric.endswith("/loss") else "max"
        check_fields("checkpoint", [
            ("keep_latest", self.keep_latest, self.keep_latest >= 1, ">= 1"),
            ("keep_best", self.keep_best, self.keep_best >= 1, ">= 1"),
            ("best_metric", self.best_metric, self.best_metric in BEST_METRICS,
             "|".join(BEST_METRICS)),
            ("best_mode", self.best_mode, self.best_mode == mode, f"{mode} for {self.best_metric}"),
        ])  # fmt: skip
