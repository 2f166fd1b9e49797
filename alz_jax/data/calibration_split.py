"""The calibration split (`data.calibration_fraction`): a share of the protocol's train subjects,
stratified by class, held out for conformal calibration. Carved at load time from
`positions["train"]` (after the protocol and the slice window), whole subjects only, so that
training, which reads train alone, never sees them.
"""

from __future__ import annotations

import math

import numpy as np

from alz_jax.data import protocols
from alz_jax.host.errors import UserError

CALIBRATION = "calibration"
# kfold's validation draws with split_seed + 1: the calibration draw uses its own stream.
_SEED_OFFSET = 2


def carve(
    pooled: dict[str, np.ndarray],
    positions: dict[str, np.ndarray],
    fraction: float,
    seed: int,
    class_names: tuple[str, ...],
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, int]]]:
    """`positions` with round(fraction x n) of each class's train subjects (halves up; a
    subject's class is the majority label of its scans) moved from train to "calibration",
    drawn by a permutation of the sorted subject IDs seeded by `seed`; and per class
    {"subjects", "calibration"}: its train subjects before carving, and how many were carved.
    Refuses (UserError, with counts) a class left without train subjects or without
    calibration subjects. `positions` is returned unchanged when fraction is 0."""
    if fraction <= 0:
        return positions, {}
    train = positions["train"]
    subjects = pooled["subject_id"][train]
    strata = protocols.subject_strata(subjects, pooled["scan_id"][train], pooled["label"][train])
    rng = np.random.default_rng(seed + _SEED_OFFSET)
    chosen: set[str] = set()
    counts: dict[str, dict[str, int]] = {}
    for label in sorted(set(strata.values())):
        members = sorted(s for s, lab in strata.items() if lab == label)
        take = math.floor(fraction * len(members) + 0.5 + 1e-9)  # halves up, float noise aside
        chosen.update(members[i] for i in rng.permutation(len(members))[:take])
        counts[_name(class_names, label)] = {"subjects": len(members), "calibration": take}
    _check(counts, fraction)
    moved = np.fromiter((s in chosen for s in subjects), bool, len(subjects))
    out = {**positions, "train": train[~moved], CALIBRATION: train[moved]}
    return out, counts


def _name(class_names: tuple[str, ...], label: int) -> str:
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def _check(counts: dict[str, dict[str, int]], fraction: float) -> None:
    """One UserError naming every class the fraction leaves without train or without calibration
    subjects, with its counts and the fraction that would work."""
    problems = []
    for name, c in counts.items():
        n, take = c["subjects"], c["calibration"]
        if take >= n:
            problems.append(
                f"class {name} would keep no train subject (it has {n}, calibration takes "
                f"{take}; a fraction below {(n - 0.5) / n:.3g} keeps one)"
            )
        elif take == 0:
            problems.append(
                f"class {name} would have no calibration subject (round({fraction:g} x {n} "
                f"train subjects) = 0; it needs at least {math.ceil(50 / n) / 100:g})"
            )
    if problems:
        raise UserError(
            f"data.calibration_fraction = {fraction:g}: {'; '.join(problems)}. The calibration "
            "split takes that share of each class's train subjects (after validation's share). "
            "Change data.calibration_fraction, or set it to 0 to calibrate on validation."
        )


def describe(counts: dict[str, dict[str, int]], images: int, by_scan: bool) -> str:
    """One log line (under 200 characters) on the calibration split: its subjects (scans where
    the data set has no subject IDs) per class and its images."""
    unit = "scans" if by_scan else "subjects"
    per_class = ", ".join(f"{n} {c['calibration']}/{c['subjects']}" for n, c in counts.items())
    total = sum(c["calibration"] for c in counts.values())
    text = (
        f"Calibration split: {total} {unit}, {images} images, carved out of train "
        f"({per_class} {unit} per class)"
    )
    return text if len(text) < 200 else text[:196] + "..."
