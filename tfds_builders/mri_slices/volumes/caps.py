"""The `caps` layout: Clinica's t1-linear output (a CAPS folder), as ClinicaDL reads it.

    CAPS/subjects/sub-<ID>/ses-<S>/t1_linear/
        sub-<ID>_ses-<S>_T1w_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz

and ClinicaDL's label TSV (`participant_id, session_id, diagnosis`, optional `age`, `sex` and
`split` = train|test): `--config.data.labels_tsv`, else the one *.tsv in the CAPS folder or,
where it has none, in the folder above. The manual_dir is the CAPS folder (holding `subjects/`)
or a folder holding `CAPS/`. The subject is the participant_id (sub-ADNI002S0295), the session
the session_id (ses-M000).

A session's volume is the desc-Crop file, else any `sub-<ID>_ses-<S>*_T1w.nii[.gz]` of its
t1_linear folder (Clinica's uncropped one). Diagnoses are read through the alias table
(tables.DIAGNOSIS_ALIASES: CN/HC/control... -> NC, AD/dementia... -> AD, MCI/EMCI/LMCI/
sMCI/pMCI -> MCI); the classes kept are `--config.data.volume_classes` (e.g. NC,MCI,AD), by
default NC,AD. Everything left out is in the listing's `skipped`, by reason: sessions of a class
not kept, volumes without a TSV row, rows without a volume, rows with a blank diagnosis, other
files under subjects/ (ClinicaDL's tensors, Clinica's .mat) and t1_linear volumes besides the
one used. No volume is read here.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from ..layouts.base import LayoutError, check_folder, wrapping_chain
from . import sliced, tables
from .listing import VolumeListing, VolumeRecord, volume_suffix
from .settings import VolumeSettings

NAME = "caps"
PIPELINE = "t1_linear"
CROPPED = "_T1w_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz"
COLUMNS = ("participant_id", "session_id", "diagnosis")
INFO_COLUMNS = ("age", "sex")
SHAPE = (
    "CAPS/subjects/sub-<ID>/ses-<S>/t1_linear/sub-<ID>_ses-<S>_T1w_space-MNI152NLin2009cSym_"
    "desc-Crop_res-1x1x1_T1w.nii.gz"
)
# How many subject folders detection looks into (a CAPS folder may hold thousands).
DETECT_SUBJECTS = 5
# Named by file, or by folder with its count where a folder holds several (ClinicaDL's
# extracted tensors number thousands per session).
SKIP_NOT_VOLUME = "file under subjects/ that is no t1_linear volume (ignored)"
SKIP_OTHER_VOLUME = "t1_linear volume besides the one used (desc-Crop preferred)"
SKIP_NO_VOLUME = "row without a volume file"
SKIP_BLANK = "blank diagnosis"


def caps_root(manual_dir: Path) -> Path | None:
    """The CAPS folder (the one holding subjects/): manual_dir, its CAPS/ folder, or the same
    past lone wrapping folders; None where there is none."""
    for folder in wrapping_chain(manual_dir):
        for candidate in (folder, folder / "CAPS", folder / "caps"):
            if (candidate / "subjects").is_dir():
                return candidate
    return None


def _is_t1(name: str, sub: str, ses: str) -> bool:
    return (
        name.startswith(f"{sub}_{ses}")
        and volume_suffix(name) in (".nii", ".nii.gz")
        and (name.lower().endswith(("_t1w.nii", "_t1w.nii.gz")))
    )


def detect(manual_dir: Path) -> float:
    """0.9 where one of the first subject folders holds a t1_linear `*_T1w.nii[.gz]`; 0.3 for
    a subjects/ folder of sub-* folders without one (so that the error names what is missing)."""
    root = caps_root(manual_dir)
    if root is None:
        return 0.0
    subjects = (p for p in (root / "subjects").iterdir() if p.name.startswith("sub-"))
    found = 0.0
    for sub in itertools.islice(subjects, DETECT_SUBJECTS):
        found = 0.3
        for ses in sub.glob("ses-*"):
            folder = ses / PIPELINE
            if folder.is_dir() and any(_is_t1(p.name, sub.name, ses.name)
                                       for p in folder.iterdir()):  # fmt: skip
                return 0.9
    return found


def _volumes(root: Path, skipped: dict[str, list[str]]) -> dict[tuple[str, str], Path]:
    """(participant, session) -> the session's t1_linear volume; every other file under
    subjects/ goes into `skipped`."""
    found: dict[tuple[str, str], Path] = {}
    for folder, dirs, files in os.walk(root / "subjects"):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        rel = here.relative_to(root)
        parts = rel.parts  # subjects, sub-X, ses-Y, t1_linear, ...
        is_t1 = len(parts) == 4 and parts[3] == PIPELINE and parts[1].startswith("sub-")
        names = sorted(f for f in files if not f.startswith("."))
        t1 = [n for n in names if is_t1 and _is_t1(n, parts[1], parts[2])]
        t1.sort(key=lambda n: (not n.endswith(CROPPED), n))
        if t1:
            found[(parts[1], parts[2])] = here / t1[0]
        others = [n for n in names if n not in t1]
        if len(others) == 1:
            tables.add_skip(skipped, SKIP_NOT_VOLUME, (rel / others[0]).as_posix())
        elif others:
            tables.add_skip(skipped, SKIP_NOT_VOLUME, f"{rel.as_posix()}/ ({len(others)} files)")
        for name in t1[1:]:
            tables.add_skip(skipped, SKIP_OTHER_VOLUME, (rel / name).as_posix())
    return found


def label_table(manual_dir: Path, root: Path, settings: VolumeSettings) -> Path:
    """The label TSV: the setting's, else the one *.tsv in the CAPS folder, else in the folder
    above; LayoutError where there is none or several."""
    if settings.labels_table:
        return tables.given_table(manual_dir, settings.labels_table)
    for where in (root, root.parent):
        found = sorted(p for p in where.glob("*.tsv") if not p.name.startswith("."))
        table = tables.one_table(found, "CAPS label TSV", str(where))
        if table is not None:
            return table
    raise LayoutError(
        f"{root}: no label TSV (columns {','.join(COLUMNS)}, ClinicaDL's) in the CAPS folder or "
        f"the folder above; give it with {tables.LABELS_SETTING}=FILE."
    )


def _key(row: dict[str, str]) -> str:
    """A TSV row's session, as messages name it: `sub-X ses-Y`."""
    return f"{row['participant_id']} {row['session_id']}"


def list_volumes(manual_dir: Path, settings: VolumeSettings | None = None) -> VolumeListing:
    """Every session's t1_linear volume with its subject, session and diagnosis from the TSV,
    and everything left out, by reason (no volume data is read)."""
    settings = settings or VolumeSettings()
    check_folder(manual_dir)
    root = caps_root(manual_dir)
    if root is None:
        raise LayoutError(
            f"{manual_dir}: no CAPS folder (one holding subjects/); expected {SHAPE}."
        )
    skipped: dict[str, list[str]] = {}
    volumes = _volumes(root, skipped)
    table = label_table(manual_dir, root, settings)
    rows = tables.read_table(table, COLUMNS)
    tables.check_unique(table, [_key(r) for r in rows])
    kept = tables.kept_classes(settings.classes, tables.DEFAULT_CLASSES)
    mapping = tables.diagnosis_mapping(table, [r["diagnosis"] for r in rows if r["diagnosis"]],
                                       kept)  # fmt: skip
    split_of = tables.row_split(table, rows, _key)
    by_key = {(r["participant_id"], r["session_id"]): r for r in rows}
    records = []
    for (sub, ses), path in sorted(volumes.items()):
        row = by_key.get((sub, ses))
        if row is None:
            tables.add_skip(skipped, f"no row in {table.name}", f"{sub}_{ses}")
        elif not row["diagnosis"]:
            tables.add_skip(skipped, SKIP_BLANK, f"{sub}_{ses}")
        elif mapping[row["diagnosis"]] not in kept:
            tables.add_skip(skipped, tables.not_kept_reason(mapping[row["diagnosis"]], kept),
                            f"{sub}_{ses}")  # fmt: skip
        else:
            records.append(VolumeRecord(
                path=path, file_name=path.relative_to(root).as_posix(), subject=sub,
                session=ses, label=kept.index(mapping[row["diagnosis"]]),
                folder_split=split_of[_key(row)] if split_of else "",
                info={c: row[c] for c in INFO_COLUMNS if row.get(c)},
            ))  # fmt: skip
    for sub, ses in sorted(set(by_key) - set(volumes)):
        tables.add_skip(skipped, SKIP_NO_VOLUME, f"{sub} {ses}")
    if split_of:
        tables.check_subject_splits(table, [(r.subject, r.folder_split) for r in records])
    return VolumeListing(
        root=root, kind=NAME, class_names=kept, volumes=records, label_table=str(table),
        class_mapping=mapping, skipped=skipped, folder_splits=tables.folder_splits(split_of),
    )  # fmt: skip


PLUGIN = sliced.plugin(
    NAME,
    "CAPS/subjects/sub-*/ses-*/t1_linear/*_T1w.nii.gz + a label TSV (Clinica t1-linear)",
    detect,
    list_volumes,
)
