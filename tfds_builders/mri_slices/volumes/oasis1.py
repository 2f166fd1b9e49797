"""The `oasis1` layout: the OASIS-1 cross-sectional release as it unpacks.

    disc<N>/OAS1_<xxxx>_MR<k>/PROCESSED/MPRAGE/T88_111/
        OAS1_<xxxx>_MR<k>_mpr_n<r>_anon_111_t88_masked_gfc.hdr (+ .img)

(the disc folders' content may also lie directly in the folder given). The image is the
skull-stripped `_t88_masked_gfc` (data.oasis_image=masked) or `_t88_gfc` (unmasked); an Analyze
pair is named by its .hdr. Labels come from `oasis_cross-sectional.csv` (ID,M/F,Hand,Age,Educ,
SES,MMSE,CDR,eTIV,nWBV,ASF,Delay; ID and CDR required) in the folder, the folder above, or
`--config.data.labels_tsv`.

- data.oasis_labels=stages: CDR 0 / 0.5 / 1 / 2 -> NonDemented, VeryMildDemented, MildDemented,
  ModerateDemented. The class names are always these four, absent ones too: the mapping, not
  the data, fixes them (as caps's NC,AD), so that two releases label alike. CDR 3 (none in
  OASIS-1) is no stage: skipped and counted, not merged into ModerateDemented.
- data.oasis_labels=binary: CDR 0 -> NC, CDRs in data.oasis_ad_cdr (default 1,2) -> AD, other
  CDRs skipped and counted.
- A blank CDR (the young controls) is skipped and counted (data.oasis_blank_cdr=skip) or read
  as CDR 0 (control).
- The subject is OAS1_xxxx and the session MR1/MR2: the MR2 reliability repeats belong to their
  subject, so that a split by subject keeps them with it. The release leaves an MR2 row's CDR
  (and MMSE) blank; it is taken from the subject's MR1 row, and the record's info says so
  ("CDR from": "OAS1_xxxx_MR1").
- A row is labelled only where its volume is found: rows without a session folder and volumes
  without a row are skipped and counted, and so are session folders without the chosen image
  (their rows are not counted again).
No volume is read here.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..layouts import classes
from ..layouts.base import (
    LayoutError,
    brief_list,
    check_folder,
    visible_dirs,
    wrapping_chain,
)
from . import sliced, tables
from .listing import VolumeListing, VolumeRecord
from .settings import VolumeSettings

NAME = "oasis1"
CSV_NAME = "oasis_cross-sectional.csv"
COLUMNS = ("ID", "CDR")
# Column of the release's CSV -> the key a record's info gives it.
INFO_COLUMNS = {"Age": "age", "M/F": "sex", "MMSE": "MMSE", "CDR": "CDR", "eTIV": "eTIV",
                "nWBV": "nWBV", "Delay": "Delay"}  # fmt: skip
SESSION = re.compile(r"^(?P<subject>OAS1_\d{4})_(?P<session>MR\d+)$", re.IGNORECASE)
DISC = re.compile(r"^disc\d+$", re.IGNORECASE)
IMAGE_FOLDER = ("PROCESSED", "MPRAGE", "T88_111")
IMAGE_ENDINGS = {"masked": "_t88_masked_gfc.hdr", "unmasked": "_t88_gfc.hdr"}
CDR_VALUES = (0.0, 0.5, 1.0, 2.0, 3.0)
STAGE_OF_CDR = dict(zip((0.0, 0.5, 1.0, 2.0), classes.STAGES, strict=True))
SHAPE = (
    "disc<N>/OAS1_xxxx_MRn/PROCESSED/MPRAGE/T88_111/OAS1_xxxx_MRn_mpr_n4_anon_111_t88_masked_gfc"
    ".hdr"
)
SKIP_BLANK = "blank CDR (young controls; data.oasis_blank_cdr=control keeps them as CDR 0)"
SKIP_NO_VOLUME = "row without a volume file"
SKIP_NO_IMG = "Analyze .hdr without its .img"
SKIP_SECOND = "second image of the session (the first by name is used)"
DETECT_SESSIONS = 5


def oasis_root(manual_dir: Path) -> Path | None:
    """The folder holding disc<N>/ folders of OAS1_xxxx_MRn/ folders, or those directly (past
    lone wrapping folders); None where there is none."""
    for folder in wrapping_chain(manual_dir):
        if session_dirs(folder, limit=1):
            return folder
    return None


def session_dirs(root: Path, limit: int | None = None) -> list[Path]:
    """The OAS1_xxxx_MRn folders in root's disc folders and in root itself, sorted (the first
    `limit` found, when given)."""
    found: list[Path] = []
    for folder in [root] + [d for d in visible_dirs(root) if DISC.match(d.name)]:
        found += [d for d in visible_dirs(folder) if SESSION.match(d.name)]
        if limit is not None and len(found) >= limit:
            return found[:limit]
    return found


def detect(manual_dir: Path) -> float:
    """0.9 where an OAS1_xxxx_MRn folder holds PROCESSED/MPRAGE/T88_111 or the release's CSV
    lies beside such folders; 0.5 for OAS1_xxxx_MRn folders alone."""
    root = oasis_root(manual_dir)
    if root is None:
        return 0.0
    if (root / CSV_NAME).is_file() or any(
        d.joinpath(*IMAGE_FOLDER).is_dir() for d in session_dirs(root, DETECT_SESSIONS)
    ):
        return 0.9
    return 0.5


def csv_path(manual_dir: Path, root: Path, settings: VolumeSettings) -> Path:
    """The clinical table: the setting's, else oasis_cross-sectional.csv in the release's folder,
    a folder on the way to it, or the folder above; LayoutError where there is none."""
    if settings.labels_table:
        return tables.given_table(manual_dir, settings.labels_table)
    places = [*wrapping_chain(manual_dir), root, root.parent]
    for place in places:
        if (place / CSV_NAME).is_file():
            return place / CSV_NAME
    raise LayoutError(
        f"{root}: no {CSV_NAME} (the release's clinical table) there or in {root.parent}; put it "
        f"there or give it with {tables.LABELS_SETTING}=FILE."
    )


def _images(
    root: Path, ending: str, skipped: dict[str, list[str]]
) -> tuple[dict[str, Path], set[str]]:
    """(session ID (OAS1_xxxx_MRn) -> its chosen image's .hdr, the session folders skipped for
    want of one: their rows are explained)."""
    found, explained = {}, set()
    other = next(v for v in IMAGE_ENDINGS.values() if v != ending)
    missing = (f"session folder without a ...{ending[:-4]} image (data.oasis_image="
               f"{'unmasked' if other == IMAGE_ENDINGS['unmasked'] else 'masked'} takes "
               f"...{other[:-4]})")  # fmt: skip
    for session in session_dirs(root):
        sid = session.name.upper()
        folder = session.joinpath(*IMAGE_FOLDER)
        hdrs = sorted(p for p in folder.glob("*") if p.name.lower().endswith(ending)
                      and p.name.upper().startswith(sid)) if folder.is_dir() else []  # fmt: skip
        paired = [p for p in hdrs if _img_of(p) is not None]
        for hdr in hdrs:
            if hdr not in paired:
                tables.add_skip(skipped, SKIP_NO_IMG, hdr.relative_to(root).as_posix())
        for hdr in paired[1:]:
            tables.add_skip(skipped, SKIP_SECOND, hdr.relative_to(root).as_posix())
        if paired:
            found[sid] = paired[0]
        else:
            explained.add(sid)
        if not hdrs:
            tables.add_skip(skipped, missing, session.relative_to(root).as_posix())
    return found, explained


def _img_of(hdr: Path) -> Path | None:
    """The .img beside an Analyze .hdr (either case), None where there is none."""
    for suffix in (".img", ".IMG"):
        if hdr.with_suffix(suffix).is_file():
            return hdr.with_suffix(suffix)
    return None


def _cdrs(table: Path, rows: list[dict[str, str]]) -> dict[str, float | None]:
    """Row ID -> CDR (None where blank); LayoutError naming rows with no OAS1_xxxx_MRn ID or
    a CDR that is none of 0, 0.5, 1, 2, 3."""
    out, bad = {}, []
    for row in rows:
        rid, text = row["ID"].upper(), row["CDR"]
        try:
            cdr = float(text) if text else None
        except ValueError:
            cdr = -1.0
        if not SESSION.match(rid) or (cdr is not None and cdr not in CDR_VALUES):
            bad.append(f"{rid or '(blank ID)'} CDR={text!r}")
        out[rid] = cdr
    if bad:
        raise LayoutError(
            f"{table}: {len(bad)} rows have no OAS1_xxxx_MRn ID or a CDR other than blank, 0, "
            f"0.5, 1, 2 or 3 ({brief_list(bad)}); correct them in the table."
        )
    return out


def _class_of(cdr: float | None, settings: VolumeSettings) -> tuple[str | None, str]:
    """(class, "") of a CDR under the settings' mapping, or (None, the skip reason)."""
    if cdr is None:
        if settings.oasis_blank_cdr != "control":
            return None, SKIP_BLANK
        cdr = 0.0
    if settings.oasis_labels == "binary":
        if cdr == 0.0:
            return "NC", ""
        if cdr in settings.oasis_ad_cdr:
            return "AD", ""
        ad = ",".join(f"{c:g}" for c in settings.oasis_ad_cdr)
        return None, f"CDR {cdr:g} not mapped (data.oasis_ad_cdr={ad})"
    if cdr in STAGE_OF_CDR:
        return STAGE_OF_CDR[cdr], ""
    return None, (f"CDR {cdr:g} not among the four stages (data.oasis_labels=binary can count it "
                  "as AD with data.oasis_ad_cdr)")  # fmt: skip


def _filled(rows: dict[str, dict[str, str]], cdrs: dict[str, float | None]) -> dict[str, str]:
    """Row ID -> the MR1 row whose CDR (and MMSE) a repeat's blank ones are taken from."""
    source = {}
    for rid, cdr in cdrs.items():
        first = SESSION.match(rid)["subject"].upper() + "_MR1"
        if cdr is None and rid != first and cdrs.get(first) is not None:
            source[rid] = first
            cdrs[rid] = cdrs[first]
            rows[rid] = {**rows[rid], "CDR": rows[first]["CDR"],
                         "MMSE": rows[rid].get("MMSE") or rows[first].get("MMSE", "")}  # fmt: skip
    return source


def class_names(settings: VolumeSettings) -> tuple[str, ...]:
    """The classes of the settings' mapping, in label order: the four stages, or NC, AD."""
    return tables.DEFAULT_CLASSES if settings.oasis_labels == "binary" else classes.STAGES


def list_volumes(manual_dir: Path, settings: VolumeSettings | None = None) -> VolumeListing:
    """Every session's chosen image with its subject, session and CDR class from the CSV, and
    everything left out, by reason (no volume data is read)."""
    settings = settings or VolumeSettings()
    check_folder(manual_dir)
    root = oasis_root(manual_dir)
    if root is None:
        raise LayoutError(f"{manual_dir}: no OAS1_xxxx_MRn folders; expected {SHAPE}.")
    skipped: dict[str, list[str]] = {}
    images, explained = _images(root, IMAGE_ENDINGS[settings.oasis_image], skipped)
    table = csv_path(manual_dir, root, settings)
    rows = tables.read_table(table, COLUMNS)
    tables.check_unique(table, [r["ID"].upper() for r in rows], what="ID")
    by_id = {r["ID"].upper(): r for r in rows}
    cdrs = _cdrs(table, rows)
    source = _filled(by_id, cdrs)
    names = class_names(settings)
    mapping: dict[str, str] = {}
    records = []
    for sid, path in sorted(images.items()):
        if sid not in by_id:
            tables.add_skip(skipped, f"no row in {table.name}", sid)
            continue
        cls, reason = _class_of(cdrs[sid], settings)
        if cls is None:
            tables.add_skip(skipped, reason, sid)
            continue
        row = by_id[sid]
        written = f"CDR {cdrs[sid]:g}" if cdrs[sid] is not None else "blank CDR"
        mapping[written] = cls
        info = {key: row[col] for col, key in INFO_COLUMNS.items() if row.get(col)}
        if sid in source:
            info["CDR from"] = source[sid]
        match = SESSION.match(sid)
        records.append(VolumeRecord(
            path=path, file_name=path.relative_to(root).as_posix(),
            subject=match["subject"].upper(), session=match["session"].upper(),
            label=names.index(cls), info=info,
        ))  # fmt: skip
    for rid in sorted(set(by_id) - set(images) - explained):
        tables.add_skip(skipped, SKIP_NO_VOLUME, rid)
    return VolumeListing(
        root=root, kind=NAME, class_names=names, volumes=records, label_table=str(table),
        class_mapping=dict(sorted(mapping.items())), skipped=skipped,
    )  # fmt: skip


PLUGIN = sliced.plugin(
    NAME,
    f"disc*/OAS1_xxxx_MRn/PROCESSED/MPRAGE/T88_111/*.hdr + {CSV_NAME} (OASIS-1 release)",
    detect,
    list_volumes,
)
