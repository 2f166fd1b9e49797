"""The folder of slices cut from a volume layout's volumes (`extraction`), read back as a
Layout: one PNG per slice, `<scan_id>/<axis>_<index>.png`, each a record named by its volume's
file and place (`record_name`) with the subject, session, label and folder split of its volume,
and the volumes' own record (file, shape, voxel size, orientation, raw intensities) for the data
set's metadata."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from ..layouts.base import ImageRecord, Layout, LayoutError, LayoutPlugin
from .settings import VolumeSettings

MANIFEST = "volumes.json"  # written last: without it the folder holds no finished slicing
VOLUME_DONE = "volume.json"  # in each volume's folder, written before the folder is renamed


def slice_name(axis: str, index: int) -> str:
    """The file name of the slice at `index` along `axis`, e.g. sagittal_090.png."""
    return f"{axis}_{index:03d}.png"


def record_name(volume_file: str, axis: str, index: int) -> str:
    """A slice's name in the data set, reports and predictions: its volume's file (relative to
    the data folder) and its place, e.g. `subjects/sub-01/.../..._T1w.nii.gz#sagittal_090`."""
    return f"{volume_file}#{slice_name(axis, index).removesuffix('.png')}"


def read_manifest(sliced_dir: Path) -> dict:
    """The manifest of a finished slicing; LayoutError where there is none."""
    path = Path(sliced_dir) / MANIFEST
    if not path.is_file():
        raise LayoutError(
            f"{sliced_dir} holds no {MANIFEST}: a volume layout's volumes are sliced first "
            "(the data set build does it), and this folder's slicing did not finish."
        )
    return json.loads(path.read_text())


def parse(sliced_dir: Path, kind: str) -> Layout:
    """The slices of a finished slicing as a Layout of layout `kind` (LayoutError where the
    folder was sliced from another layout)."""
    sliced_dir = Path(sliced_dir)
    manifest = read_manifest(sliced_dir)
    if manifest["kind"] != kind:
        raise LayoutError(
            f"{sliced_dir} holds slices of a {manifest['kind']} folder, not of a {kind} one."
        )
    axis = manifest["settings"]["axis"]
    records, subject_of_scan = [], {}
    for scan_id, volume in manifest["volumes"].items():
        subject_of_scan[scan_id] = volume["subject"]
        for index in volume["slices"]:
            name = slice_name(axis, index)
            records.append(
                ImageRecord(
                    path=sliced_dir / scan_id / name,
                    file_name=record_name(volume["file"], axis, index),
                    folder_split=volume["folder_split"],
                    label=volume["label"],
                    scan_id=scan_id,
                    slice_index=index,
                )
            )
    size = manifest["settings"]["size"]
    return Layout(
        root=sliced_dir,
        records=records,
        subject_of_scan=subject_of_scan,
        subject_source=Path(manifest["label_table"]).name,
        kind=kind,
        class_names=tuple(manifest["class_names"]),
        folder_splits=tuple(manifest["folder_splits"]),
        image_size=(size, size),
        class_mapping=dict(manifest["class_mapping"]),
        near_duplicate_search=False,
        extra_metadata={
            "volume_source": manifest["source"],
            "volume_settings": manifest["settings"],
            "volumes": manifest["volumes"],
            "volume_skipped": manifest["skipped"],
            "volume_unusable": manifest["unusable"],
        },
    )


def plugin(
    name: str, summary: str, detect: Callable[[Path], float], list_volumes: Callable[..., object]
) -> LayoutPlugin:
    """A volume layout's plug-in: its classes are those of its listing with the default
    settings, and its `parse` reads the folder the build sliced its volumes into."""

    def describe(manual_dir: Path, label_names: Sequence[str] = ()) -> tuple[str, ...]:
        """The class names in label order (the default settings' listing)."""
        return tuple(list_volumes(manual_dir, VolumeSettings()).class_names)

    def parse_sliced(sliced_dir: Path, label_names: Sequence[str] = ()) -> Layout:
        """The folder the build sliced this layout's volumes into, as a Layout."""
        return parse(sliced_dir, name)

    return LayoutPlugin(name=name, summary=summary, detect=detect, describe=describe,
                        parse=parse_sliced, volumes=list_volumes)  # fmt: skip
