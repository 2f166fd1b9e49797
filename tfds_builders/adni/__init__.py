"""The `adni` TFDS builder: ADNI AD_NC slices with subject-aware splits (manual download).

The builder (`Builder`, `config_for`, the module `adni_dataset_builder`) is imported on first
use (PEP 562): `layout`, `source`, `synthetic` and `audit` need neither TFDS nor TensorFlow, and
the training core imports `layout` (its LayoutError) on hosts that have neither.
"""

from __future__ import annotations

import importlib

__all__ = ["Builder", "config_for"]

# Names served by the TFDS builder module, which imports TFDS (and, with it, TensorFlow).
_BUILDER_NAMES = frozenset({"Builder", "config_for", "make_config", "config_name", "AdniConfig"})


def __getattr__(name: str):
    """The builder's names and the builder module itself, imported when first asked for."""
    if name == "adni_dataset_builder" or name in _BUILDER_NAMES:
        module = importlib.import_module("tfds_builders.adni.adni_dataset_builder")
        return module if name == "adni_dataset_builder" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The package's names, the lazily imported ones included."""
    return sorted({*globals(), *_BUILDER_NAMES, "adni_dataset_builder"})
