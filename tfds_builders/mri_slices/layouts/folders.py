"""The `folders` layout: any class folders, `ROOT/[{train,val,test}/]<class>/<image>` (the
"4 class of images" set: `train/NonDemented/nonDem123.jpg`). No subject IDs. Free-form names:
every image stands for itself (its own scan and subject, named by its path). Names that all
follow ADNI's `<scanID>_<slice>.jpeg`, with scans of several slices: each scan's images are one
scan (and subject), so that no split is made by image where the names give scans."""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from . import class_folders
from .base import (
    ImageRecord,
    Layout,
    LayoutPlugin,
    check_one_folder_per_scan,
    existing_root,
    scan_and_slice,
)

NAME = "folders"
_SCAN_HINT = (
    " (Scan IDs come from the file names, <scanID>_<slice>.jpeg; rename the files if the part "
    "before the underscore is no scan ID.)"
)


def detect(manual_dir: Path) -> float:
    """Some confidence (0.1) for any folder with class folders of images: the fallback that
    every more specific layout outranks."""
    return 0.1 if class_folders.class_dirs(existing_root(manual_dir)) else 0.0


def _record(root: Path, path: Path, split: str, label: int) -> ImageRecord:
    relative = path.relative_to(root).as_posix()
    # A number in a free-form name ("nonDem123") is no slice position.
    return ImageRecord(
        path=path,
        file_name=relative,
        folder_split=split,
        label=label,
        scan_id=relative.rsplit(".", 1)[0],
        slice_index=-1,
    )


def describe(manual_dir: Path, label_names: Sequence[str] = ()) -> tuple[str, ...]:
    """The class names in label order, from the folder names."""
    return class_folders.describe(existing_root(manual_dir))


def _scans_from_names(parsed: Layout) -> Layout:
    """The layout with scans (and slices) read from `<scanID>_<slice>` names where every image
    has one, some scan has several images and every class has several scans (a name such as
    mild_3.jpg, one "scan" per class, is no scan ID); else as parsed."""
    names = [scan_and_slice(r.path.name) for r in parsed.records]
    if any(n is None for n in names):
        return parsed
    scans_of_class = collections.defaultdict(set)
    for record, (scan, _) in zip(parsed.records, names, strict=True):
        scans_of_class[record.label].add(scan)
    images_of_scan = collections.Counter(scan for scan, _ in names)
    if max(images_of_scan.values()) < 2 or min(len(s) for s in scans_of_class.values()) < 2:
        return parsed
    records = [
        dataclasses.replace(r, scan_id=scan, slice_index=index)
        for r, (scan, index) in zip(parsed.records, names, strict=True)
    ]
    check_one_folder_per_scan(parsed.root, records, _SCAN_HINT)
    logging.warning(
        "%s: every image is named <scanID>_<slice>: its %d images are read as %d scans, scan IDs "
        "and slice indices from the file names, so that no scan is divided by a split.",
        parsed.root, len(records), len(images_of_scan),
    )  # fmt: skip
    return dataclasses.replace(
        parsed, records=records, subject_of_scan={s: s for s in images_of_scan}
    )


def parse(manual_dir: Path, label_names: Sequence[str] = ()) -> Layout:
    """Every image in a class folder, each its own scan and subject, or, where the names give
    scans (`<scanID>_<slice>`), grouped by scan."""
    return _scans_from_names(
        class_folders.parse(
            existing_root(manual_dir), NAME, _record, "an image", lambda r: r.scan_id, "scan_id"
        )
    )


PLUGIN = LayoutPlugin(
    name=NAME,
    summary="[train|val|test/]<class>/<image> (class folders)",
    detect=detect,
    describe=describe,
    parse=parse,
)
