"""Old name of `alz_jax.tfds_builders.mri_slices`, kept so that old imports keep working
(docs/data.md).

`alz_jax.tfds_builders.adni.<module>` is the module of the same name in
`alz_jax.tfds_builders.mri_slices`
(`adni_dataset_builder` is `builder`); `layout` and `stages` re-export the names they had, from
the layout plug-ins and the split rules. New code imports `alz_jax.tfds_builders.mri_slices.api`.
"""

from __future__ import annotations

import importlib

__all__ = ["Builder", "config_for"]

_BUILDER_NAMES = frozenset({"Builder", "config_for", "make_config", "config_name", "AdniConfig"})


def __getattr__(name: str):
    """The builder's names and module, imported (with TFDS) when first asked for."""
    if name == "adni_dataset_builder" or name in _BUILDER_NAMES:
        module = importlib.import_module("..mri_slices.builder", __package__)
        return module if name == "adni_dataset_builder" else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
