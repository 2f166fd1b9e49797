"""The `folders` layout: any class folders, `ROOT/[{train,val,test}/]<class>/<image>` (the
"4 class of images" set: `train/NonDemented/nonDem123.jpg`). No subject IDs: every image stands
for itself (its own scan and subject, named by its path)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tfds_builders.mri_slices.layouts import class_folders
from tfds_builders.mri_slices.layouts.base import (
    ImageRecord,
    Layout,
    LayoutPlugin,
    existing_root,
)

NAME = "folders"


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


def parse(manual_dir: Path, label_names: Sequence[str] = ()) -> Layout:
    """Every image in a class folder, each its own scan and subject."""
    return class_folders.parse(
        existing_root(manual_dir), NAME, _record, "an image", lambda r: r.scan_id, "scan_id"
    )


PLUGIN = LayoutPlugin(
    name=NAME,
    summary="[train|val|test/]<class>/<image> (class folders)",
    detect=detect,
    describe=describe,
    parse=parse,
)
