"""The volumes a volume layout found: each with its file, subject, session and label, and
everything the layout left out, by reason, so that nothing is dropped silently."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

from ..layouts.base import LayoutError, brief_list

# The suffixes of a volume file; an Analyze pair is named by its .hdr (the .img beside it).
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".hdr")


def volume_suffix(name: str) -> str | None:
    """The volume suffix a file name ends with (any case), else None."""
    lower = name.lower()
    return next((s for s in VOLUME_SUFFIXES if lower.endswith(s)), None)


@dataclasses.dataclass(frozen=True)
class VolumeRecord:
    """One volume (one session of one subject) found by a layout."""

    path: Path  # the volume file: .nii, .nii.gz, or the .hdr of an Analyze .hdr/.img pair
    file_name: str  # relative to the layout's root, POSIX
    subject: str
    session: str
    label: int  # index into the listing's class_names
    folder_split: str = ""  # "train"/"test" from a table's split column, else ""
    # What the table says of the session besides the label (age, sex, MMSE, CDR, ...), as read.
    info: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def scan_id(self) -> str:
        """The session's ID, unique in the collection: `<subject>_<session>`."""
        return f"{self.subject}_{self.session}"


@dataclasses.dataclass
class VolumeListing:
    """Every volume a layout found in a folder, labelled, and what it left out."""

    root: Path
    kind: str  # the layout's name: caps, oasis1, nifti
    class_names: tuple[str, ...]
    volumes: list[VolumeRecord]
    label_table: str  # the table the labels came from (its path)
    # How the labels as written became classes, e.g. {"CN": "NC", "CDR 0.5": "VeryMildDemented"}.
    class_mapping: dict[str, str] = dataclasses.field(default_factory=dict)
    # Reason -> every row or file left out for it (e.g. "blank CDR" -> ["OAS1_0005_MR1", ...]).
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    folder_splits: tuple[str, ...] = ()  # ("train", "test") where a table splits the volumes

    def __post_init__(self):
        """LayoutError, naming the table, for session IDs that cannot name a folder of slices
        (a / or \\, a leading dot, empty) or that two (subject, session) pairs share."""
        unsafe = sorted({v.scan_id for v in self.volumes if _unsafe(v.subject) or
                         _unsafe(v.session)})  # fmt: skip
        if unsafe:
            raise LayoutError(
                f"{self.label_table}: {len(unsafe)} subjects or sessions cannot name a folder "
                f"({brief_list([repr(s) for s in unsafe], 3)}): a subject or session has no / "
                "or \\, does not start with '.' and is not empty; rename them in the table."
            )
        pairs = collections.defaultdict(set)
        for v in self.volumes:
            pairs[v.scan_id].add(f"{v.subject} {v.session}")
        shared = sorted(f"{' and '.join(sorted(p))} -> {s}" for s, p in pairs.items() if len(p) > 1)
        if shared:
            raise LayoutError(
                f"{self.label_table}: {len(shared)} session IDs (<subject>_<session>) are "
                f"shared by two sessions ({brief_list(shared, 3)}); rename one in the table."
            )

    def skipped_counts(self) -> dict[str, int]:
        """How many were left out for each reason."""
        return {reason: len(items) for reason, items in self.skipped.items()}


def _unsafe(name: str) -> bool:
    """Whether a subject or session ID cannot be part of a folder's name."""
    return not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name
