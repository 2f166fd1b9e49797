"""The one bootstrap over subjects: reports' intervals and `compare`'s paired differences.

A resample draws the subjects (sorted as text) with replacement,
`numpy.random.default_rng(seed).integers(0, S, size=(n, S))`, and weights each unit (slice,
scan, subject) by how often its subject was drawn; one draw serves every level, and with the
same seed every model and report resamples the same subjects. A metric undefined in a resample
(no AD unit drawn, say) is left out of that metric's interval.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from alz_jax.evaluation import metrics
from alz_jax.host import logs

CHUNK = 100  # resamples scored at once: (CHUNK, units) weight matrices
# (level, its units, weights (B, m)) -> {metric: (B,) values, NaN where undefined}
Scorer = Callable[[str, metrics.Units, np.ndarray], dict[str, np.ndarray]]


def subject_draws(
    units: dict[str, metrics.Units], n_samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(subjects, counts (n_samples, S)): how often each subject is drawn in each resample."""
    subjects = np.unique(np.concatenate([u.subjects for u in units.values()]).astype(str))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(subjects), size=(n_samples, len(subjects)))
    return subjects, np.stack([np.bincount(d, minlength=len(subjects)) for d in draws])


def resampled(
    units: dict[str, metrics.Units], subjects: np.ndarray, counts: np.ndarray, score: Scorer,
    chunk: int = CHUNK,
) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
    """{level: {metric: (n_samples,) values}} under the resamples `counts` of `subjects`."""
    position = {s: i for i, s in enumerate(subjects)}
    out = {}
    counter = logs.Progress("Bootstrap", len(units) * len(counts), unit="resamples")
    for level, u in units.items():
        index = np.array([position[str(s)] for s in u.subjects])
        chunks: dict[str, list] = {}
        for start in range(0, len(counts), chunk):
            w = counts[start : start + chunk][:, index].astype(np.float64)
            for name, values in score(level, u, w).items():
                chunks.setdefault(name, []).append(values)
            counter.update(len(w))
        out[level] = {name: np.concatenate(v) for name, v in chunks.items()}
    counter.finish()
    return out


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> list[float] | None:
    """The percentile interval of the defined values (None when none is)."""
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    tail = 100 * (1 - confidence) / 2
    return [float(x) for x in np.percentile(values, [tail, 100 - tail])]


def intervals(
    units: dict[str, metrics.Units], score: Scorer, n_samples: int = 1000, seed: int = 0,
    confidence: float = 0.95, chunk: int = CHUNK,
) -> dict[str, dict[str, list[float] | None]]:  # fmt: skip
    """Percentile intervals per level and metric of `score`, resampling subjects."""
    subjects, counts = subject_draws(units, n_samples, seed)
    values = resampled(units, subjects, counts, score, chunk)
    return {
        level: {name: percentile_interval(v, confidence) for name, v in per_level.items()}
        for level, per_level in values.items()
    }
