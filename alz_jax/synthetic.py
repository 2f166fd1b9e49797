"""Command: write a synthetic stand-in data set (no ADNI, no download needed).

    python -m alz_jax.synthetic --out=DIR [--seed=0] [--train_subjects=150] [--test_subjects=60]
    python -m alz_jax.synthetic --out=DIR --layout=oasis|folders|parquet [--subjects=160] \
        [--difficulty=standard|hard]
    python -m alz_jax.synthetic --out=DIR --layout=caps|oasis1|nifti [--subjects=48]

The first writes DIR/AD_NC/{train,test}/{AD,NC}/<scanID>_<slice>.jpeg and
DIR/meta_data_with_label.json (tfds_builders/mri_slices/synthetic.py: brain-like phantoms with
AD-like atrophy); the second a four-stage set in a public collection's layout
(tfds_builders/mri_slices/synthetic_stages.py); the third a cohort of small 3D volumes with
atrophy graded by stage, as Clinica's CAPS, the OASIS-1 release or NIfTI files with a table
(tfds_builders/mri_slices/volumes/synthetic.py). Deterministic by seed; prints the counts per split
and class as one JSON line. Training generates them by itself when data.synthetic_seed is set
(configs/demo.py, configs/stages_demo.py); this is for looking at them, or building elsewhere.
"""

import json

from absl import flags

from alz_jax.host import command
from alz_jax.tfds_builders.mri_slices import api as slices
from alz_jax.tfds_builders.mri_slices import synthetic, synthetic_stages

_OUT = flags.DEFINE_string("out", None, "Folder to create (AD_NC/ goes inside).", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed: the same seed writes the same files.")
_TRAIN_SUBJECTS = flags.DEFINE_integer(
    "train_subjects", synthetic.SyntheticSpec.train_subjects, "Subjects in the train folder."
)
_TEST_SUBJECTS = flags.DEFINE_integer(
    "test_subjects", synthetic.SyntheticSpec.test_subjects, "Subjects in the test folder."
)
_LAYOUT = flags.DEFINE_enum(
    "layout",
    "adni",
    slices.SYNTHETIC_LAYOUTS,
    "adni (AD vs NC); four stages: folders, oasis or parquet; 3D volumes: caps, oasis1, nifti.",
)
_SUBJECTS = flags.DEFINE_integer(
    "subjects", None,
    f"Subjects of a four-stage set (default {slices.default_synthetic_subjects('oasis')}) or a "
    f"volume cohort (default {slices.default_synthetic_subjects('caps')}).",
)  # fmt: skip
_DIFFICULTY = flags.DEFINE_enum(
    "difficulty",
    "standard",
    tuple(synthetic_stages.DIFFICULTIES),
    "A four-stage set's difficulty: hard has closer stages and more anatomy between subjects.",
)


def main(argv: list[str]) -> None:
    """Generates the set and prints its summary."""
    del argv
    subjects = _SUBJECTS.value or slices.default_synthetic_subjects(_LAYOUT.value)
    summary = slices.generate_synthetic(
        _OUT.value, _LAYOUT.value, _SEED.value, _TRAIN_SUBJECTS.value, _TEST_SUBJECTS.value,
        subjects, _DIFFICULTY.value,
    )  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    command.run(main, jax_runtime=False)
