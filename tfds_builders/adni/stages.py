"""Old home of the layouts besides ADNI and of "auto" detection: their names, from where they
live now (`layouts.registry`, `layouts.classes`, `layouts.oasis`, `layouts.base`)."""

from ..mri_slices.layouts.base import SPLIT_ALIASES
from ..mri_slices.layouts.classes import (
    STAGE_ALIASES,
    STAGES,
    class_order,
    stage_of,
)
from ..mri_slices.layouts.oasis import OASIS_PATTERN
from ..mri_slices.layouts.registry import describe, detect, names, parse

__all__ = [
    "OASIS_PATTERN", "SPLIT_ALIASES", "STAGES", "STAGE_ALIASES", "class_order",
    "describe", "detect", "parse", "stage_of",
]  # fmt: skip


def __getattr__(name: str):
    """`LAYOUTS`: the registry's names now (a plug-in registered since included)."""
    if name == "LAYOUTS":
        return names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
