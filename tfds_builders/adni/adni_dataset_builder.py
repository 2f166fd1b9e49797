"""Old path of `alz_jax.tfds_builders.mri_slices.builder`: this name is that module."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("..mri_slices.builder", __package__)
