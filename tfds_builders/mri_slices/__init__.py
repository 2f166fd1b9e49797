"""The TFDS builder of 2D MRI slice collections (TFDS name `adni`), with subject-aware splits,
its layout plug-ins (`layouts`), split rules (`splits`), audit and synthetic stand-ins.

`api` is the package's public face: what alz_jax imports. The builder (`Builder`,
`config_for`, the module `builder`) is imported on first use (PEP 562): the layouts, `source`,
`synthetic` and `audit` need neither TFDS nor TensorFlow, and the training core imports
`layouts.base` (its LayoutError) on hosts that have neither.
"""

from __future__ import annotations

import importlib

__all__ = ["Builder", "config_for"]

# Names served by the TFDS builder module, which imports TFDS (and, with it, TensorFlow).
_BUILDER_NAMES = frozenset({"Builder", "config_for", "make_config", "config_name", "AdniConfig"})
_BUILDER_MODULE = "alz_jax.tfds_builders.mri_slices.builder"


def __getattr__(name: str):
    """The builder's names and the builder module itself, imported when first asked for."""
    if name == "builder" or name in _BUILDER_NAMES:
        module = importlib.import_module(_BUILDER_MODULE)
        return module if name == "builder" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The package's names, the lazily imported ones included."""
    return sorted({*globals(), *_BUILDER_NAMES, "builder"})
