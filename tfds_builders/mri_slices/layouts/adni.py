"""The `adni` layout: a user's ADNI "AD_NC" folder, `[AD_NC/]{train,test}/{AD,NC}/
<scanID>_<slice>.jpeg`, with subjects from its metadata (meta_data_with_label.json or
subjects.csv). Real ADNI data and the synthetic stand-in go through the same code.

Every layout problem raises `LayoutError` with what was expected and what was found (lists cut
to the first LIST_LIMIT names and a count). The metadata JSON must be UTF-8
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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from . import classes
from .base import (
    SCAN_SLICE_PATTERN,
    ImageRecord,
    Layout,
    LayoutError,
    LayoutPlugin,
    brief_list,
    check_one_folder_per_scan,
    descend,
    is_image,
    raise_problems,
    scan_and_slice,
    visible_dirs,
    wrapping_chain,
)

NAME = "adni"
SPLIT_FOLDERS = ("train", "test")
CLASS_FOLDERS = ("AD", "NC")
# ClassLabel order: NC=0, AD=1 (AD is the positive class).
CLASS_NAMES = classes.BINARY_CLASS_NAMES
IMAGE_WIDTH, IMAGE_HEIGHT = 256, 240
# The shared `<scanID>_<slice>` name; ADNI's images are JPEG (IMAGE_SUFFIXES below).
FILE_PATTERN = SCAN_SLICE_PATTERN
JPEG_SUFFIXES = (".jpeg", ".jpg")
SUBJECT_PATTERN = re.compile(r"\d{3}_S_\d{4,5}")
METADATA_JSON = "meta_data_with_label.json"
SUBJECTS_CSV = "subjects.csv"
# Spellings of a metadata entry's "label" (AD or NC): the shared table.
LABEL_ALIASES = classes.LABEL_ALIASES
canonical_label = classes.canonical_label
_FIX_METADATA = f"Fix the file, or remove it (or give {SUBJECTS_CSV} with scan_id,subject_id)."


def find_root(manual_dir: str | Path) -> Path:
    """The folder holding train/ and test/: `<top>/AD_NC` or `<top>` itself, where top is
    manual_dir past lone wrapping folders (`descend`)."""
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise LayoutError(
            f"ADNI folder {manual_dir} does not exist. Expected {manual_dir}/AD_NC/"
            "{train,test}/{AD,NC}/<scanID>_<slice>.jpeg (or the same without AD_NC)."
        )
    top = descend(manual_dir)
    for candidate in (top / "AD_NC", top):
        if all((candidate / s).is_dir() for s in SPLIT_FOLDERS):
            return candidate
    found = sorted(p.name for p in top.iterdir())
    raise LayoutError(
        f"{top} has no ADNI layout: expected AD_NC/train and AD_NC/test (or train/ and "
        f"test/) folders, found [{brief_list([repr(f) for f in found])}]."
    )


def parse_file_name(name: str) -> tuple[str, int] | None:
    """(scan_id, slice_index) of a `<scanID>_<slice>.jpeg` name, or None if it doesn't match."""
    if not name.lower().endswith(JPEG_SUFFIXES):
        return None
    return scan_and_slice(name)


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
                if path.is_file() and not is_image(path):
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
    raise_problems(
        problems, "match the ADNI naming",
        "\n(Images named otherwise are read as class folders: --config.data.layout=folders.)",
    )  # fmt: skip
    check_one_folder_per_scan(root, records)
    return records, strays


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


def _object_noting_duplicates(found: list[dict[str, list]]) -> Callable[[list], dict]:
    """A json.loads object_pairs_hook building each object as usual (the last value of a key
    wins) and appending to `found`, per object in parsing order, key -> every value it had, for
    the keys it had more than once."""

    def hook(pairs: list) -> dict:
        values: dict[str, list] = collections.defaultdict(list)
        for key, value in pairs:
            values[key].append(value)
        found.append({k: v for k, v in values.items() if len(v) > 1})
        return dict(pairs)

    return hook


def _entry_subject(entry: object) -> str | None:
    """The subject ID (NNN_S_NNNN) anywhere in a metadata entry, or None."""
    match = SUBJECT_PATTERN.search(json.dumps(entry))
    return match.group(0) if match else None


def _entry_difference(first: object, other: object) -> str:
    """How two entries of one scan differ: their subjects, else the fields that differ."""
    subjects = _entry_subject(first), _entry_subject(other)
    if subjects[0] != subjects[1]:
        return f"subjects {subjects[0]} and {subjects[1]}"
    if isinstance(first, dict) and isinstance(other, dict):
        keys = [k for k in dict.fromkeys([*first, *other]) if first.get(k) != other.get(k)]
        return "; ".join(
            f"{k}: {_excerpt(first.get(k), 60)} vs {_excerpt(other.get(k), 60)}" for k in keys
        )
    return f"{_excerpt(first, 60)} vs {_excerpt(other, 60)}"


def _check_duplicate_entries(path: Path, duplicates: dict[str, list]) -> None:
    """LayoutError naming each scan ID listed more than once with entries that differ (JSON
    would keep the last silently); a warning for those listed again with identical entries."""
    conflicts = []
    for scan, values in sorted(duplicates.items()):
        differences = [_entry_difference(values[0], v) for v in values[1:] if v != values[0]]
        if differences:
            conflicts.append(f"{scan} ({differences[0]})")
    if conflicts:
        raise LayoutError(
            f"{path}: {len(conflicts)} scan IDs are listed more than once with different entries "
            f"({brief_list(conflicts)}); a scan has one entry. Keep the right entry of each."
        )
    if duplicates:
        logging.warning(
            "%s lists %d scan IDs more than once, with identical entries (e.g. %s); each is "
            "read once.", path, len(duplicates), brief_list(sorted(duplicates), 3),
        )  # fmt: skip


def _subjects_from_metadata_json(path: Path) -> SubjectFile:
    """Subject (`NNN_S_NNNN` anywhere in the entry) and label of each entry of the metadata JSON.

    Raises LayoutError for a file that isn't UTF-8 JSON, isn't an object keyed by scan ID, or
    whose entries carry no subject ID at all (a schema the reader doesn't know: silently
    falling back to scan IDs would hide it)."""
    text = _decode_utf8(path, "JSON")
    duplicates: list[dict[str, list]] = []
    try:
        entries = json.loads(text, object_pairs_hook=_object_noting_duplicates(duplicates))
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
    # The hook saw the top-level object (keyed by scan ID) last.
    _check_duplicate_entries(path, duplicates[-1])
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
        subjects, line_of, bad, conflicts = {}, {}, [], []
        for row in reader:
            scan, subject = ((row.get(k) or "").strip() for k in ("scan_id", "subject_id"))
            if not scan or not subject:
                bad.append(f"line {reader.line_num}")
                continue
            if subjects.setdefault(scan, subject) != subject:
                conflicts.append(
                    f"{scan}: {subjects[scan]} (line {line_of[scan]}) and {subject} "
                    f"(line {reader.line_num})"
                )
            line_of.setdefault(scan, reader.line_num)
    except csv.Error as e:
        raise LayoutError(f"{path}, line {reader.line_num}: not readable as CSV ({e}).") from None
    if bad:
        raise LayoutError(
            f"{path}: {len(bad)} rows lack a scan_id or a subject_id ({brief_list(bad)}); "
            "expected both on every row. Fill them in or delete those rows."
        )
    if conflicts:
        raise LayoutError(
            f"{path}: {len(conflicts)} scans are mapped to two subjects ({brief_list(conflicts)})"
            "; a scan belongs to one subject. Keep the right row of each and delete the other."
        )
    return SubjectFile(subjects)


def load_subjects(
    manual_dir: Path, root: Path, scan_ids: Iterable[str]
) -> tuple[dict[str, str], str, dict[str, object]]:
    """Maps every scan ID to a subject ID, names the source used, and gives the raw metadata
    label of the scans whose entry has one (empty unless the source is the metadata JSON).

    Sources, in order: meta_data_with_label.json (subject `NNN_S_NNNN` in each entry),
    subjects.csv (scan_id,subject_id), else each scan stands in for its own subject; each
    looked for in manual_dir, each lone wrapping folder below it, then root.
    """
    scan_ids = sorted(set(scan_ids))
    for folder in dict.fromkeys((*wrapping_chain(manual_dir), root)):
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


def parse(manual_dir: str | Path, label_names: Sequence[str] = ()) -> Layout:
    """Parses and validates a manual_dir into a Layout (ADNI's classes are fixed: no
    `label_names`)."""
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
        kind=NAME,
        class_names=CLASS_NAMES,
        folder_splits=SPLIT_FOLDERS,
        image_size=(IMAGE_WIDTH, IMAGE_HEIGHT),
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


def detect(manual_dir: Path) -> float:
    """0.9 for [AD_NC/]train/ (past lone wrapping folders) holding AD/ or NC/ and no other
    class folder (parquet files
    outrank it), whose parser then names whatever else is wrong (a missing test/, a stray
    file). Other class sets (AD, CN, MCI) are class folders."""
    top = descend(manual_dir)
    for candidate in (top / "AD_NC", top):
        train = candidate / "train"
        if train.is_dir():
            found = {d.name for d in visible_dirs(train)}
            return 0.9 if found and found <= set(CLASS_FOLDERS) else 0.0
    return 0.0


def describe(manual_dir: Path, label_names: Sequence[str] = ()) -> tuple[str, ...]:
    """NC, AD, once the folder is found to hold train/ and test/."""
    find_root(manual_dir)
    return CLASS_NAMES


PLUGIN = LayoutPlugin(
    name=NAME,
    summary="AD_NC/{train,test}/{AD,NC}/<scanID>_<slice>.jpeg (ADNI)",
    detect=detect,
    describe=describe,
    parse=parse,
    image_size=(IMAGE_WIDTH, IMAGE_HEIGHT),
    image_modes=("L",),
    label_conflicts=label_conflicts,
)
