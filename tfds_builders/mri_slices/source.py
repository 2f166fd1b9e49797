"""The fingerprint of a user's data folder: what a build was made from, to know when it is stale.

Every file's relative path, size and modification time, and the content hash of the metadata
files (`meta_data_with_label.json`, `subjects.csv`), with the folder's absolute path. Hidden files
are left out (the layout ignores them too). Listing 30,000 files takes a fraction of a second:
no image is read. A build is stored under its fingerprint, so a folder whose files were added,
removed, repaired or touched, or whose metadata was edited, is built anew rather than served
from an old build; `changes` says what changed since a previous build.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .layouts import adni
from .layouts.base import check_names_utf8

METADATA_FILES = (adni.METADATA_JSON, adni.SUBJECTS_CSV)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def listing(manual_dir: str | Path) -> dict:
    """{"manual_dir", "files": {relative path: [size, mtime_ns]}, "metadata_sha256": {relative
    path: hash}} of every non-hidden file under `manual_dir`. LayoutError for a file name that
    is not UTF-8, before anything is built from the folder (the build could not store it)."""
    manual_dir = Path(manual_dir).resolve()
    files, metadata = {}, {}
    for folder, dirs, names in os.walk(manual_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            stat = path.stat()
            relative = path.relative_to(manual_dir).as_posix()
            files[relative] = [stat.st_size, stat.st_mtime_ns]
            if name in METADATA_FILES:
                metadata[relative] = _sha256(path)
    check_names_utf8(manual_dir, list(files))
    return {"manual_dir": os.fspath(manual_dir), "files": files, "metadata_sha256": metadata}


def with_volumes(
    folder_listing: dict, label_table: str, settings: dict, volume_files: list[str] = ()
) -> dict:
    """A volume layout's listing: the folder's, with the slicing settings, the label table's
    content hash and the size and modification time of the volumes outside the folder (a table
    may name them by absolute path): changing any of them makes another build."""
    try:
        table_hash = _sha256(Path(label_table))
    except OSError:
        table_hash = ""
    root = Path(folder_listing["manual_dir"])
    outside = {}
    for name in volume_files:
        path = Path(name).resolve()
        pair = [path, path.with_suffix(".img")] if path.suffix.lower() == ".hdr" else [path]
        for file in pair:
            if not file.is_relative_to(root) and file.exists():
                stat = file.stat()
                outside[os.fspath(file)] = [stat.st_size, stat.st_mtime_ns]
    return {**folder_listing, "volume_settings": settings, "label_table": {label_table: table_hash},
            "volumes_outside": dict(sorted(outside.items()))}  # fmt: skip


def fingerprint(folder_listing: dict) -> str:
    """16 hex digits naming a listing (the folder's path, its files and its metadata)."""
    payload = json.dumps(folder_listing, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def changes(old: dict, new: dict) -> dict:
    """What changed between two listings: counts of files added, removed and changed (size or
    modification time), whether the metadata's content changed, and up to 5 examples of each."""
    old_files, new_files = old["files"], new["files"]
    added = sorted(set(new_files) - set(old_files))
    removed = sorted(set(old_files) - set(new_files))
    changed = sorted(f for f in set(old_files) & set(new_files) if old_files[f] != new_files[f])
    return {
        "added": len(added),
        "removed": len(removed),
        "changed": len(changed),
        "metadata_changed": old["metadata_sha256"] != new["metadata_sha256"],
        # A volume layout's: the slicing settings, the label table, volumes outside the folder.
        "volume_settings_changed": old.get("volume_settings") != new.get("volume_settings"),
        "label_table_changed": old.get("label_table") != new.get("label_table"),
        "volumes_outside_changed": old.get("volumes_outside") != new.get("volumes_outside"),
        "examples": {"added": added[:5], "removed": removed[:5], "changed": changed[:5]},
    }


def describe(change: dict) -> str:
    """One line, e.g. 'added 3, removed 0, changed 2 files (e.g. train/AD/1_80.jpeg)'."""
    examples = [f for kind in ("added", "removed", "changed") for f in change["examples"][kind]]
    text = (
        f"added {change['added']}, removed {change['removed']}, changed {change['changed']} files"
    )
    if examples:
        text += f" (e.g. {', '.join(examples[:3])})"
    if change["metadata_changed"]:
        text += "; metadata edited"
    if change.get("volume_settings_changed"):
        text += "; slicing settings changed"
    if change.get("label_table_changed"):
        text += "; label table changed"
    if change.get("volumes_outside_changed"):
        text += "; volumes outside the folder changed"
    return text
