"""Old home of the ADNI parser and the split rules: their names, from where they live now
(`layouts.adni`, `layouts.base`, `layouts.classes`, `splits`)."""

from ..mri_slices.layouts.adni import (
    CLASS_FOLDERS,
    CLASS_NAMES,
    FILE_PATTERN,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    LABEL_ALIASES,
    METADATA_JSON,
    SPLIT_FOLDERS,
    SUBJECT_PATTERN,
    SUBJECTS_CSV,
    SubjectFile,
    find_root,
    label_conflicts,
    load_subjects,
    parse,
    parse_file_name,
    scan_images,
)
from ..mri_slices.layouts.base import (
    IMAGE_SUFFIXES,
    LIST_LIMIT,
    ImageRecord,
    Layout,
    LayoutError,
    brief_list,
)
from ..mri_slices.layouts.classes import canonical_label
from ..mri_slices.splits import (
    majority_label,
    split_subjects,
    stratum_labels,
    stratum_members,
    subject_labels,
    validation_subjects,
)

__all__ = [
    "CLASS_FOLDERS", "CLASS_NAMES", "FILE_PATTERN", "IMAGE_HEIGHT", "IMAGE_SUFFIXES",
    "IMAGE_WIDTH", "LABEL_ALIASES", "LIST_LIMIT", "METADATA_JSON", "SPLIT_FOLDERS",
    "SUBJECTS_CSV", "SUBJECT_PATTERN", "ImageRecord", "Layout", "LayoutError", "SubjectFile",
    "brief_list", "canonical_label", "find_root", "label_conflicts", "load_subjects",
    "majority_label", "parse", "parse_file_name", "scan_images", "split_subjects",
    "stratum_labels", "stratum_members", "subject_labels", "validation_subjects",
]  # fmt: skip
