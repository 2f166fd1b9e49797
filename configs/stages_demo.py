"""CPU-sized four-stage demo: dementia stages (NonDemented < VeryMild < Mild < Moderate) on a
small, hard collection, with the small-data recipe.

    python -m alz_jax.main --config=configs/stages_demo.py --workdir=/tmp/alz_stages
    make stages-compare   # this demo and the plain-CNN baseline on the same set, compared
    # the same on your own collection (four-class folders, OASIS-1 export or parquet files):
    python -m alz_jax.main --config=configs/stages_demo.py --workdir=/tmp/alz_stages \
        --config.data.manual_dir=DIR [--config.data.data_dir=DIR2]

Without manual_dir, generates the hard synthetic four-stage set in the OASIS-1 layout (160
subjects x 24 slices, imbalanced like OASIS-1: 45/25/18/12% of subjects per stage; neighbouring
stages close and twice the standard set's between-subject anatomy; seed 0) under data_dir,
splits it by subject 70/15/15 stratified by stage, and trains a plain CNN from scratch (four
blocks of 3x3 convolution, BatchNorm, ReLU and 2x2 max pool, 32-64-128-256 channels: 389k
parameters) at 64 px for 15 epochs with class-balanced loss weights, EMA and SWA weights, label
smoothing 0.1 and rotations of up to 10 degrees, validating every 3 epochs. docs/stages.md ("What
the recipe changes for small data") says why; `configs/stages_simple_cnn.py` is the same model
with a plain recipe, the baseline this one must beat. Time and result, measured beside the
baseline by `make stages-compare`: docs/demo/stages/compare.md.
"""

import ml_collections

from alz_jax.configs import demo


def get_config() -> ml_collections.ConfigDict:
    """Returns the stages demo: a plain CNN with the small-data recipe, on four classes."""
    config = demo.get_config()
    config.data.synthetic_layout = "oasis"
    config.data.synthetic_subjects = 160
    config.data.synthetic_difficulty = "hard"

    # On small collections from scratch, the demo's ConvNeXt (a 4x4 patchify stem, LayerNorm)
    # lost to a plain BatchNorm CNN at 64 and 128 px within the CPU budget (docs/stages.md).
    config.model.name = "simple_cnn"
    config.model.arch = ml_collections.ConfigDict(
        {"dims": (32, 64, 128, 256), "depths": (1, 1, 1, 1)}
    )
    # ConvNeXt's size fields: not read for simple_cnn, emptied so that the config says one thing.
    config.model.size = ""
    config.model.depths = ()
    config.model.dims = ()
    config.model.drop_path_rate = 0.0  # no residual branches to drop
    config.model.head_dropout = 0.0
    config.model.num_classes = 4

    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 1e-4
    # The OASIS studies weight the loss by inverse class frequency (Moderate is rare).
    config.optim.class_weights = "balanced"
    config.optim.label_smoothing = 0.1
    config.augment.rotate_prob = 1.0
    config.augment.rotate_deg = 10.0
    config.mix.prob = 0.0  # Mixup/CutMix: off (with 112 train subjects they blur the stages)
    # EMA and SWA weights (the demo's) average out the noise of a few hundred steps; validating
    # every 3 epochs gives the best-checkpoint choice 5 looks instead of 15 at a validation
    # split of about 24 subjects, whose loss moves more between epochs than the models differ.
    config.ema.enabled = True
    config.swa.enabled = True
    config.num_epochs = 15
    config.warmup_epochs = 1
    config.eval_every_epochs = 3
    config.eval.gradcam_scans = 0  # Grad-CAM pictures are drawn for two classes only
    return config
