"""Old path of `tfds_builders.mri_slices.builder`: this name is that module."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("tfds_builders.mri_slices.builder")
