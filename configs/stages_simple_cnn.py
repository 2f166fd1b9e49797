"""The plain-CNN baseline on the stages demo's data: configs/stages_demo.py's model, data, image
size, batch, learning rate and epochs with a plain recipe, the baseline the demo must beat.

    python -m alz_jax.main --config=configs/stages_simple_cnn.py --workdir=/tmp/alz_stages_cnn
    # beside the stages demo, on the same test subjects (both runs, then the comparison):
    make stages-compare
    python -m alz_jax.compare --workdirs=/tmp/alz_stages,/tmp/alz_stages_cnn
    # on your own collection, as configs/stages_demo.py:
    python -m alz_jax.main --config=configs/stages_simple_cnn.py --workdir=/tmp/alz_stages_cnn \
        --config.data.manual_dir=DIR [--config.data.data_dir=DIR2]

The model is the published baseline's shape, a four-layer CNN: four blocks of one 3x3
convolution with BatchNorm and ReLU and a 2x2 max pool (32-64-128-256 channels), global average
pooling and a linear classifier: 389,348 parameters for four classes, 0.116 GFLOPs per image at
64 px. The family's default of two convolutions per block (1,173,668 parameters; docs/models.md)
is `--config.model.arch.depths="(2, 2, 2, 2)"`. The recipe is the usual one of a script for a
small CNN from scratch: AdamW at 1e-3 with cosine decay, weight decay 1e-4, class-balanced loss
weights, random resized crops and horizontal flips, no label smoothing, no rotations, no
Mixup/CutMix, no EMA or SWA weights, the best epoch by validation loss. There are no pretrained
weights for this family (`model.init_from` is refused). Time and result, measured beside the
stages demo by `make stages-compare`: docs/demo/stages/compare.md.
"""

import ml_collections

from alz_jax.configs import stages_demo


def get_config() -> ml_collections.ConfigDict:
    """Returns the stages demo's model and data with a plain from-scratch recipe."""
    config = stages_demo.get_config()
    config.optim.label_smoothing = 0.0
    config.augment.rotate_prob = 0.0
    config.ema.enabled = False
    config.swa.enabled = False
    config.eval_every_epochs = 1
    return config
