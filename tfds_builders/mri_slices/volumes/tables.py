"""What the volume layouts (`caps`, `oasis1`, `nifti`) share: reading their label tables (CSV or
TSV, UTF-8) with one-line errors, finding a table beside the volumes or by setting, the diagnosis
alias table (CN/NC/HC... -> NC, AD... -> AD, MCI/EMCI/LMCI... -> MCI), the classes kept, a
table's train/test column, and the checks every table gets (one row per session, one split per
subject).
"""

from __future__ import annotations

import collections
import csv
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..layouts import classes
from ..layouts.base import SPLIT_ALIASES, LayoutError, brief_list

# The settings that change what a volume layout reads, as messages name them.
LABELS_SETTING = "--config.data.labels_tsv"
CLASSES_SETTING = "--config.data.volume_classes"
# ClinicaDL's diagnoses, in label order (NC=0 ... AD last, the positive class of NC vs AD).
DIAGNOSES = ("NC", "MCI", "AD")
DEFAULT_CLASSES = classes.BINARY_CLASS_NAMES  # NC, AD
# Spellings of each diagnosis, compared lower-case with everything but letters and digits
# removed ("Alzheimer's disease" -> "alzheimersdisease"); the AD/NC spellings of the 2D layouts
# (classes.LABEL_ALIASES) and ADNI's and ClinicaDL's own (HC, the MCI subtypes).
DIAGNOSIS_ALIASES = {
    "NC": (*classes.LABEL_ALIASES["NC"], "hc"),
    "MCI": ("mci", "emci", "lmci", "smci", "pmci", "mildcognitiveimpairment"),
    "AD": classes.LABEL_ALIASES["AD"],
}
_DIAGNOSIS_OF = {a: d for d, aliases in DIAGNOSIS_ALIASES.items() for a in aliases}
# A table's split column: the test list a layout keeps (as adni's train/ and test/ folders).
SPLIT_COLUMN = "split"
TABLE_SPLITS = ("train", "test")


def normalised(text: str) -> str:
    """A spelling as the alias tables hold it: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def diagnosis_of(text: str) -> str | None:
    """NC, MCI or AD for a diagnosis spelled as in DIAGNOSIS_ALIASES, else None."""
    return _DIAGNOSIS_OF.get(normalised(text))


# The spellings a message names (DIAGNOSIS_ALIASES has them all, any case and punctuation).
ALIAS_EXAMPLES = (
    "NC: CN, HC, control, normal, cognitively normal; MCI: EMCI, LMCI, sMCI, pMCI; "
    "AD: dementia, Alzheimer's disease"
)


def known_aliases() -> str:
    """The diagnosis spellings known, for messages: "NC: nc, cn, ...; MCI: ...; AD: ..."."""
    return "; ".join(f"{d}: {', '.join(a)}" for d, a in DIAGNOSIS_ALIASES.items())


def read_table(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV or TSV (a .tsv, or a header line with tabs and no commas, is read as
    tab-separated), values stripped; LayoutError, naming the file, for one that is not UTF-8 or
    not readable, or that lacks any of the `required` columns (naming them and those found)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise LayoutError(f"{path}: the label table cannot be read ({e.strerror}).") from None
    except UnicodeDecodeError as e:
        raise LayoutError(
            f"{path}: the label table is not UTF-8 text (byte {e.start}); save it as UTF-8 CSV "
            "or TSV."
        ) from None
    first = text.split("\n", 1)[0]
    tabbed = path.suffix.lower() == ".tsv" or ("\t" in first and "," not in first)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if tabbed else ",")
    try:
        found = [(f or "").strip() for f in reader.fieldnames or []]
        missing = [c for c in required if c not in found]
        if missing:
            raise LayoutError(
                f"{path}: the label table lacks the columns {','.join(missing)} (expected "
                f"{','.join(required)}; found {','.join(found) or 'no header'})."
            )
        reader.fieldnames = found
        return [
            {k: (v or "").strip() for k, v in row.items() if k is not None}
            for row in reader
            if any((v or "").strip() for k, v in row.items() if k is not None)
        ]
    except csv.Error as e:
        raise LayoutError(f"{path}, line {reader.line_num}: not readable as CSV ({e}).") from None


def header(path: Path) -> list[str]:
    """The column names of a CSV or TSV (its first line), [] where it cannot be read."""
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as f:
            first = f.readline().strip()
    except OSError:
        return []
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in first else ","
    return [c.strip() for c in first.split(delimiter)]


def given_table(manual_dir: Path, labels_table: str) -> Path:
    """The table the setting names (absolute, or relative to manual_dir); LayoutError where
    there is no such file."""
    path = Path(labels_table).expanduser()
    path = path if path.is_absolute() else manual_dir / path
    if not path.is_file():
        raise LayoutError(
            f"{LABELS_SETTING}={labels_table}: no such file ({path}); give the label table's "
            "path, absolute or relative to the data folder."
        )
    return path


def one_table(candidates: Sequence[Path], what: str, where: str) -> Path | None:
    """The single candidate table, None where there is none; LayoutError listing them where
    there are several (`what`: the table meant, `where`: the folders looked in)."""
    if len(candidates) > 1:
        names = brief_list([str(p) for p in candidates])
        raise LayoutError(
            f"{len(candidates)} tables could be the {what} in {where}: {names}; name the one "
            f"to use with {LABELS_SETTING}=FILE (or remove the others)."
        )
    return candidates[0] if candidates else None


def kept_classes(wanted: Sequence[str], default: Sequence[str]) -> tuple[str, ...]:
    """The classes a layout keeps, in label order: `wanted` (the setting) with diagnosis
    spellings made canonical (CN -> NC), else `default`; LayoutError for a class named twice."""
    names = tuple(diagnosis_of(c) or c for c in wanted) or tuple(default)
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise LayoutError(
            f"{CLASSES_SETTING}={','.join(wanted)} names {','.join(twice)} twice; name each "
            "class once, in label order (e.g. NC,MCI,AD)."
        )
    return names


def label_classes(
    found: Iterable[str], wanted: Sequence[str]
) -> tuple[tuple[str, ...], dict[str, str]]:
    """(class names in label order, label as written -> class) of a table's labels.

    A set of stage names goes through `classes.class_order` (the stages present, in order of
    severity). Otherwise diagnosis spellings map to NC, MCI, AD (DIAGNOSIS_ALIASES), in that
    order, then any other label as written, sorted. The classes are `wanted` (the setting, made
    canonical) where given, else those found. A label written exactly as a wanted class is
    that class."""
    found = sorted(set(found))
    keep = kept_classes(wanted, ())
    if found and all(classes.stage_of(f) for f in found):
        order, mapping = classes.class_order(found)
    else:
        mapping = {f: diagnosis_of(f) or f for f in found}
        others = sorted({c for c in mapping.values() if c not in DIAGNOSES})
        order = tuple(d for d in DIAGNOSES if d in mapping.values()) + tuple(others)
    for label in found:
        if label in keep:
            mapping[label] = label
    return (keep or order), mapping


def diagnosis_mapping(path: Path, spellings: Iterable[str], kept: Sequence[str]) -> dict[str, str]:
    """Diagnosis as written -> class, for every spelling of a table; a spelling written exactly
    as a kept class is that class. LayoutError listing the spellings that are none of the known
    aliases, with the aliases and the setting that keeps another class."""
    mapping, unknown = {}, []
    for spelling in sorted(set(spellings)):
        diagnosis = spelling if spelling in kept else diagnosis_of(spelling)
        if diagnosis is None:
            unknown.append(repr(spelling))
        else:
            mapping[spelling] = diagnosis
    if unknown:
        raise LayoutError(
            f"{path}: {len(unknown)} diagnoses are not known: {brief_list(unknown)}; known "
            f"spellings are {ALIAS_EXAMPLES} (any case). Correct them in the table, or keep "
            f"such a class by its name with {CLASSES_SETTING}=NC,AD,<name>."
        )
    return mapping


def not_kept_reason(cls: str, kept: Sequence[str], what: str = "diagnosis") -> str:
    """The skip reason of a session whose class is not kept."""
    return f"{what} {cls} not among the classes {','.join(kept)} ({CLASSES_SETTING})"


def row_split(path: Path, rows: Sequence[dict[str, str]], name_of) -> dict[str, str] | None:
    """Row name -> "train" or "test" from the table's split column, None where it has none;
    LayoutError naming the rows whose value is neither (SPLIT_ALIASES spellings accepted)."""
    if not rows or SPLIT_COLUMN not in rows[0]:
        return None
    out, bad = {}, []
    for row in rows:
        split = SPLIT_ALIASES.get(row.get(SPLIT_COLUMN, "").lower())
        if split not in TABLE_SPLITS:
            bad.append(f"{name_of(row)}: {row.get(SPLIT_COLUMN, '')!r}")
        out[name_of(row)] = split
    if bad:
        raise LayoutError(
            f"{path}: the {SPLIT_COLUMN} column must say train or test on every row; "
            f"{len(bad)} rows say otherwise ({brief_list(bad)})."
        )
    return out


def check_unique(path: Path, keys: Sequence[str], what: str = "session") -> None:
    """LayoutError naming every key (e.g. `sub-01 ses-M000`) on more than one row of a table."""
    twice = sorted(k for k, n in collections.Counter(keys).items() if n > 1)
    if twice:
        raise LayoutError(
            f"{path}: {len(twice)} {what}s are on more than one row ({brief_list(twice)}); "
            f"keep one row per {what}."
        )


def check_subject_splits(path: Path, subject_split: Iterable[tuple[str, str]]) -> None:
    """LayoutError naming every subject whose sessions the split column puts in both train and
    test: a subject's sessions never cross splits."""
    splits: dict[str, set[str]] = collections.defaultdict(set)
    for subject, split in subject_split:
        splits[subject].add(split)
    both = sorted(s for s, found in splits.items() if len(found) > 1)
    if both:
        raise LayoutError(
            f"{path}: the {SPLIT_COLUMN} column puts sessions of {len(both)} subjects in both "
            f"train and test ({brief_list(both)}); put all of a subject's sessions in one."
        )


def folder_splits(split_of: dict[str, str] | None) -> tuple[str, ...]:
    """The listing's folder_splits: ("train", "test") with a split column, as adni's train/
    and test/ folders; () without one (the build splits by subject)."""
    return TABLE_SPLITS if split_of is not None else ()


def add_skip(skipped: dict[str, list[str]], reason: str, item: str) -> None:
    """Records one item left out, under its reason."""
    skipped.setdefault(reason, []).append(item)
