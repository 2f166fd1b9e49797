"""Evaluation protocols computed at load time from the stored subject IDs.

- `official`: the builder's splits (train and validation from the train folder, by subject;
  test is the test folder, which on ADNI shares subjects with train).
- `resplit`: both folders pooled and re-split into train/validation/test by subject.
- `kfold`: both folders pooled; subjects dealt into k folds; fold i is the test split, and a
  validation share of the other subjects is held out by subject.

Every split is stratified by class at subject level. A subject's stratum is the label of the
majority of its scans (ties go to AD); all of a subject's visits go to one split, whatever their
labels, so a subject whose diagnosis changed is never divided. With K classes the strata are
the K labels (ties go to the higher, more advanced one). `slice_range` then keeps only
slices whose index lies in a window ('auto': the window of indices present in every class),
the mitigation for the slice-window shortcut.
"""

from __future__ import annotations

import collections

import numpy as np

from tfds_builders.adni import layout

PROTOCOLS = ("official", "resplit", "kfold")


def subject_strata(subject_ids, scan_ids, labels) -> dict[str, int]:
    """Each subject's class stratum: the majority label of its scans, ties to the higher label
    (AD over NC)."""
    votes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    seen = set()
    for subject, scan, label in zip(subject_ids, scan_ids, labels, strict=True):
        if scan not in seen:
            seen.add(scan)
            votes[subject][int(label)] += 1
    return {s: layout.majority_label(v) for s, v in votes.items()}


def _stratum_members(strata: dict[str, int], seed: int) -> list[list[str]]:
    return layout.stratum_members(strata, seed)


def split_by_subject(
    strata: dict[str, int], fractions: dict[str, float], seed: int
) -> dict[str, str]:
    """Subject -> split name, with each class divided by the fractions (cumulative rounding, so a
    split's share of a class is within one subject of its fraction); as the builder does."""
    return layout.split_subjects(strata, fractions, seed)


def fold_of_subject(strata: dict[str, int], num_folds: int, seed: int) -> dict[str, int]:
    """Subject -> fold in [0, num_folds), dealt round-robin within each class (balanced)."""
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    out = {}
    for members in _stratum_members(strata, seed):
        for i, subject in enumerate(members):
            out[subject] = i % num_folds
    return out


def common_slice_window(slice_index: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """The range of slice indices present in every class: [max of minima, min of maxima]."""
    if np.any(slice_index < 0):
        raise ValueError(
            "data.slice_range needs slice indices, and this layout's file names give none."
        )
    classes = np.unique(labels)
    lows = [slice_index[labels == c].min() for c in classes]
    highs = [slice_index[labels == c].max() for c in classes]
    lo, hi = int(max(lows)), int(min(highs))
    if lo > hi:
        raise ValueError(f"The classes' slice ranges don't overlap: {lows}..{highs}")
    return lo, hi


def parse_slice_range(value: str, slice_index: np.ndarray, labels: np.ndarray):
    """'' -> None, 'auto' -> the common window, 'lo,hi' -> (lo, hi)."""
    if not value:
        return None
    if np.any(np.asarray(slice_index) < 0):
        raise ValueError(
            f"data.slice_range = {value!r} needs slice indices, and this layout's file names "
            "give none; leave it empty."
        )
    if value == "auto":
        return common_slice_window(slice_index, labels)
    try:
        lo, hi = (int(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"data.slice_range must be '', 'auto' or 'lo,hi'; got {value!r}") from None
    if lo > hi:
        raise ValueError(f"data.slice_range {value!r}: lo > hi")
    return lo, hi


def assign(pooled: dict[str, np.ndarray], data_config) -> dict[str, np.ndarray]:
    """Protocol split -> positions in the pooled records (all builder splits concatenated).

    `pooled` has per-record arrays: builder_split, subject_id, scan_id, label, slice_index.
    """
    protocol = data_config.protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"data.protocol {protocol!r}: expected one of {PROTOCOLS}")
    n = len(pooled["label"])
    if protocol == "official":
        split_of = pooled["builder_split"]
    else:
        strata = subject_strata(pooled["subject_id"], pooled["scan_id"], pooled["label"])
        seed = data_config.split_seed
        if protocol == "resplit":
            train, val, test = data_config.resplit_fractions
            of = split_by_subject(strata, {"train": train, "validation": val, "test": test}, seed)
        else:
            folds = fold_of_subject(strata, data_config.num_folds, seed)
            if not 0 <= data_config.fold < data_config.num_folds:
                raise ValueError(
                    f"data.fold {data_config.fold} not in [0, {data_config.num_folds})"
                )
            rest = {s: c for s, c in strata.items() if folds[s] != data_config.fold}
            frac = data_config.validation_fraction
            of = split_by_subject(rest, {"train": 1 - frac, "validation": frac}, seed + 1)
            of.update({s: "test" for s in strata if folds[s] == data_config.fold})
        split_of = np.array([of[s] for s in pooled["subject_id"]], dtype=object)
    keep = np.ones(n, bool)
    window = parse_slice_range(data_config.slice_range, pooled["slice_index"], pooled["label"])
    if window is not None:
        keep = (pooled["slice_index"] >= window[0]) & (pooled["slice_index"] <= window[1])
    return {s: np.flatnonzero((split_of == s) & keep) for s in ("train", "validation", "test")}
