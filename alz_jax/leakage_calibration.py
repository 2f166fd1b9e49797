"""Command: calibrate the cross-split near-duplicate check on phantoms of known subjects.

    python -m alz_jax.leakage_calibration [--seed=0] [--subjects=60] [--splits=10]

Renders brain-like phantom scans (tfds_builders/mri_slices/synthetic.py; half of the slices resized
to Kaggle's 176x208), splits them by image and by subject, and prints how alike each test image's
best train image is in both cases, the threshold that separates them, the flag rates at
DEFAULT_THRESHOLD (also after intensity changes, a small misregistration, for a second visit of each
subject and for an aligned set), as a table and then as one JSON object. CPU only, about 20 s. The
method and the measured numbers: docs/leakage.md.
"""

import json

from absl import flags

from alz_jax.host import command
from alz_jax.tfds_builders.mri_slices import near_duplicates

_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the phantom set and the splits.")
_SUBJECTS = flags.DEFINE_integer("subjects", 60, "Phantom subjects (one scan of 20 slices each).")
_SPLITS = flags.DEFINE_integer("splits", 10, "Random splits of each kind, pooled.")


def main(argv: list[str]) -> None:
    """Runs the calibration and prints it."""
    del argv
    report = near_duplicates.calibrate(
        seed=_SEED.value, subjects=_SUBJECTS.value, splits=_SPLITS.value
    )
    print(near_duplicates.format_table(report))
    print(json.dumps(report))


if __name__ == "__main__":
    command.run(main, jax_runtime=False)
