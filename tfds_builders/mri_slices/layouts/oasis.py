"""The `oasis` layout: OASIS-1 slice exports, `ROOT/[Data/]<class>/OAS1_0001_MR1_mpr-1_100.jpg`
(subject OAS1_0001, session MR1, run 1, slice 100). No split folders; subjects from the names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from . import class_folders
from .base import (
    ImageRecord,
    Layout,
    LayoutPlugin,
    existing_root,
)

NAME = "oasis"
OASIS_PATTERN = re.compile(
    r"^(?P<subject>OAS1_\d{4})_(?P<session>MR\d+)_mpr-(?P<run>\d+)_(?P<slice>\d+)"
    r"\.(jpe?g|png)$",
    re.IGNORECASE,
)


def detect(manual_dir: Path) -> float:
    """0.8 where a class folder holds an OASIS-1 file name (ADNI and parquet outrank it)."""
    dirs = class_folders.class_dirs(existing_root(manual_dir))
    return 0.8 if any(OASIS_PATTERN.match(p.name) for d in dirs for p in d.iterdir()) else 0.0


def _record(root: Path, path: Path, split: str, label: int) -> ImageRecord | None:
    match = OASIS_PATTERN.match(path.name)
    if match is None:
        return None
    # Upper case: a name's case (oas1_0001_mr1) must not make another subject or scan.
    return ImageRecord(
        path=path,
        file_name=path.relative_to(root).as_posix(),
        folder_split=split,
        label=label,
        scan_id=f"{match['subject'].upper()}_{match['session'].upper()}_mpr-{match['run']}",
        slice_index=int(match["slice"]),
    )


def describe(manual_dir: Path, label_names: Sequence[str] = ()) -> tuple[str, ...]:
    """The class names in label order, from the folder names."""
    return class_folders.describe(existing_root(manual_dir))


def parse(manual_dir: Path, label_names: Sequence[str] = ()) -> Layout:
    """Every OASIS-1 image of the class folders; the subject is the name's OAS1_xxxx."""
    return class_folders.parse(
        existing_root(manual_dir), NAME, _record, "OAS1_xxxx_MRn_mpr-n_<slice>.jpg",
        lambda r: r.scan_id.split("_MR")[0], "file_name",
    )  # fmt: skip


PLUGIN = LayoutPlugin(
    name=NAME,
    summary="[Data/]<class>/OAS1_xxxx_MRn_mpr-n_<slice>.jpg (OASIS-1)",
    detect=detect,
    describe=describe,
    parse=parse,
)
