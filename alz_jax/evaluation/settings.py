"""The evaluation part of a run's spec (config.eval): threshold, calibration, bootstrap,
test-time views, Grad-CAM. Apart from `reports.py` (which imports Matplotlib and Grain) so
that the run spec loads without them; `reports.EvalSettings` is this one.
"""

from __future__ import annotations

import dataclasses

from alz_jax.core import steps
from alz_jax.evaluation import metrics
from alz_jax.host.errors import UserError

TTA_VIEWS = tuple(v for v in steps.VIEWS if v != "plain")
# The choices of the evaluation settings below (tasks.ordinal_decision and conformal.py read them).
DECISIONS = ("auto", "argmax", "median", "expected")
CONFORMAL_SCORES = ("aps", "lac")
CONFORMAL_CALIBRATIONS = ("marginal", "class")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How a report is made (config.eval, overridable on the evaluate command line)."""

    threshold: str = "youden"  # or 'sensitivity:T'
    temperature_scaling: bool = False  # always fitted on validation; applied only if True
    calibration_bins: int = 10
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 0
    tta: tuple[str, ...] = ()  # views averaged with the plain image: hflip, vflip
    gradcam_scans: int = 4
    gradcam_slices: int = 5
    # Ordered stages: how the stage is called (tasks.DECISIONS; auto: the head's own rule).
    ordinal_decision: str = "auto"
    # Prediction sets (conformal.py): miscoverage alpha, score, marginal or per-class quantiles.
    conformal_alpha: float = 0.1
    conformal_score: str = "aps"
    conformal_calibration: str = "marginal"
    # `predict` answers "refer" for this share of the least confident cases (set on validation).
    abstain_rate: float = 0.0

    def __post_init__(self):
        try:
            metrics.parse_threshold_method(self.threshold)
        except ValueError as e:
            raise UserError(f"config.eval.threshold: {e}.") from e
        bad = [v for v in self.tta if v not in TTA_VIEWS]
        checks = [
            ("tta", ",".join(self.tta), not bad and len(set(self.tta)) == len(self.tta),
             f"a comma-separated subset of {', '.join(TTA_VIEWS)}"),
            ("calibration_bins", self.calibration_bins, self.calibration_bins >= 2, ">= 2"),
            ("bootstrap_samples", self.bootstrap_samples, self.bootstrap_samples >= 0,
             ">= 0 (0: no intervals)"),
            # numpy's generators refuse a negative seed.
            ("bootstrap_seed", self.bootstrap_seed, self.bootstrap_seed >= 0, ">= 0"),
            ("gradcam_scans", self.gradcam_scans, self.gradcam_scans >= 0, ">= 0"),
            ("gradcam_slices", self.gradcam_slices, self.gradcam_slices >= 1, ">= 1"),
            ("ordinal_decision", self.ordinal_decision, self.ordinal_decision in DECISIONS,
             f"one of {', '.join(DECISIONS)}"),
            ("conformal_alpha", self.conformal_alpha, 0.0 < self.conformal_alpha < 1.0,
             "in (0, 1): the miscoverage the prediction sets allow"),
            ("conformal_score", self.conformal_score, self.conformal_score in CONFORMAL_SCORES,
             f"one of {', '.join(CONFORMAL_SCORES)}"),
            ("conformal_calibration", self.conformal_calibration,
             self.conformal_calibration in CONFORMAL_CALIBRATIONS,
             f"one of {', '.join(CONFORMAL_CALIBRATIONS)} (class: a quantile per class)"),
            ("abstain_rate", self.abstain_rate, 0.0 <= self.abstain_rate < 1.0,
             "in [0, 1): the share of cases `predict` refers"),
        ]  # fmt: skip
        for name, value, ok, expected in checks:
            if not ok:
                raise UserError(f"config.eval.{name} = {value!r}: expected {expected}.")
