"""The public face of the builder package: everything alz_jax (the data layer and the commands)
uses of it, under one module, so that the package's inside can move without its callers.

Layouts (the plug-in registry), the audit, the folder listing that fingerprints a build, the
split rules, the synthetic stand-ins and the TFDS builder. The builder's names (`Builder`,
`config_for`) are imported on first use (PEP 562): the rest needs neither TFDS nor TensorFlow.
"""

from __future__ import annotations

import importlib
import logging
import os

from . import audit, source, splits, synthetic, synthetic_stages
from .layouts import registry
from .layouts.base import (
    DataFolderError,
    ImageRecord,
    Layout,
    LayoutError,
    LayoutPlugin,
    SplitFolderError,
)
from .layouts.classes import STAGES, similar_class_names
from .volumes import audit as volume_audit
from .volumes import caps, nifti, oasis1
from .volumes import extraction as volume_extraction
from .volumes import synthetic as volume_synthetic
from .volumes.listing import VolumeListing
from .volumes.reading import VolumeError, VoxelSizeError
from .volumes.settings import VolumeSettings

# Also `Builder` and `config_for`, served by __getattr__.
__all__ = [
    "MANUAL_DOWNLOAD_INSTRUCTIONS",
    "NO_FOLDER_FRACTIONS",
    "PROTOCOLS",
    "STAGES",
    "SYNTHETIC_DIFFICULTIES",
    "SYNTHETIC_LAYOUTS",
    "DataFolderError",
    "ImageRecord",
    "Layout",
    "LayoutError",
    "LayoutPlugin",
    "SplitFolderError",
    "VolumeError",
    "VolumeListing",
    "VolumeSettings",
    "VoxelSizeError",
    "assign_protocol",
    "audit_folder",
    "audit_volumes",
    "cross_split_entry",
    "data_error_hint",
    "default_synthetic_subjects",
    "describe_changes",
    "describe_layout",
    "detect_layout",
    "folder_changes",
    "folder_fingerprint",
    "folder_listing",
    "format_audit",
    "format_missing_classes",
    "format_volume_audit",
    "generate_synthetic",
    "is_volume_layout",
    "layout_names",
    "list_volumes",
    "missing_classes_entry",
    "official_split_note",
    "parse_layout",
    "parse_slice_range",
    "register_layout",
    "similar_class_names",
    "slice_volumes",
    "synthetic_tag",
    "unregister_layout",
    "volume_folder_listing",
    "volume_workers",
]

# The volume layouts, registered after the 2D ones (they import the layouts package, which
# cannot import them back).
for _plugin in (caps.PLUGIN, oasis1.PLUGIN, nifti.PLUGIN):
    if _plugin.name not in registry.names():
        registry.register(_plugin)

# Layouts: the registry of plug-ins is the one list of them.
register_layout = registry.register
unregister_layout = registry.unregister
layout_names = registry.names
detect_layout = registry.detect
describe_layout = registry.describe
parse_layout = registry.parse
MANUAL_DOWNLOAD_INSTRUCTIONS = registry.MANUAL_DOWNLOAD_INSTRUCTIONS
# The one line under a data error: ADNI's origin and layout where ADNI is meant, else the docs.
data_error_hint = registry.hint

# Volume layouts: their volumes listed and labelled, sliced into a folder the build reads, and
# audited; the settings (axis, range, normalisation, size, labelling) and their checks.
is_volume_layout = registry.is_volume
list_volumes = registry.list_volumes
slice_volumes = volume_extraction.slice_volumes
audit_volumes = volume_extraction.audit_volumes
volume_workers = volume_extraction.auto_workers
format_volume_audit = volume_audit.format_table

# The audit of a parsed folder, and its text.
audit_folder = audit.run
format_audit = audit.format_table
cross_split_entry = audit.cross_split_entry
missing_classes_entry = audit.missing_classes_entry
format_missing_classes = audit.format_missing_classes

# What a build was made from.
folder_listing = source.listing
volume_folder_listing = source.with_volumes
folder_fingerprint = source.fingerprint
folder_changes = source.changes
describe_changes = source.describe

# Splits: the builder's and the load-time protocols'.
PROTOCOLS = splits.PROTOCOLS
NO_FOLDER_FRACTIONS = splits.NO_FOLDER_FRACTIONS
assign_protocol = splits.assign
official_split_note = splits.official_split_note
parse_slice_range = splits.parse_slice_range

# The synthetic stand-ins: 'adni' (AD vs NC), a four-stage collection in a layout, or a cohort
# of 3D volumes in a volume layout.
SYNTHETIC_LAYOUTS = ("adni", *synthetic_stages.LAYOUTS, *volume_synthetic.LAYOUTS)

_BUILDER_NAMES = frozenset({"Builder", "config_for"})


SYNTHETIC_DIFFICULTIES = tuple(synthetic_stages.DIFFICULTIES)


def synthetic_tag(
    layout: str, seed: int, train_subjects: int, test_subjects: int, subjects: int,
    difficulty: str = "standard",
) -> str:  # fmt: skip
    """The name of the synthetic set these settings produce (its folder is named after it)."""
    if layout == "adni":
        spec = synthetic.SyntheticSpec(train_subjects=train_subjects, test_subjects=test_subjects)
        return synthetic.tag(spec, seed)
    if layout in volume_synthetic.LAYOUTS:
        return volume_synthetic.tag(volume_synthetic.VolumeCohortSpec(subjects=subjects), seed,
                                    layout)  # fmt: skip
    return synthetic_stages.tag(synthetic_stages.spec_for(difficulty, subjects), seed, layout)


def default_synthetic_subjects(layout: str) -> int:
    """How many subjects a synthetic set of `layout` has unless told (a four-stage set's, or a
    volume cohort's; the AD_NC set counts train and test subjects apart)."""
    if layout in volume_synthetic.LAYOUTS:
        return volume_synthetic.VolumeCohortSpec.subjects
    return synthetic_stages.StagesSpec.subjects


def generate_synthetic(
    out_dir: str | os.PathLike, layout: str, seed: int, train_subjects: int,
    test_subjects: int, subjects: int, difficulty: str = "standard",
) -> dict:  # fmt: skip
    """Writes the synthetic set of `layout` under out_dir (a four-stage set of `difficulty`);
    returns what it wrote (counts)."""
    if layout == "adni":
        logging.info("Generating the synthetic AD_NC set (seed %d) in %s", seed, out_dir)
        spec = synthetic.SyntheticSpec(train_subjects=train_subjects, test_subjects=test_subjects)
        return synthetic.generate(out_dir, seed=seed, spec=spec)
    if layout in volume_synthetic.LAYOUTS:
        logging.info("Generating the synthetic %s cohort of 3D volumes (seed %d) in %s",
                     layout, seed, out_dir)  # fmt: skip
        spec = volume_synthetic.VolumeCohortSpec(subjects=subjects)
        return volume_synthetic.generate(out_dir, seed, layout, spec)
    logging.info("Generating the synthetic four-stage set, %s layout (seed %d), in %s",
                 layout, seed, out_dir)  # fmt: skip
    spec = synthetic_stages.spec_for(difficulty, subjects)
    return synthetic_stages.generate(out_dir, seed, spec, layout)


def __getattr__(name: str):
    """The TFDS builder's names, imported (with TFDS and TensorFlow) when first asked for."""
    if name in _BUILDER_NAMES:
        return getattr(importlib.import_module(".builder", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
