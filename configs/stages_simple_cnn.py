"""The four-stage demo with the plain-CNN baseline (`model.name = 'simple_cnn'`) in place of the
demo's ConvNeXt, trained from scratch with a plain recipe: the baseline to compare against.

    python -m alz_jax.main --config=configs/stages_simple_cnn.py --workdir=/tmp/alz_stages_cnn
    # beside the stages demo, on the same test subjects:
    python -m alz_jax.compare --workdirs=/tmp/alz_stages,/tmp/alz_stages_cnn
    # on your own collection, as configs/stages_demo.py:
    python -m alz_jax.main --config=configs/stages_simple_cnn.py --workdir=/tmp/alz_stages_cnn \
        --config.data.manual_dir=DIR [--config.data.data_dir=DIR2]

Data, image size (64 px), batch, epochs (15), augmentation (random resized crop and horizontal
flip) and class-balanced loss weights are configs/stages_demo.py's. The model is the published
baseline's shape, a four-layer CNN: four blocks of one 3x3 convolution with BatchNorm and ReLU
and a 2x2 max pool (32-64-128-256 channels), global average pooling and a linear classifier:
389,348 parameters for four classes, 0.116 GFLOPs per image at 64 px. The family's default of
two convolutions per block (1,173,668 parameters, 0.42 GFLOPs at 64 px; docs/models.md) takes
about 4x the CPU time per step (`python -m alz_jax.bench step`, 64 px, batch 64); set
`--config.model.arch.depths="(2, 2, 2, 2)"` for it. The recipe is the usual one for a small CNN
from scratch: AdamW at 1e-3 with cosine decay and weight decay 1e-4, no label smoothing, no
Mixup/CutMix, no drop path, no EMA or SWA weights. There are no pretrained weights for this
family (`model.init_from` is refused). Time and result: measured in docs/stages.md.
"""

import ml_collections

from configs import stages_demo


def get_config() -> ml_collections.ConfigDict:
    """Returns the stages demo with the plain CNN and a from-scratch recipe."""
    config = stages_demo.get_config()
    config.model.name = "simple_cnn"
    # Channels and 3x3 convolutions per block: one per block fits the CPU budget (docstring).
    config.model.arch = ml_collections.ConfigDict(
        {"dims": (32, 64, 128, 256), "depths": (1, 1, 1, 1)}
    )
    # ConvNeXt's size fields: not read for simple_cnn, emptied so the config says one thing.
    config.model.size = ""
    config.model.depths = ()
    config.model.dims = ()
    config.model.drop_path_rate = 0.0
    config.model.head_dropout = 0.0

    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 1e-4
    config.optim.label_smoothing = 0.0
    config.mix.prob = 0.0
    config.ema.enabled = False
    config.swa.enabled = False
    return config
