"""Command: write the synthetic stand-in for the ADNI AD_NC set (no ADNI needed).

    python -m alz_jax.synthetic --out=DIR [--seed=0] [--train_subjects=150] [--test_subjects=60]

Writes DIR/AD_NC/{train,test}/{AD,NC}/<scanID>_<slice>.jpeg and DIR/meta_data_with_label.json
(tfds_builders/adni/synthetic.py: brain-like phantoms with AD-like atrophy, deterministic by
seed) and prints the images, scans and subjects per split and class as one JSON line. Training
generates it by itself when data.synthetic_seed is set (configs/demo.py); this is for looking at
it, or for building it elsewhere.
"""

import json

from absl import flags

from alz_jax.host import command
from tfds_builders.adni import synthetic

_OUT = flags.DEFINE_string("out", None, "Folder to create (AD_NC/ goes inside).", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed: the same seed writes the same files.")
_TRAIN_SUBJECTS = flags.DEFINE_integer(
    "train_subjects", synthetic.SyntheticSpec.train_subjects, "Subjects in the train folder."
)
_TEST_SUBJECTS = flags.DEFINE_integer(
    "test_subjects", synthetic.SyntheticSpec.test_subjects, "Subjects in the test folder."
)


def main(argv: list[str]) -> None:
    """Generates the set and prints its summary."""
    del argv
    spec = synthetic.SyntheticSpec(
        train_subjects=_TRAIN_SUBJECTS.value, test_subjects=_TEST_SUBJECTS.value
    )
    print(json.dumps(synthetic.generate(_OUT.value, _SEED.value, spec)))


if __name__ == "__main__":
    command.run(main, jax_runtime=False)
