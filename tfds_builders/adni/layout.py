"""Parses a user's ADNI "AD_NC" folder: images, scans, subjects and the subject-aware splits.

Shared by the TFDS builder and (later) the audit, so that real ADNI data and the synthetic
stand-in go through the same code. Every layout problem raises `LayoutError` with what was
expected and what was found.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

SPLIT_FOLDERS = ("train", "test")
CLASS_FOLDERS = ("AD", "NC")
# ClassLabel order: NC=0, AD=1 (AD is the positive class).
CLASS_NAMES = ("NC", "AD")
IMAGE_WIDTH, IMAGE_HEIGHT = 256, 240
FILE_PATTERN = re.compile(r"^(?P<scan>[A-Za-z0-9]+)_(?P<slice>\d+)\.(jpeg|jpg|JPEG|JPG)$")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SUBJECT_PATTERN = re.compile(r"\d{3}_S_\d{4,5}")
METADATA_JSON = "meta_data_with_label.json"
SUBJECTS_CSV = "subjects.csv"


class LayoutError(ValueError):
    """The folder does not have the ADNI AD_NC layout; the message says what was expected."""


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One slice image found in the folder."""

    path: Path
    file_name: str  # relative to the AD_NC root, e.g. "train/AD/388206_78.jpeg"
    folder_split: str  # "train" or "test": the official folder it lives in
    label: int  # 0 = NC, 1 = AD
    scan_id: str
    slice_index: int


@dataclasses.dataclass
class Layout:
    """Everything parsed from a manual_dir: images, subjects and where subjects came from."""

    root: Path
    records: list[ImageRecord]
    subject_of_scan: dict[str, str]
    subject_source: str  # "meta_data_with_label.json", "subjects.csv" or "scan_id"
    stray_files: list[Path] = dataclasses.field(default_factory=list)

    @property
    def subject_coverage(self) -> float:
        """Fraction of scans whose subject came from the source (0 when scans stand in)."""
        if self.subject_source == "scan_id" or not self.subject_of_scan:
            return 0.0
        known = sum(subject != scan for scan, subject in self.subject_of_scan.items())
        return known / len(self.subject_of_scan)

    def records_in(self, folder_split: str) -> list[ImageRecord]:
        """Images of one official folder, in a stable order."""
        return [r for r in self.records if r.folder_split == folder_split]


def find_root(manual_dir: str | Path) -> Path:
    """The folder holding train/ and test/: `<manual_dir>/AD_NC` or `<manual_dir>` itself."""
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise LayoutError(
            f"ADNI folder {manual_dir} does not exist. Expected {manual_dir}/AD_NC/"
            "{train,test}/{AD,NC}/<scanID>_<slice>.jpeg (or the same without AD_NC)."
        )
    for candidate in (manual_dir / "AD_NC", manual_dir):
        if all((candidate / s).is_dir() for s in SPLIT_FOLDERS):
            return candidate
    found = sorted(p.name for p in manual_dir.iterdir())[:20]
    raise LayoutError(
        f"{manual_dir} has no ADNI layout: expected AD_NC/train and AD_NC/test (or train/ and "
        f"test/) folders, found {found}."
    )


def parse_file_name(name: str) -> tuple[str, int] | None:
    """(scan_id, slice_index) of a `<scanID>_<slice>.jpeg` name, or None if it doesn't match."""
    match = FILE_PATTERN.match(name)
    if not match:
        return None
    return match["scan"], int(match["slice"])


def scan_images(root: Path) -> tuple[list[ImageRecord], list[Path]]:
    """All images under root/{train,test}/{AD,NC} and the stray non-image files found there.

    Raises LayoutError for a missing or unknown class folder, an empty split, a sub-folder or an
    image whose name doesn't match `<scanID>_<slice>.jpeg`. Hidden files are ignored; other
    non-image files are returned as strays (reported, never read as data).
    """
    records: list[ImageRecord] = []
    strays: list[Path] = []
    problems: list[str] = []
    for split in SPLIT_FOLDERS:
        split_dir = root / split
        entries = {p.name for p in split_dir.iterdir() if not p.name.startswith(".")}
        unknown = sorted(entries - set(CLASS_FOLDERS))
        missing = [c for c in CLASS_FOLDERS if c not in entries]
        if unknown or missing:
            raise LayoutError(
                f"{split_dir} must hold exactly the class folders {list(CLASS_FOLDERS)}; "
                f"missing {missing}, unknown {unknown}."
            )
        n_before = len(records)
        for cls in CLASS_FOLDERS:
            for path in sorted((split_dir / cls).iterdir()):
                if path.name.startswith("."):
                    continue
                if path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES:
                    strays.append(path)
                    continue
                parsed = parse_file_name(path.name)
                if parsed is None or not path.is_file():
                    problems.append(f"{path} (expected a file named <scanID>_<slice>.jpeg)")
                    continue
                records.append(
                    ImageRecord(
                        path=path,
                        file_name=f"{split}/{cls}/{path.name}",
                        folder_split=split,
                        label=CLASS_NAMES.index(cls),
                        scan_id=parsed[0],
                        slice_index=parsed[1],
                    )
                )
        if len(records) == n_before and not problems:
            raise LayoutError(f"{split_dir} holds no images; expected {split}/AD and {split}/NC.")
    if problems:
        raise LayoutError(
            f"{len(problems)} entries don't match the ADNI naming, e.g.:\n  "
            + "\n  ".join(problems[:10])
        )
    _check_scans_consistent(records)
    return records, strays


def _check_scans_consistent(records: Sequence[ImageRecord]) -> None:
    where: dict[str, set[tuple[str, int]]] = collections.defaultdict(set)
    for r in records:
        where[r.scan_id].add((r.folder_split, r.label))
    bad = {s: sorted(w) for s, w in where.items() if len(w) > 1}
    if bad:
        examples = ", ".join(f"{s}: {w}" for s, w in list(bad.items())[:5])
        raise LayoutError(
            f"{len(bad)} scan IDs appear in more than one split or class folder (a scan must "
            f"live in exactly one), e.g. {examples}."
        )


def _subjects_from_metadata_json(path: Path) -> dict[str, str]:
    with open(path) as f:
        entries = json.load(f)
    if not isinstance(entries, dict):
        raise LayoutError(f"{path} must be a JSON object keyed by scan ID, found {type(entries)}.")
    subjects = {}
    for scan_id, entry in entries.items():
        match = SUBJECT_PATTERN.search(json.dumps(entry))
        if match:
            subjects[str(scan_id)] = match.group(0)
    return subjects


def _subjects_from_csv(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"scan_id", "subject_id"} <= set(reader.fieldnames):
            raise LayoutError(
                f"{path} must have the columns scan_id,subject_id; found {reader.fieldnames}."
            )
        return {row["scan_id"].strip(): row["subject_id"].strip() for row in reader}


def load_subjects(
    manual_dir: Path, root: Path, scan_ids: Iterable[str]
) -> tuple[dict[str, str], str]:
    """Maps every scan ID to a subject ID, and names the source used.

    Sources, in order: meta_data_with_label.json (subject `NNN_S_NNNN` in each entry),
    subjects.csv (scan_id,subject_id), else each scan stands in for its own subject.
    """
    scan_ids = sorted(set(scan_ids))
    for folder in dict.fromkeys((manual_dir, root)):
        for name, reader in (
            (METADATA_JSON, _subjects_from_metadata_json),
            (SUBJECTS_CSV, _subjects_from_csv),
        ):
            path = folder / name
            if not path.is_file():
                continue
            known = reader(path)
            missing = [s for s in scan_ids if s not in known]
            if len(missing) == len(scan_ids):
                logging.warning(
                    "%s names none of the %d scan IDs found (e.g. %s; it has e.g. %s): ignored.",
                    path, len(scan_ids), scan_ids[:3], sorted(known)[:3],
                )  # fmt: skip
                continue
            if missing:
                logging.warning(
                    "%s has no subject for %d of %d scans (e.g. %s); those scans stand in for "
                    "their own subject, so their subject's other visits may straddle splits.",
                    path,
                    len(missing),
                    len(scan_ids),
                    missing[:5],
                )
            return {s: known.get(s, s) for s in scan_ids}, name
    logging.warning(
        "No %s or %s in %s: each scan ID stands in for its subject. Scan IDs are not subject "
        "IDs: visits of one subject may straddle the train/validation split.",
        METADATA_JSON,
        SUBJECTS_CSV,
        manual_dir,
    )
    return {s: s for s in scan_ids}, "scan_id"


def parse(manual_dir: str | Path) -> Layout:
    """Parses and validates a manual_dir into a Layout."""
    manual_dir = Path(manual_dir)
    root = find_root(manual_dir)
    records, strays = scan_images(root)
    subjects, source = load_subjects(manual_dir, root, (r.scan_id for r in records))
    return Layout(
        root=root,
        records=records,
        subject_of_scan=subjects,
        subject_source=source,
        stray_files=strays,
    )


def subject_labels(
    records: Iterable[ImageRecord], subject_of_scan: dict[str, str]
) -> dict[str, int]:
    """Stratum of each subject: the label of the majority of its scans (ties go to AD)."""
    votes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    seen = set()
    for r in records:
        if r.scan_id not in seen:
            seen.add(r.scan_id)
            votes[subject_of_scan[r.scan_id]][r.label] += 1
    return {s: int(v[1] >= v[0]) for s, v in votes.items()}


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
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for label in (0, 1):
        members = sorted(s for s, lab in strata.items() if lab == label)
        n_val = round(fraction * len(members))
        if fraction > 0 and len(members) > 1:
            n_val = min(max(n_val, 1), len(members) - 1)
        order = rng.permutation(len(members))
        chosen.update(members[i] for i in order[:n_val])
    return chosen
