"""The `nifti` layout: any folder of volumes (.nii, .nii.gz, Analyze .hdr/.img pairs named by
their .hdr), in sub-folders or not, with a CSV or TSV of `path, subject, session, label` (and an
optional `split` = train|test): `--config.data.labels_tsv`, else the one .csv/.tsv in the folder
that has those columns. A path is relative to the table's folder, or absolute.

Labels: diagnosis spellings map to NC, MCI, AD (tables.DIAGNOSIS_ALIASES), stage names to
the four stages (classes.class_order); the classes are `--config.data.volume_classes` where
given (labels of other classes skipped and counted), else every class found, in that order.
Two rows for one (subject, session), or one file, are an error. Rows naming a missing file,
volumes without a row, a lone .img or a .hdr without its .img are skipped and counted.
No volume is read here.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..layouts.base import (
    LayoutError,
    brief_list,
    descend,
    existing_root,
)
from . import sliced, tables
from .listing import VolumeListing, VolumeRecord, volume_suffix
from .settings import VolumeSettings

NAME = "nifti"
COLUMNS = ("path", "subject", "session", "label")
TABLE_SUFFIXES = (".csv", ".tsv")
SHAPE = "<folders>/<volume>.nii[.gz]|.hdr/.img + a CSV/TSV with path,subject,session,label"
# Detection looks this deep, into at most this many folders, for a volume.
DETECT_DEPTH, DETECT_FOLDERS = 3, 200
SKIP_LONE_IMG = "Analyze .img without its .hdr"
SKIP_NO_IMG = "Analyze .hdr without its .img"
SKIP_MISSING = "row names a missing file"
SKIP_NOT_VOLUME = "row names a file that is no volume (.nii, .nii.gz, .hdr/.img)"


def _has_volume(root: Path) -> bool:
    """Whether a volume file lies within DETECT_DEPTH folders of root (DETECT_FOLDERS at most)."""
    for seen, (folder, dirs, files) in enumerate(os.walk(root), start=1):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = [] if depth >= DETECT_DEPTH else [d for d in dirs if not d.startswith(".")]
        if any(volume_suffix(f) for f in files):
            return True
        if seen >= DETECT_FOLDERS:
            return False
    return False


def tables_with_columns(root: Path) -> list[Path]:
    """The .csv/.tsv files in root whose header has path, subject, session and label."""
    found = sorted(p for p in root.iterdir()
                   if p.suffix.lower() in TABLE_SUFFIXES and p.is_file())  # fmt: skip
    return [p for p in found if set(COLUMNS) <= set(tables.header(p))]


def detect(manual_dir: Path) -> float:
    """0.85 for a folder of volumes with a table of path,subject,session,label in it; 0.5 for
    volumes without one (so that the error says the table is missing)."""
    root = descend(manual_dir)
    if not _has_volume(root):
        return 0.0
    return 0.85 if tables_with_columns(root) else 0.5


def label_table(manual_dir: Path, root: Path, settings: VolumeSettings) -> Path:
    """The setting's table, else the one .csv/.tsv in root with the columns; LayoutError naming
    the tables found (and their columns) where none or several have them."""
    if settings.labels_table:
        return tables.given_table(manual_dir, settings.labels_table)
    found = tables.one_table(tables_with_columns(root), "label table", str(root))
    if found is not None:
        return found
    others = [f"{p.name} ({','.join(tables.header(p))})" for p in sorted(root.iterdir())
              if p.suffix.lower() in TABLE_SUFFIXES]  # fmt: skip
    raise LayoutError(
        f"{root}: no label table with the columns {','.join(COLUMNS)} (a .csv or .tsv in the "
        f"folder); found {brief_list(others) if others else 'no .csv or .tsv'}. Add one, or give "
        f"it with {tables.LABELS_SETTING}=FILE."
    )


def _img_of(hdr: Path) -> Path | None:
    """The .img beside an Analyze .hdr (either case), None where there is none."""
    return next((p for s in (".img", ".IMG") if (p := hdr.with_suffix(s)).is_file()), None)


def _walk(root: Path, skipped: dict[str, list[str]]) -> dict[Path, Path]:
    """Resolved path -> path of every volume under root; lone .img and .hdr files skipped."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        lower = {f.lower() for f in files}
        for name in sorted(f for f in files if not f.startswith(".")):
            path, suffix = here / name, volume_suffix(name)
            rel = path.relative_to(root).as_posix()
            if name.lower().endswith(".img") and name.lower()[:-4] + ".hdr" not in lower:
                tables.add_skip(skipped, SKIP_LONE_IMG, rel)
            elif suffix == ".hdr" and _img_of(path) is None:
                tables.add_skip(skipped, SKIP_NO_IMG, rel)
            elif suffix:
                found[path.resolve()] = path
    return found


def _check_rows(table: Path, rows: list[dict[str, str]]) -> None:
    """LayoutError naming the rows that lack a value, or two rows naming one session or file."""
    blank = [f"row {i}" for i, r in enumerate(rows, start=2) if not all(r[c] for c in COLUMNS)]
    if blank:
        raise LayoutError(
            f"{table}: {len(blank)} rows lack a {','.join(COLUMNS)} value ({brief_list(blank)}, "
            "counting the header as row 1); fill them in or delete those rows."
        )
    tables.check_unique(table, [f"{r['subject']} {r['session']}" for r in rows])
    tables.check_unique(table, [r["path"] for r in rows], what="file")


def _row_file(table: Path, written: str) -> Path:
    """The file a row names: absolute, or relative to the table's folder; an .img stands for
    its .hdr."""
    path = Path(written).expanduser()
    path = Path(os.path.normpath(path if path.is_absolute() else table.parent / path))
    if path.suffix.lower() == ".img":
        hdr = next((h for s in (".hdr", ".HDR") if (h := path.with_suffix(s)).is_file()), None)
        return hdr or path
    return path


def _unusable(path: Path) -> str | None:
    """The skip reason of a file a row names that is no volume (a lone .img, a .hdr without its
    .img, any other file), None for a volume."""
    suffix = volume_suffix(path.name)
    if suffix is None:
        return SKIP_LONE_IMG if path.suffix.lower() == ".img" else SKIP_NOT_VOLUME
    return SKIP_NO_IMG if suffix == ".hdr" and _img_of(path) is None else None


def _file_name(root: Path, path: Path) -> str:
    """A volume's name relative to root (POSIX), or its absolute path where it lies outside."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def list_volumes(manual_dir: Path, settings: VolumeSettings | None = None) -> VolumeListing:
    """Every volume the table names, with its subject, session and label, and everything left
    out, by reason (no volume data is read)."""
    settings = settings or VolumeSettings()
    root = existing_root(manual_dir)
    skipped: dict[str, list[str]] = {}
    volumes = _walk(root, skipped)
    table = label_table(manual_dir, root, settings)
    rows = tables.read_table(table, COLUMNS)
    _check_rows(table, rows)
    names, mapping = tables.label_classes([r["label"] for r in rows], settings.classes)
    split_of = tables.row_split(table, rows, lambda r: f"{r['subject']} {r['session']}")
    records, named = [], set()
    for row in rows:
        path = _row_file(table, row["path"])
        if not path.is_file():
            tables.add_skip(skipped, SKIP_MISSING, row["path"])
            continue
        named.add(path.resolve())
        reason = _unusable(path)
        if reason is not None:
            # A lone .img or .hdr of the folder is already listed by the walk, by its name.
            if _file_name(root, path) not in skipped.get(reason, []):
                tables.add_skip(skipped, reason, row["path"])
        elif mapping[row["label"]] not in names:
            tables.add_skip(skipped, tables.not_kept_reason(mapping[row["label"]], names, "label"),
                            f"{row['subject']}_{row['session']}")  # fmt: skip
        else:
            records.append(VolumeRecord(
                path=path, file_name=_file_name(root, path), subject=row["subject"],
                session=row["session"], label=names.index(mapping[row["label"]]),
                folder_split=split_of[f"{row['subject']} {row['session']}"] if split_of else "",
                info={k: v for k, v in row.items() if k not in (*COLUMNS, "split") and v},
            ))  # fmt: skip
    for resolved in sorted(set(volumes) - named):
        tables.add_skip(skipped, f"volume without a row in {table.name}",
                        _file_name(root, volumes[resolved]))  # fmt: skip
    if split_of:
        tables.check_subject_splits(table, [(r.subject, r.folder_split) for r in records])
    records.sort(key=lambda r: (r.subject, r.session))
    return VolumeListing(
        root=root, kind=NAME, class_names=names, volumes=records, label_table=str(table),
        class_mapping=mapping, skipped=skipped, folder_splits=tables.folder_splits(split_of),
    )  # fmt: skip


PLUGIN = sliced.plugin(
    NAME,
    "*.nii[.gz] or .hdr/.img + a CSV/TSV of path,subject,session,label (NIfTI)",
    detect,
    list_volumes,
)
