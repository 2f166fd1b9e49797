"""What every layout plug-in shares: the plug-in interface, the parsed folder and its records,
the error every layout problem raises, and small helpers for walking a user's folder.

A layout plug-in (`LayoutPlugin`) says how confident it is that a folder has its layout
(`detect`), names the classes without reading any image (`describe`), parses the folder into
records that carry scan identity, with the subject of each scan (`parse`), and gives the audit
what it must check of this layout (`image_size`, `image_modes`, `label_conflicts`). Plug-ins
import this module (and the shared helpers beside it), never each other.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

# How many names an error message lists before "... and N more".
LIST_LIMIT = 10
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
# Image modes read as grayscale where a layout doesn't prescribe "L" (ADNI does): slices saved
# as colour images carry the same value in every channel.
GRAY_READABLE_MODES = ("L", "LA", "RGB", "RGBA", "P")
# Every split a record can come from, in order (a layout without split folders uses "").
SPLIT_NAMES = ("train", "validation", "test")
# Folder (or file-name prefix) spellings of each split.
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "validation", "valid": "validation", "validation": "validation",
    "test": "test", "testing": "test",
}  # fmt: skip
# ADNI's image names, `<scanID>_<slice>.jpeg` (388206_78.jpeg): a scan ID, then a slice index.
SCAN_SLICE_PATTERN = re.compile(
    r"^(?P<scan>[A-Za-z0-9]+)_(?P<slice>\d+)\.(?P<ext>jpe?g|png)$", re.IGNORECASE
)
# The setting that names the data folder, in messages; a command with a flag of its own (the
# audit's --manual_dir) passes that instead.
MANUAL_DIR_SETTING = "--config.data.manual_dir"
# A file given as the data folder with one of these suffixes is an archive still to unpack.
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar")


class LayoutError(ValueError):
    """The folder does not have the layout asked for; the message says what was expected."""


class DataFolderError(LayoutError):
    """A path problem, not a layout one: the path given is not the data set's folder (nothing
    there, a file, one split of the set) or a file name is not UTF-8. A one-line message saying
    what to do, complete without a hint."""


class SplitFolderError(DataFolderError):
    """The folder given is one split of a data set (its train/ or test/), not the whole set:
    a one-line message naming the parent folder to give instead."""


def scan_and_slice(name: str) -> tuple[str, int] | None:
    """(scan ID, slice index) of a `<scanID>_<slice>.<jpeg|jpg|png>` file name, else None."""
    match = SCAN_SLICE_PATTERN.match(name)
    return (match["scan"], int(match["slice"])) if match else None


def brief_list(items: Sequence[object], limit: int = LIST_LIMIT, rest: str = "") -> str:
    """The first `limit` items, comma-separated, then "... and N more" (+ `rest`, e.g. where
    all of them are listed) when there are more: error messages stay readable for any count."""
    shown = ", ".join(str(i) for i in items[:limit])
    if len(items) <= limit:
        return shown
    return f"{shown} ... and {len(items) - limit} more{rest}"


def raise_problems(problems: Sequence[str], what: str, hint: str = "") -> None:
    """A LayoutError listing the first LIST_LIMIT entries that don't fit (`what`: e.g. "the
    folders layout"), and the rest's count, then `hint`; nothing when there are none."""
    if not problems:
        return
    more = len(problems) - LIST_LIMIT
    raise LayoutError(
        f"{len(problems)} entries don't {what}, e.g.:\n  "
        + "\n  ".join(problems[:LIST_LIMIT])
        + (f"\n  ... and {more} more" if more > 0 else "")
        + hint
    )


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One slice image found in the folder."""

    path: Path
    file_name: str  # relative to the layout's root, e.g. "train/AD/388206_78.jpeg"
    folder_split: str  # "train", "validation" or "test": the official folder; "" where none
    label: int  # index into the layout's class_names (ADNI: 0 = NC, 1 = AD)
    scan_id: str
    slice_index: int  # -1 where the layout has no slice indices
    # The image's bytes where they are not a file of their own (a parquet row); else None.
    data: bytes | None = dataclasses.field(default=None, repr=False, compare=False)

    def read_bytes(self) -> bytes:
        """The image file's bytes, as stored."""
        return self.data if self.data is not None else self.path.read_bytes()


@dataclasses.dataclass
class Layout:
    """Everything parsed from a manual_dir: images, subjects and where subjects came from."""

    root: Path
    records: list[ImageRecord]
    subject_of_scan: dict[str, str]
    subject_source: str  # "meta_data_with_label.json", "subjects.csv", "file_name", "scan_id"
    stray_files: list[Path] = dataclasses.field(default_factory=list)
    # Scan ID -> class name from the metadata entry's "label", for the scans found that have one
    # the layout recognises; scan ID -> the label as written, for those it doesn't.
    metadata_label_of_scan: dict[str, str] = dataclasses.field(default_factory=dict)
    unrecognised_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    # Which layout this is (a registered plug-in's name), its classes in label order, the
    # official split folders it has (() where none), the size (width, height) every image must
    # have (None: any size) and how its class names were mapped.
    kind: str = "adni"
    class_names: tuple[str, ...] = ("NC", "AD")
    folder_splits: tuple[str, ...] = ("train", "test")
    image_size: tuple[int, int] | None = None
    class_mapping: dict[str, str] = dataclasses.field(default_factory=dict)
    # What the build stores in the data set's metadata besides its own entries (a volume
    # layout's volumes, slicing settings and skipped volumes).
    extra_metadata: dict = dataclasses.field(default_factory=dict)
    # Whether the audit searches near-identical image pairs across scans: not for slices of
    # registered volumes with subjects from a table, which look alike across people by design
    # (550,151 pairs in 12,900 slices of 100 synthetic t1-linear volumes) and whose leakage
    # the subjects measure.
    near_duplicate_search: bool = True

    @property
    def has_slice_index(self) -> bool:
        """Whether the file names give each image's slice position."""
        return any(r.slice_index >= 0 for r in self.records)

    @property
    def subject_coverage(self) -> float:
        """Fraction of scans whose subject came from the source (0 when scans stand in)."""
        if self.subject_source == "scan_id" or not self.subject_of_scan:
            return 0.0
        known = sum(subject != scan for scan, subject in self.subject_of_scan.items())
        return known / len(self.subject_of_scan)

    def subject_id(self, record: ImageRecord) -> str:
        """The subject a record's scan belongs to."""
        return self.subject_of_scan[record.scan_id]

    def records_in(self, folder_split: str) -> list[ImageRecord]:
        """Images of one official folder, in a stable order."""
        return [r for r in self.records if r.folder_split == folder_split]


def no_label_conflicts(parsed: Layout) -> list[dict]:
    """The audit hook of a layout without metadata labels: nothing can contradict a folder."""
    return []


@dataclasses.dataclass(frozen=True)
class LayoutPlugin:
    """One layout: how to recognise, describe and parse it, and what the audit checks of it.

    `detect(manual_dir)` is the confidence in [0, 1] that the folder has this layout (0: not
    it); "auto" takes the most confident plug-in, the first registered on a tie. `describe`
    and `parse` take (manual_dir, label_names) and raise LayoutError naming what is wrong.
    """

    name: str
    summary: str  # the folder shape, for messages: "[Data/]<class>/OAS1_..._<slice>.jpg"
    detect: Callable[[Path], float]
    describe: Callable[[Path, Sequence[str]], tuple[str, ...]]
    parse: Callable[[Path, Sequence[str]], Layout]
    # Audit hooks: the size (width, height) every image must have (None: any, the pipeline
    # resizes), the image modes accepted, and the scans whose metadata contradicts a folder.
    image_size: tuple[int, int] | None = None
    image_modes: tuple[str, ...] = GRAY_READABLE_MODES
    label_conflicts: Callable[[Layout], list[dict]] = no_label_conflicts
    # A volume layout's listing of its volumes, (manual_dir, volumes.settings.VolumeSettings) ->
    # volumes.listing.VolumeListing; None for a layout of 2D images. A volume layout's `parse`
    # reads the folder of slices cut from those volumes (volumes.sliced), not the user's folder.
    volumes: Callable[..., object] | None = None

    @property
    def is_volume(self) -> bool:
        """Whether the layout holds 3D volumes that slices are cut from."""
        return self.volumes is not None


def is_image(path: Path) -> bool:
    """Whether a file's suffix is an image's (IMAGE_SUFFIXES, any case)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def visible_dirs(folder: Path) -> list[Path]:
    """The folder's sub-folders, hidden ones left out, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def wrapping_chain(root: Path) -> list[Path]:
    """root, then each lone wrapping folder ("Alzheimer_s Dataset/") stepped into, as archives
    often unpack. A lone split folder (train/) is not stepped into: it is the set's one split."""
    chain = [root]
    while True:
        entries = [p for p in chain[-1].iterdir() if not p.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir():
            return chain
        if entries[0].name.lower() in SPLIT_ALIASES:
            return chain
        chain.append(entries[0])


def descend(root: Path) -> Path:
    """Past lone wrapping folders (`wrapping_chain`): where the set's content starts."""
    return wrapping_chain(root)[-1]


def check_folder(manual_dir: Path, setting: str = MANUAL_DIR_SETTING) -> None:
    """DataFolderError, in one line naming the path and `setting`, unless manual_dir is a folder:
    a file (an archive still to unpack, most often) or nothing at all."""
    if manual_dir.is_dir():
        return
    if not manual_dir.exists():
        raise DataFolderError(
            f"Data folder {manual_dir} does not exist; give the folder holding the data set "
            f"({setting}=DIR)."
        )
    if manual_dir.name.lower().endswith(ARCHIVE_SUFFIXES):
        todo = "unzip it" if manual_dir.suffix.lower() == ".zip" else "unpack it"
        todo += " and give the folder it unpacks to"
    else:
        todo = "give the folder holding the data set, unpacked if it is an archive"
    raise DataFolderError(f"{manual_dir} is a file, not a folder; {todo} ({setting}=DIR).")


def escaped_name(name: str) -> str:
    """A file name as it can be shown and stored: bytes that are not UTF-8 (which Python keeps
    as surrogates) written as \\xNN."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte became
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def check_names_utf8(root: Path, names: Sequence[str]) -> None:
    """DataFolderError naming (escaped) every file name, relative to root, that is not valid UTF-8:
    the data set stores names as UTF-8 text, and reports and CSVs name files by them."""
    bad = sorted(e for n in names if not n.isascii() and (e := escaped_name(n)) != n)
    rename = "in UTF-8 (e.g. convmv -f latin1 -t utf8 --notest -r DIR)"
    if len(bad) == 1:
        raise DataFolderError(
            f"{escaped_name(os.fspath(root))}/{bad[0]}: the file name is not valid UTF-8 (bad "
            f"bytes shown as \\xNN); rename it {rename}."
        )
    if bad:
        raise DataFolderError(
            f"{escaped_name(os.fspath(root))}: {len(bad)} file names are not valid UTF-8 (bad "
            f"bytes shown as \\xNN): {brief_list(bad)}; rename them {rename}."
        )


def check_whole_set(manual_dir: Path, setting: str = MANUAL_DIR_SETTING) -> None:
    """SplitFolderError where the folder (past lone wrapping folders) is named as a split
    (train/, test/, ...) and directly holds class folders of images: one split of a set given in
    place of the set, whose images would be split again by image, leaking scans. The message
    names the parent to give with `setting` (the flag of the command that runs)."""
    if not manual_dir.is_dir():
        return
    # Absolute (not resolved: a symlinked folder keeps its name), so that "." has a name.
    root = descend(Path(os.path.abspath(manual_dir)))
    split = SPLIT_ALIASES.get(root.name.lower())
    if split is None:
        return
    classes = [d.name for d in visible_dirs(root) if any(is_image(p) for p in d.iterdir())]
    if not classes:
        return
    parent = root.parent
    found = [d.name for d in visible_dirs(parent) if d.name.lower() in SPLIT_ALIASES]
    found.sort(key=lambda name: SPLIT_NAMES.index(SPLIT_ALIASES[name.lower()]))
    splits = [f"{name}/" for name in found]
    holding = " and ".join([", ".join(splits[:-1]), splits[-1]] if len(splits) > 1 else splits)
    raise SplitFolderError(
        f"{root} looks like the {split} split of a data set (class folders "
        f"{brief_list(classes)}), not the whole set: set {setting}={parent} "
        f"(the folder holding {holding}), or rename {root.name}/ if it holds the whole set."
    )


def check_one_folder_per_scan(root: Path, records: Sequence[ImageRecord], hint: str = "") -> None:
    """LayoutError naming every scan whose images lie in more than one split or class folder
    (two labels, or both sides of a split), with its folders: a scan must live in one."""
    where: dict[str, set[tuple[str, int]]] = collections.defaultdict(set)
    folders: dict[str, set[str]] = collections.defaultdict(set)
    for r in records:
        where[r.scan_id].add((r.folder_split, r.label))
        folders[r.scan_id].add(r.file_name.rsplit("/", 1)[0] if "/" in r.file_name else ".")
    bad = sorted(s for s, w in where.items() if len(w) > 1)
    if bad:
        examples = brief_list([f"{s} in {' and '.join(sorted(folders[s]))}" for s in bad])
        raise LayoutError(
            f"{root}: {len(bad)} scan IDs appear in more than one split or class folder (a scan "
            f"must live in exactly one): {examples}. Keep each scan's images in one folder.{hint}"
        )


def existing_root(manual_dir: Path) -> Path:
    """The folder's root (past lone wrapping folders); LayoutError if it is not a folder."""
    check_folder(manual_dir)
    return descend(manual_dir)


def data_tops(root: Path) -> list[Path]:
    """Where a layout's content may lie: root itself and its `data`/`Data` folder."""
    return [root] + [d for d in visible_dirs(root) if d.name.lower() == "data"]
