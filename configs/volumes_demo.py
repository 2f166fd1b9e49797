"""CPU-sized volume demo: train on a synthetic Clinica CAPS cohort of 3D volumes (NC vs AD), then
evaluate on a synthetic OASIS-1 release in its Analyze form, a cohort the run never saw.

    python -m alz_jax.main --config=configs/volumes_demo.py --workdir=/tmp/alz_volumes
    python -m alz_jax.synthetic --layout=oasis1 --out=/tmp/oasis1_synthetic --seed=1 --subjects=120
    python -m alz_jax.evaluate --workdir=/tmp/alz_volumes --data.manual_dir=/tmp/oasis1_synthetic \
        --data.oasis_labels=binary
    make demo-volumes   # the three commands above, into .demo/volumes
    # the same on your own CAPS folder (t1-linear output and ClinicaDL's label TSV), with
    # ClinicaDL's slice range (8 at each end suits the synthetic volumes' 40 voxels, not 169):
    python -m alz_jax.main --config=configs/volumes_demo.py --workdir=/tmp/alz_caps \
        --config.data.manual_dir=CAPS_DIR --config.data.volume_discard=20 \
        [--config.data.labels_tsv=FILE]

Without manual_dir, generates a synthetic CAPS cohort under data_dir (160 subjects, 40x48x40
voxels at 1 mm, with a skull as t1-linear leaves it; CN, MCI and AD about 40/30/30%, a quarter
of the subjects with a second session; atrophy graded by diagnosis: larger ventricles, smaller
hippocampi, a thinner cortex). MCI sessions are left out and counted (NC vs AD). Each volume is
reoriented to RAS and cut into sagittal slices, 8 dropped at each end and every second kept (12
per session), clipped at its 0.5th and 99.5th intensity percentiles and stored at 64 px. Splits
are 70/15/15 by subject, stratified by diagnosis: a subject's sessions stay together. The model
is the stages demo's plain CNN and small-data recipe (configs/stages_demo.py), with two classes.
The OASIS-1 cohort is drawn with other heads, intensities (int16, about 0..1200), another voxel
order (LAS, Analyze) and skull-stripped images, and read with CDR 0 as NC and CDR 1 and 2 as AD
(CDR 0.5 and blank CDR left out, counted): the same slicing, the run's own calibration.
Measured on this project's 2-core CPU on 2026-12-05 (`make demo-volumes`, 1 min 43 s, training
64 s): subject balanced accuracy 0.850 on the CAPS test split (17 subjects), 0.500 on the
skull-stripped OASIS-1 release (ROC AUC 0.721: every subject called AD at the CAPS threshold) and
0.960 on its images with the skull (docs/volumes.md, "The demo, measured";
docs/demo/volumes/summary.md, which CI checks).
"""

import ml_collections

from alz_jax.configs import stages_demo


def get_config() -> ml_collections.ConfigDict:
    """Returns the volume demo: a plain CNN on sagittal slices of synthetic CAPS volumes."""
    config = stages_demo.get_config()
    config.data.synthetic_layout = "caps"
    config.data.synthetic_subjects = 160
    config.data.synthetic_difficulty = "standard"  # not read for volumes
    config.data.volume_axis = "sagittal"
    config.data.volume_discard = 8
    config.data.volume_step = 2
    config.data.volume_size = 64
    config.data.image_size = 64
    config.model.num_classes = 2
    config.optim.class_weights = "balanced"
    config.num_epochs = 15
    config.eval_every_epochs = 3
    config.eval.gradcam_scans = 2
    return config
