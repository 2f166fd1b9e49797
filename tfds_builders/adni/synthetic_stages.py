"""Old path of `tfds_builders.mri_slices.synthetic_stages`: this name is that module."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("tfds_builders.mri_slices.synthetic_stages")
