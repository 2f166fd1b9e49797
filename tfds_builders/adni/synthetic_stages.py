"""Old path of `alz_jax.tfds_builders.mri_slices.synthetic_stages`: this name is that module."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("..mri_slices.synthetic_stages", __package__)
