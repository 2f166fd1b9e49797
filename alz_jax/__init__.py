"""alz_jax: JAX/Flax training of ConvNeXt on ADNI AD/NC MRI slices."""

import os

# TensorFlow (imported by TFDS and CLU's writer) is only a file-format library here: silence its
# C++ start-up banner, also in the Grain worker processes that inherit the environment.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its banner ignores the level above
