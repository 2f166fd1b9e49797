"""alz_jax: JAX/Flax training of ConvNeXt on ADNI AD/NC MRI slices."""

import glob
import os
from pathlib import Path

# configs/ and tfds_builders/ sit beside this package in the repository and install inside it
# (alz_jax.configs, alz_jax.tfds_builders: pyproject.toml's package-dir). Run from a source
# checkout that was not installed, they are found beside it; this folder comes first, so none
# of its own modules can be shadowed.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "configs" / "__init__.py").is_file() and (_CHECKOUT / "pyproject.toml").is_file():
    __path__.append(str(_CHECKOUT))


def _cpu_only_host() -> bool:
    """No GPU or TPU device files (or JAX_PLATFORMS=cpu): XLA runs on the CPU."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return True
    return not any(
        glob.glob(p) for p in ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")
    )


# The C++ log level is read once, when jaxlib and TensorFlow load: set before either is imported.
# TensorFlow (imported by TFDS and the metric writer) is only a file-format library here: its
# C++ start-up banner is silenced, also in the Grain worker processes that inherit the
# environment. On a CPU-only host, XLA also logs a spurious ERROR of ~1,700 characters each time
# it loads a program from the persistent compilation cache (openxla/xla#44565: LLVM tuning flags
# such as +prefer-no-gather are counted as CPU features the host lacks; the program loads and
# runs, compile 8.2 s -> 0.65 s measured here), so there C++ ERRORs are silenced too; fatal
# errors still print, and Python exceptions are unaffected. Set TF_CPP_MIN_LOG_LEVEL yourself
# (e.g. 0) to see everything.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if _cpu_only_host() else "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # its banner ignores the level above
