"""Parses a user's ADNI "AD_NC" folder: images, scans, subjects and the subject-aware splits.

Shared by the TFDS builder and the audit, so that real ADNI data and the synthetic stand-in go
through the same code. Every layout problem raises `LayoutError` with what was expected and what
was found (lists cut to the first LIST_LIMIT names and a count). The metadata JSON must be UTF-8
JSON, an object keyed by scan ID whose entries carry subject IDs; a file that isn't is an error
naming the line and column, or showing an entry, not a silent fallback. Entries' "label" values
(spellings in LABEL_ALIASES) are kept per scan, so that `label_conflicts` can name every scan
whose metadata contradicts its class folder.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
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
# How many names an error message lists before "... and N more".
LIST_LIMIT = 10
# Spellings of a metadata entry's "label", compared case-insensitively with everything but
# letters removed ("Non-Demented" -> "nondemented"). The synthetic generator writes AD/NC; ADNI's
# own tables say CN (cognitively normal); other releases spell out the group. Anything else
# (MCI, EMCI, "MildDemented", numbers) is counted as unrecognised, never guessed.
LABEL_ALIASES = {
    "NC": ("nc", "cn", "normal", "control", "normalcontrol", "healthy", "healthycontrol",
           "cognitivelynormal", "nondemented"),
    "AD": ("ad", "alzheimer", "alzheimers", "alzheimerdisease", "alzheimersdisease",
           "dementia", "demented"),
}  # fmt: skip
_LABEL_OF_ALIAS = {alias: cls for cls, aliases in LABEL_ALIASES.items() for alias in aliases}
_FIX_METADATA = f"Fix the file, or remove it (or give {SUBJECTS_CSV} with scan_id,subject_id)."


class LayoutError(ValueError):
    """The folder does not have the ADNI AD_NC layout; the message says what was expected."""


def brief_list(items: Sequence[object], limit: int = LIST_LIMIT, rest: str = "") -> str:
    """The first `limit` items, comma-separated, then "... and N more" (+ `rest`, e.g. where
    all of them are listed) when there are more: error messages stay readable for any count."""
    shown = ", ".join(str(i) for i in items[:limit])
    if len(items) <= limit:
        return shown
    return f"{shown} ... and {len(items) - limit} more{rest}"


def canonical_label(value: object) -> str | None:
    """'NC' or 'AD' for a metadata label spelled as in LABEL_ALIASES, else None."""
    if not isinstance(value, str):
        return None
    return _LABEL_OF_ALIAS.get(re.sub(r"[^a-z]", "", value.lower()))


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One slice image found in the folder."""

    path: Path
    file_name: str  # relative to the AD_NC root, e.g. "train/AD/388206_78.jpeg"
    folder_split: str  # "train" or "test": the official folder it lives in
    label: int  # index into the layout's class_names (ADNI: 0 = NC, 1 = AD)
    scan_id: str
    slice_index: int  # -1 where the layout has no slice indices
    # The image's bytes where they are not a file of their own (a parquet row); else None.
    data: bytes | None = dataclasses.field(default=None, repr=False, compare=False)

    def read_bytes(self) -> bytes:
        """The image file's bytes, as stored."""
        return self.data if self.data is not None else self.path.read_bytes()


@dataclasses.dataclass
class Layout:
    """Everything parsed from a manual_dir: images, subjects and where subjects came from."""

    root: Path
    records: list[ImageRecord]
    subject_of_scan: dict[str, str]
    subject_source: str  # "meta_data_with_label.json", "subjects.csv" or "scan_id"
    stray_files: list[Path] = dataclasses.field(default_factory=list)
    # Scan ID -> "NC"/"AD" from the metadata entry's "label", for the scans found that have one
    # the alias table recognises; scan ID -> the label as written, for those it doesn't.
    metadata_label_of_scan: dict[str, str] = dataclasses.field(default_factory=dict)
    unrecognised_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    # Which layout this is ("adni", "folders", "oasis", "parquet"), its classes in label
    # order, the official split folders it has (() where none), the size (width, height) every
    # image must have (None: any size) and how its class names were mapped.
    kind: str = "adni"
    class_names: tuple[str, ...] = CLASS_NAMES
    folder_splits: tuple[str, ...] = SPLIT_FOLDERS
    image_size: tuple[int, int] | None = (IMAGE_WIDTH, IMAGE_HEIGHT)
    class_mapping: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def has_slice_index(self) -> bool:
        """Whether the file names give each image's slice position."""
        return any(r.slice_index >= 0 for r in self.records)

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
    found = sorted(p.name for p in manual_dir.iterdir())
    raise LayoutError(
        f"{manual_dir} has no ADNI layout: expected AD_NC/train and AD_NC/test (or train/ and "
        f"test/) folders, found [{brief_list([repr(f) for f in found])}]."
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
            # A user may drop thousands of images straight into train/: list a few, count all.
            raise LayoutError(
                f"{split_dir} must hold exactly the class folders {list(CLASS_FOLDERS)}; "
                f"missing {missing}, unknown [{brief_list([repr(u) for u in unknown])}]. Move "
                f"images into {split}/AD or {split}/NC and remove other entries (or, for "
                "other classes, read it as class folders: --config.data.layout=folders)."
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
        more = len(problems) - LIST_LIMIT
        raise LayoutError(
            f"{len(problems)} entries don't match the ADNI naming, e.g.:\n  "
            + "\n  ".join(problems[:LIST_LIMIT])
            + (f"\n  ... and {more} more" if more > 0 else "")
            + "\n(Images named otherwise are read as class folders: --config.data.layout=folders.)"
        )
    _check_scans_consistent(records)
    return records, strays


def _check_scans_consistent(records: Sequence[ImageRecord]) -> None:
    where: dict[str, set[tuple[str, int]]] = collections.defaultdict(set)
    for r in records:
        where[r.scan_id].add((r.folder_split, r.label))
    bad = {s: sorted(w) for s, w in where.items() if len(w) > 1}
    if bad:
        examples = brief_list([f"{s}: {w}" for s, w in sorted(bad.items())])
        raise LayoutError(
            f"{len(bad)} scan IDs appear in more than one split or class folder (a scan must "
            f"live in exactly one): {examples}. Keep each scan's images in one folder."
        )


@dataclasses.dataclass
class SubjectFile:
    """What a subject source file gives: subject and (raw) label per scan ID in it."""

    subjects: dict[str, str]
    labels: dict[str, object] = dataclasses.field(default_factory=dict)


def _decode_utf8(path: Path, kind: str) -> str:
    """The file's text; a LayoutError naming the line, column and byte where it isn't UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a BOM (Windows editors) is not an error
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        # Column in characters, as JSON parsers count: the line up to the bad byte is valid.
        column = len(data[line_start : e.start].decode("utf-8-sig", errors="replace")) + 1
        raise LayoutError(
            f"{path}: not UTF-8 at line {line}, column {column} (byte 0x{data[e.start]:02x}); "
            f"the file must be UTF-8 {kind}. Save it as UTF-8 (e.g. iconv -f latin1 -t utf-8), "
            "or remove it."
        ) from None


def _json_kind(value: object) -> str:
    """A JSON value's type in JSON's words, with its size: 'an array of 3 items'."""
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    if isinstance(value, str):
        return f"a string ({_excerpt(value)})"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return f"a number ({value!r})"


def _excerpt(value: object, limit: int = 200) -> str:
    """`value` as JSON, cut to about `limit` characters."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + " ..."


def _entry_label(entry: object) -> object:
    """The entry's "label" value (the key matched case-insensitively), or None."""
    if isinstance(entry, dict):
        for key, value in entry.items():
            if isinstance(key, str) and key.lower() == "label":
                return value
    return None


def _subjects_from_metadata_json(path: Path) -> SubjectFile:
    """Subject (`NNN_S_NNNN` anywhere in the entry) and label of each entry of the metadata JSON.

    Raises LayoutError for a file that isn't UTF-8 JSON, isn't an object keyed by scan ID, or
    whose entries carry no subject ID at all (a schema the reader doesn't know: silently
    falling back to scan IDs would hide it)."""
    text = _decode_utf8(path, "JSON")
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as e:
        raise LayoutError(
            f"{path}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg}). "
            + _FIX_METADATA
        ) from None
    if not isinstance(entries, dict) or not entries:
        found = "an empty object" if isinstance(entries, dict) else _json_kind(entries)
        raise LayoutError(
            f'{path}: expected a JSON object keyed by scan ID ({{"<scanID>": {{..., "source": '
            f'"/.../NNN_S_NNNN/..."}}, ...}}), found {found}. ' + _FIX_METADATA
        )
    result = SubjectFile({})
    without: list[str] = []
    for scan_id, entry in entries.items():
        match = SUBJECT_PATTERN.search(json.dumps(entry))
        if match:
            result.subjects[str(scan_id)] = match.group(0)
        else:
            without.append(str(scan_id))
        label = _entry_label(entry)
        if label is not None:
            result.labels[str(scan_id)] = label
    if not result.subjects:
        key = next(iter(entries))
        raise LayoutError(
            f"{path}: none of its {len(entries)} entries carries a subject ID (NNN_S_NNNN, e.g. "
            f'in a source path); one entry: "{key}": {_excerpt(entries[key])}. ' + _FIX_METADATA
        )
    if without:
        logging.warning(
            '%s: %d of its %d entries carry no subject ID (NNN_S_NNNN), e.g. "%s": %s; those '
            "scans stand in for their own subject.",
            path, len(without), len(entries), without[0], _excerpt(entries[without[0]]),
        )  # fmt: skip
    return result


def _subjects_from_csv(path: Path) -> SubjectFile:
    """scan_id -> subject_id of subjects.csv; LayoutError for a file that isn't UTF-8, lacks the
    columns, or has rows without both values (naming the lines)."""
    text = _decode_utf8(path, "CSV with the columns scan_id,subject_id")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if not reader.fieldnames or not {"scan_id", "subject_id"} <= set(reader.fieldnames):
            raise LayoutError(
                f"{path} must have the columns scan_id,subject_id; found {reader.fieldnames}. "
                "Put that header line first."
            )
        subjects, bad = {}, []
        for row in reader:
            scan, subject = (row.get(k) or "" for k in ("scan_id", "subject_id"))
            if not scan.strip() or not subject.strip():
                bad.append(f"line {reader.line_num}")
                continue
            subjects[scan.strip()] = subject.strip()
    except csv.Error as e:
        raise LayoutError(f"{path}, line {reader.line_num}: not readable as CSV ({e}).") from None
    if bad:
        raise LayoutError(
            f"{path}: {len(bad)} rows lack a scan_id or a subject_id ({brief_list(bad)}); "
            "expected both on every row. Fill them in or delete those rows."
        )
    return SubjectFile(subjects)


def load_subjects(
    manual_dir: Path, root: Path, scan_ids: Iterable[str]
) -> tuple[dict[str, str], str, dict[str, object]]:
    """Maps every scan ID to a subject ID, names the source used, and gives the raw metadata
    label of the scans whose entry has one (empty unless the source is the metadata JSON).

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
            found = reader(path)
            known = found.subjects
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
            labels = {s: found.labels[s] for s in scan_ids if s in found.labels}
            return {s: known.get(s, s) for s in scan_ids}, name, labels
    logging.warning(
        "No %s or %s in %s: each scan ID stands in for its subject. Scan IDs are not subject "
        "IDs: visits of one subject may straddle the train/validation split.",
        METADATA_JSON,
        SUBJECTS_CSV,
        manual_dir,
    )
    return {s: s for s in scan_ids}, "scan_id", {}


def parse(manual_dir: str | Path) -> Layout:
    """Parses and validates a manual_dir into a Layout."""
    manual_dir = Path(manual_dir)
    root = find_root(manual_dir)
    records, strays = scan_images(root)
    subjects, source, raw_labels = load_subjects(manual_dir, root, (r.scan_id for r in records))
    labels = {s: canonical_label(v) for s, v in raw_labels.items()}
    return Layout(
        root=root,
        records=records,
        subject_of_scan=subjects,
        subject_source=source,
        stray_files=strays,
        metadata_label_of_scan={s: v for s, v in labels.items() if v is not None},
        unrecognised_labels={s: str(raw_labels[s]) for s, v in labels.items() if v is None},
    )


def label_conflicts(parsed: Layout) -> list[dict]:
    """One entry per scan whose metadata label differs from its class folder, sorted by scan
    ID: {"scan_id", "folder" (e.g. "train/AD"), "metadata_label", "example_file"}."""
    first_file: dict[str, ImageRecord] = {}
    for r in sorted(parsed.records, key=lambda r: r.file_name):
        first_file.setdefault(r.scan_id, r)
    conflicts = []
    for scan, label in sorted(parsed.metadata_label_of_scan.items()):
        record = first_file.get(scan)
        if record is None or CLASS_NAMES[record.label] == label:
            continue
        conflicts.append({
            "scan_id": scan,
            "folder": f"{record.folder_split}/{CLASS_NAMES[record.label]}",
            "metadata_label": label,
            "example_file": record.file_name,
        })  # fmt: skip
    return conflicts


def majority_label(votes: collections.Counter) -> int:
    """The label with the most votes; ties go to the higher label (AD over NC, the more
    advanced stage over the milder)."""
    return int(max(votes.items(), key=lambda kv: (kv[1], kv[0]))[0])


def stratum_labels(strata: dict[str, int]) -> list[int]:
    """The labels to stratify over, in order: 0 and 1 always (so that a binary split draws the
    same random numbers whatever is present), then every other label present."""
    return sorted(set(strata.values()) | {0, 1})


def subject_labels(
    records: Iterable[ImageRecord], subject_of_scan: dict[str, str]
) -> dict[str, int]:
    """Stratum of each subject: the label of the majority of its scans (ties go to the higher
    label: AD over NC)."""
    votes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    seen = set()
    for r in records:
        if r.scan_id not in seen:
            seen.add(r.scan_id)
            votes[subject_of_scan[r.scan_id]][r.label] += 1
    return {s: majority_label(v) for s, v in votes.items()}


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
    for label in stratum_labels(strata):
        members = sorted(s for s, lab in strata.items() if lab == label)
        n_val = round(fraction * len(members))
        if fraction > 0 and len(members) > 1:
            n_val = min(max(n_val, 1), len(members) - 1)
        order = rng.permutation(len(members))
        chosen.update(members[i] for i in order[:n_val])
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
