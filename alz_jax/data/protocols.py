"""The evaluation protocols (`official`, `resplit`, `kfold`) and the slice window, computed at
load time from the stored subject IDs.

Every split decision, the builder's included, lives in `tfds_builders/mri_slices/splits.py`;
this module names its load-time half for the data layer.
"""

from __future__ import annotations

from alz_jax.tfds_builders.mri_slices.splits import (
    PROTOCOLS,
    assign,
    common_slice_window,
    fold_of_subject,
    parse_slice_range,
    split_by_subject,
    subject_strata,
)

__all__ = [
    "PROTOCOLS",
    "assign",
    "common_slice_window",
    "fold_of_subject",
    "parse_slice_range",
    "split_by_subject",
    "subject_strata",
]
