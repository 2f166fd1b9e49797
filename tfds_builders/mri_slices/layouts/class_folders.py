"""What the class-folder layouts share: `ROOT/[{train,val,test}/ | Data/]<class>/<image>`.

The `folders` and `oasis` plug-ins differ only in how an image's name gives its scan, slice and
subject; finding the split and class folders, strays and misplaced images, the class order and
the parsed `Layout` are the same, and live here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import classes
from .base import (
    SPLIT_ALIASES,
    SPLIT_NAMES,
    ImageRecord,
    Layout,
    LayoutError,
    check_one_folder_per_scan,
    data_tops,
    is_image,
    raise_problems,
    visible_dirs,
)

# (root, image path, split, label) -> its record, or None where its name doesn't parse.
RecordOf = Callable[[Path, Path, str, int], "ImageRecord | None"]


def class_dirs(root: Path) -> list[Path]:
    """The class folders under root, root/Data or root/<split>: folders holding images."""
    tops = data_tops(root) + [d for d in visible_dirs(root) if d.name.lower() in SPLIT_ALIASES]
    return [
        d for top in tops for d in visible_dirs(top)
        if any(is_image(p) for p in d.iterdir())
    ]  # fmt: skip


def split_folders(root: Path) -> dict[str, Path]:
    """Split name -> folder, for the split folders under root (empty if it has none)."""
    splits: dict[str, Path] = {}
    for d in visible_dirs(root):
        split = SPLIT_ALIASES.get(d.name.lower())
        if split is None:
            continue
        if split in splits:
            raise LayoutError(f"{splits[split]} and {d} are both the {split} split; keep one.")
        splits[split] = d
    if splits and "train" not in splits:
        raise LayoutError(f"{root} has split folders {sorted(splits)} but no train/ folder.")
    return splits


def _splits_or_data(root: Path) -> dict[str, Path]:
    """The split folders, or, without them, the one folder holding the classes ("" split)."""
    splits = split_folders(root)
    if not splits:
        data = [d for d in visible_dirs(root) if d.name.lower() == "data"]
        splits = {"": data[0] if data else root}
    return splits


def describe(root: Path) -> tuple[str, ...]:
    """The class names in label order, from the folder names alone."""
    splits = _splits_or_data(root)
    found = {d.name for folder in splits.values() for d in visible_dirs(folder)}
    class_names = classes.class_order(found)[0]
    if len(class_names) < 2:
        raise LayoutError(f"{root}: found class folders {class_names}; expected two or more.")
    return class_names


def parse(
    root: Path, kind: str, record_of: RecordOf, expected_name: str,
    subject_of: Callable[[ImageRecord], str], subject_source: str,
) -> Layout:  # fmt: skip
    """Images in class folders, with or without split folders, as a Layout of `kind`: each
    image's record from `record_of` (None: a problem, `expected_name` saying what was
    expected), its scan's subject from `subject_of`."""
    splits = _splits_or_data(root)
    found: dict[str, list[tuple[str, Path]]] = {}
    for split, folder in splits.items():
        found[split] = [(d.name, d) for d in visible_dirs(folder)]
        if not found[split]:
            raise LayoutError(
                f"{folder} holds no class folders; expected {folder}/<class>/<image>."
            )
    class_names, mapping = classes.class_order(
        {name for pairs in found.values() for name, _ in pairs}
    )
    if len(class_names) < 2:
        raise LayoutError(f"{root}: found one class only ({class_names}); expected two or more.")
    records, (strays, problems) = [], _outside_class_folders(root, splits)
    for split, pairs in found.items():
        for name, folder in pairs:
            label = class_names.index(mapping[name])
            for path in sorted(folder.iterdir()):
                if path.name.startswith("."):
                    continue
                if path.is_file() and not is_image(path):
                    strays.append(path)
                    continue
                if not path.is_file():
                    problems.append(f"{path} (a folder inside a class folder)")
                    continue
                record = record_of(root, path, split, label)
                if record is None:
                    problems.append(f"{path} (expected {expected_name})")
                    continue
                records.append(record)
    raise_problems(problems, f"fit the {kind} layout")
    if not records:
        raise LayoutError(f"{root} holds no images in its class folders.")
    check_one_folder_per_scan(root, records)
    return Layout(
        root=root,
        records=records,
        subject_of_scan={r.scan_id: subject_of(r) for r in records},
        subject_source=subject_source,
        stray_files=strays,
        kind=kind,
        class_names=class_names,
        folder_splits=tuple(s for s in SPLIT_NAMES if s in splits),
        image_size=None,
        class_mapping=mapping,
    )


def _outside_class_folders(root: Path, splits: dict[str, Path]) -> tuple[list[Path], list[str]]:
    """What lies outside the class folders: other files and folders beside the split (or Data)
    folders are strays (reported, never read, e.g. a README or an archive's __MACOSX); an image
    directly in a split folder has no class, a problem."""
    strays, problems = [], []
    kept = set(splits.values())
    if root not in kept:
        strays += [
            p for p in sorted(root.iterdir()) if not p.name.startswith(".") and p not in kept
        ]
    for folder in kept:
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if is_image(path):
                problems.append(f"{path} (an image outside any class folder)")
            else:
                strays.append(path)
    return strays, problems
