"""The scans of a split: which records form each scan, in slice order (`ScanIndex`). Without
Grain, so that the run spec (steps per epoch in scans) loads where Grain is not installed;
data/bags.py builds bags of slices on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from alz_jax.host.errors import UserError
from alz_jax.tfds_builders.mri_slices.layouts.base import brief_list


@dataclasses.dataclass(frozen=True, eq=False)
class ScanIndex:
    """The scans of one split: which records (indices into the split's source) form each.

    Scans are in order of first appearance in the source; `members[s]` are scan s's records in
    slice order (slice_index, ties by file name); `positions[i]` is record i's rank in its scan.
    """

    split: str
    scan_ids: np.ndarray  # (scans,) str
    subjects: np.ndarray  # (scans,) str
    labels: np.ndarray  # (scans,) int64
    members: tuple[np.ndarray, ...]  # per scan, record indices in slice order
    scan_of: np.ndarray  # (records,) the scan of each record
    positions: np.ndarray  # (records,) rank of each record within its scan

    @classmethod
    def from_records(cls, records: Mapping[str, np.ndarray], split_name: str) -> ScanIndex:
        """Groups `AdniData.records(split)` into scans; refuses scans whose slices disagree on
        label or subject, and a split in which no scan has more than one slice."""
        scan_ids = np.asarray(records["scan_id"], object)
        first: dict = {}
        scan_of = np.asarray([first.setdefault(s, len(first)) for s in scan_ids], np.int64)
        slice_index = np.asarray(records["slice_index"], np.int64)
        names = [str(n) for n in records["file_name"]]
        order = sorted(range(len(scan_ids)), key=lambda i: (scan_of[i], slice_index[i], names[i]))
        order = np.asarray(order, np.int64)
        counts = np.bincount(scan_of, minlength=len(first))
        ends = np.cumsum(counts)
        members = tuple(np.split(order, ends[:-1])) if first else ()
        positions = np.empty(len(scan_ids), np.int64)
        positions[order] = np.arange(len(order)) - np.repeat(ends - counts, counts)
        if len(scan_ids) and counts.max() == 1:
            raise UserError(
                f"every scan of {split_name} has one slice ({len(scan_ids)} images, as many "
                "scans): the layout does not know which slices form a scan. Scan models "
                "(model.aggregator) and 2.5D input (data.neighbours > 0) need scans (the ADNI "
                "layout, layouts with subject/scan IDs, volume layouts); on this folder use a "
                "slice model (model.aggregator=none, data.neighbours=0)."
            )
        keys = list(first)
        labels = _one_per_scan(split_name, "label", records["label"], members, keys, names)
        subjects = _one_per_scan(split_name, "subject", records["subject_id"], members, keys, names)
        return cls(
            split=split_name, scan_ids=np.asarray(keys, object), subjects=subjects,
            labels=labels.astype(np.int64), members=members, scan_of=scan_of, positions=positions,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.members)

    @property
    def num_records(self) -> int:
        """Records (slices) of the split."""
        return len(self.scan_of)

    @property
    def counts(self) -> np.ndarray:
        """Slices per scan."""
        return np.asarray([len(m) for m in self.members], np.int64)

    @property
    def max_slices(self) -> int:
        """Slices of the longest scan (0 for an empty split)."""
        return int(self.counts.max()) if len(self) else 0

    def neighbour_index(self, n: int) -> np.ndarray:
        """(records, 2n+1) record indices of the slices at positions p-n..p+n of each record's
        own scan (clamped at the scan's ends); column n is the record itself (2.5D)."""
        order = np.concatenate(self.members) if len(self) else np.zeros(0, np.int64)
        counts = self.counts
        starts = (np.cumsum(counts) - counts)[self.scan_of]
        last = counts[self.scan_of] - 1
        offsets = np.arange(-n, n + 1)
        within = np.clip(self.positions[:, None] + offsets, 0, last[:, None])
        return order[starts[:, None] + within]


def _one_per_scan(split, what, values, members, keys, names) -> np.ndarray:
    """The one value of `values` that each scan's records share; a UserError naming the scans
    whose records disagree."""
    values = np.asarray(values)
    out, problems = [], []
    for key, rows in zip(keys, members, strict=True):
        found = sorted({v.item() if hasattr(v, "item") else v for v in values[rows]}, key=str)
        if len(found) > 1:
            problems.append(f"scan {key} ({names[rows[0]]}, ...) has {what}s {found}")
        out.append(values[rows[0]])
    if problems:
        raise UserError(
            f"{len(problems)} scan(s) of {split} have slices of more than one {what}: "
            f"{brief_list(problems)}. A scan's slices must share one {what}; check the "
            "scan and subject IDs the layout reads from the file names."
        )
    return np.asarray(out, values.dtype)
