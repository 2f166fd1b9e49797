"""CPU-sized four-stage demo: dementia stages (NonDemented < VeryMild < Mild < Moderate).

    python -m alz_jax.main --config=configs/stages_demo.py --workdir=/tmp/alz_stages
    # the same on your own collection (four-class folders, OASIS-1 export or parquet files):
    python -m alz_jax.main --config=configs/stages_demo.py --workdir=/tmp/alz_stages \
        --config.data.manual_dir=DIR [--config.data.data_dir=DIR2]

Without manual_dir, generates the synthetic four-stage set in the OASIS-1 layout (200 subjects x
24 slices, imbalanced like OASIS-1: 45/25/18/12% of subjects per stage; seed 0) under data_dir,
splits it by subject 70/15/15 stratified by stage (no split folders: the default), and trains
the demo's small ConvNeXt (depths 1-1-3-1, dims 32-256) at 64 px for 15 epochs with
class-balanced loss weights. The report has the 4x4 confusion matrix, per-class
precision/recall/F1, macro F1, quadratic kappa and subject-bootstrap intervals.
`--config.data.synthetic_layout=folders` (or parquet) generates the image-split four-class
layout instead: its report then warns that test shares brains with train. Expected on a 2-core
CPU (measured 2026-11-30, `make stages-demo`): 3.5 minutes; subject accuracy 0.90 [0.77, 1.00]
on 31 test subjects, quadratic kappa 0.95 (docs/stages.md).
"""

import ml_collections

from configs import demo


def get_config() -> ml_collections.ConfigDict:
    """Returns the stages demo: the demo's model and recipe on four classes."""
    config = demo.get_config()
    config.data.synthetic_layout = "oasis"
    config.data.synthetic_subjects = 200
    config.model.num_classes = 4
    # The OASIS studies weight the loss by inverse class frequency (Moderate is rare).
    config.optim.class_weights = "balanced"
    config.num_epochs = 15
    config.warmup_epochs = 1
    config.eval.gradcam_scans = 0  # Grad-CAM pictures are drawn for two classes only
    return config
