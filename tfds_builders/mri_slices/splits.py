"""Every split decision, in one place: the builder's splits and the evaluation protocols.

At build time (`builder_splits`): the split folders as they are (`validation` carved from the
train folder by subject, stratified by class, seeded, where there is no val folder), or, for a
layout without usable split folders, a split by subject NO_FOLDER_FRACTIONS (70/15/15). Where
a layout has no subject IDs, `grouped_by_near_duplicates` (data.group_near_duplicates) lets
groups of near-identical images stand in for subjects, so that the splits keep them together.

At load time (`assign`), from the stored subject IDs:

- `official`: the builder's splits (train and validation from the train folder, by subject;
  test is the test folder, which on ADNI shares subjects with train).
- `resplit`: both folders pooled and re-split into train/validation/test by subject.
- `kfold`: both folders pooled; subjects dealt into k folds; fold i is the test split, and a
  validation share of the other subjects is held out by subject.
- `external`: every record in test, train and validation empty: another cohort that a trained
  run is evaluated on (`evaluate --data.manual_dir`); training refuses it.

Every split is stratified by class at subject level. A subject's stratum is the label of the
majority of its scans (ties go to AD); all of a subject's visits go to one split, whatever their
labels, so a subject whose diagnosis changed is never divided. With K classes the strata are
the K labels (ties go to the higher, more advanced one). `slice_range` then keeps only
slices whose index lies in a window ('auto': the window of indices present in every class),
the mitigation for the slice-window shortcut.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Iterable, Sequence

import numpy as np

from .layouts.base import SPLIT_NAMES, ImageRecord, Layout, LayoutError

# `external`: every record in test (evaluating a trained run on another cohort; never trained on).
PROTOCOLS = ("official", "resplit", "kfold", "external")
# Shares (train, validation, test) of the subjects of a layout without split folders.
NO_FOLDER_FRACTIONS = (0.70, 0.15, 0.15)


def majority_label(votes: collections.Counter) -> int:
    """The label with the most votes; ties go to the higher label (AD over NC, the more
    advanced stage over the milder)."""
    return int(max(votes.items(), key=lambda kv: (kv[1], kv[0]))[0])


def stratum_labels(strata: dict[str, int]) -> list[int]:
    """The labels to stratify over, in order: 0 and 1 always (so that a binary split draws the
    same random numbers whatever is present), then every other label present."""
    return sorted(set(strata.values()) | {0, 1})


def subject_strata(subject_ids, scan_ids, labels) -> dict[str, int]:
    """Each subject's class stratum: the majority label of its scans, ties to the higher label
    (AD over NC)."""
    votes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    seen = set()
    for subject, scan, label in zip(subject_ids, scan_ids, labels, strict=True):
        if scan not in seen:
            seen.add(scan)
            votes[subject][int(label)] += 1
    return {s: majority_label(v) for s, v in votes.items()}


def subject_labels(
    records: Iterable[ImageRecord], subject_of_scan: dict[str, str]
) -> dict[str, int]:
    """`subject_strata` of parsed records (their scans' subjects from `subject_of_scan`)."""
    records = list(records)
    return subject_strata(
        [subject_of_scan[r.scan_id] for r in records],
        [r.scan_id for r in records],
        [r.label for r in records],
    )


def validation_subjects(
    records: Sequence[ImageRecord],
    subject_of_scan: dict[str, str],
    fraction: float,
    seed: int,
) -> set[str]:
    """Subjects carved out of the train folder for validation: by subject, stratified by class.

    In each class stratum, round(fraction * n_subjects) subjects are drawn with a seeded
    permutation of the sorted subject IDs, so the choice is deterministic and independent of
    file order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}.")
    strata = subject_labels(records, subject_of_scan)
    chosen: set[str] = set()
    for members in stratum_members(strata, seed):
        n_val = round(fraction * len(members))
        if fraction > 0 and len(members) > 1:
            n_val = min(max(n_val, 1), len(members) - 1)
        chosen.update(members[:n_val])
    return chosen


def stratum_members(strata: dict[str, int], seed: int) -> list[list[str]]:
    """Each class stratum's subjects (stratum_labels order), in a seeded permutation of their
    sorted IDs."""
    rng = np.random.default_rng(seed)
    out = []
    for label in stratum_labels(strata):
        members = sorted(s for s, lab in strata.items() if lab == label)
        out.append([members[i] for i in rng.permutation(len(members))])
    return out


def split_subjects(
    strata: dict[str, int], fractions: dict[str, float], seed: int
) -> dict[str, str]:
    """Subject -> split name, with each class divided by the fractions (cumulative rounding, so a
    split's share of a class is within one subject of its fraction)."""
    total = sum(fractions.values())
    if total <= 0 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions must be >= 0 with a positive sum, got {fractions}")
    names = list(fractions)
    out = {}
    for members in stratum_members(strata, seed):
        n = len(members)
        bounds = np.rint(np.cumsum([fractions[k] / total for k in names]) * n).astype(int)
        start = 0
        for name, end in zip(names, bounds, strict=True):
            for subject in members[start:end]:
                out[subject] = name
            start = end
    return out


# The load-time protocols call it by this name.
split_by_subject = split_subjects


def grouped_by_near_duplicates(parsed: Layout, pairs: list[list[str]]) -> Layout:
    """The layout with each connected group of near-identical images (the pairs' components:
    a brain's adjacent slices) standing in for a subject, where the layout has no subject IDs;
    groups are named `ndgroup_<n>` in the order of their first file name."""
    if parsed.subject_source != "scan_id":
        raise LayoutError(
            f"data.group_near_duplicates: {parsed.root} has subject IDs (from "
            f"{parsed.subject_source}); splits already follow them. Leave it false."
        )
    parent = {r.scan_id: r.scan_id for r in parsed.records}

    def root(scan: str) -> str:
        while parent[scan] != scan:
            parent[scan] = parent[parent[scan]]
            scan = parent[scan]
        return scan

    scan_of = {r.file_name: r.scan_id for r in parsed.records}
    for a, b in pairs:
        if a in scan_of and b in scan_of:
            ra, rb = root(scan_of[a]), root(scan_of[b])
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    first = {}
    for r in sorted(parsed.records, key=lambda r: r.file_name):
        first.setdefault(root(r.scan_id), len(first))
    subjects = {scan: f"ndgroup_{first[root(scan)]:05d}" for scan in parent}
    logging.info(
        "%d images in %d groups of near-identical images, standing in for subjects.",
        len(parsed.records), len(first),
    )  # fmt: skip
    return dataclasses.replace(
        parsed, subject_of_scan=subjects, subject_source="near_duplicate_groups"
    )


def builder_splits(
    parsed: Layout, validation_fraction: float, seed: int, pooled: bool = False
) -> dict[str, list[ImageRecord]]:
    """train, validation and test of a build: the split folders as they are (validation carved
    from train by subject where there is no val folder), or a split by subject without them;
    `pooled`: every image in test, whatever the folders (a cohort only evaluated on)."""
    if pooled:
        return {"train": [], "validation": [], "test": list(parsed.records)}
    folders = set(parsed.folder_splits)
    if folders == set(SPLIT_NAMES):
        return {s: parsed.records_in(s) for s in SPLIT_NAMES}
    subject_of = parsed.subject_of_scan
    if folders == {"train", "test"}:
        train_folder = parsed.records_in("train")
        val_subjects = validation_subjects(train_folder, subject_of, validation_fraction, seed)
        splits = {
            "train": [r for r in train_folder if subject_of[r.scan_id] not in val_subjects],
            "validation": [r for r in train_folder if subject_of[r.scan_id] in val_subjects],
            "test": parsed.records_in("test"),
        }
    else:
        if folders:
            logging.warning(
                "%s has the split folders %s only: pooling them and splitting by subject "
                "%s (train, validation, test).",
                parsed.root, sorted(folders), NO_FOLDER_FRACTIONS,
            )  # fmt: skip
        strata = subject_labels(parsed.records, subject_of)
        split_of = split_subjects(
            strata, dict(zip(SPLIT_NAMES, NO_FOLDER_FRACTIONS, strict=True)), seed
        )
        splits = {
            name: [r for r in parsed.records if split_of[subject_of[r.scan_id]] == name]
            for name in SPLIT_NAMES
        }
    for name, records in splits.items():
        if not records:
            raise LayoutError(
                f"The {name} split would be empty: found "
                f"{len({subject_of[r.scan_id] for r in parsed.records})} subjects in "
                f"{parsed.root}; each split takes a share of every class's subjects, rounded "
                "(validation: at least one where a class has two or more)."
            )
    return splits


def official_split_note(folder_splits: Sequence[str]) -> str | None:
    """How the builder made the `official` splits when not from split folders (a report's
    protocol says so), else None."""
    if set(folder_splits) in ({"train", "test"}, set(SPLIT_NAMES)):
        return None
    return "by subject {:g}/{:g}/{:g} at build".format(*NO_FOLDER_FRACTIONS)


def fold_of_subject(strata: dict[str, int], num_folds: int, seed: int) -> dict[str, int]:
    """Subject -> fold in [0, num_folds), dealt round-robin within each class (balanced)."""
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    out = {}
    for members in stratum_members(strata, seed):
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
    elif protocol == "external":
        split_of = np.full(n, "test", dtype=object)
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
    return {s: np.flatnonzero((split_of == s) & keep) for s in SPLIT_NAMES}
