"""Old path of `alz_jax.tfds_builders.mri_slices.near_duplicates`: this name is that module."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("..mri_slices.near_duplicates", __package__)
