"""Fine-tuning an ImageNet EfficientNet-B0 with its early layers frozen (the published ADNI
transfer recipe) at 224 px.

    python -m alz_jax.main --config=configs/efficientnet_b0_finetune.py \
        --workdir=runs/efficientnet_b0 --config.data.manual_dir=/path/to/adni \
        --config.model.init_from=timm:/path/to/efficientnet_b0.ra_in1k/model.safetensors

Source weights: timm's efficientnet_b0 (efficientnet_b0.ra_in1k model.safetensors; download it
yourself). The 3x3 RGB stem is summed to one channel and the classifier initialised for 2
classes.

The last stages (from the last stride-2 stage on), the head convolution and the classifier
train (optim.trainable = 'last_stage'); the rest is frozen and has no optimizer state. Drop
connect 0.2 and classifier dropout 0.2 (model.head_dropout) as timm's B0 recipe. BatchNorm and
SWA as in configs/resnet50_finetune.py. AdamW peak lr 1e-3, weight decay 0.01, batch 128, 1
warmup epoch then cosine over 30 epochs, label smoothing 0.1, no Mixup/CutMix. Expected time
per epoch on a GPU: not measured (no accelerator was available when the recipe was written);
result: not measured.
"""

import ml_collections

from alz_jax.configs import convnext_t


def get_config() -> ml_collections.ConfigDict:
    """Returns the EfficientNet-B0 partial fine-tuning recipe."""
    config = convnext_t.get_config()
    config.model.name = "efficientnet_b0"
    config.model.drop_path_rate = 0.2
    config.model.head_dropout = 0.2
    config.optim.trainable = "last_stage"
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.01
    config.batch_size = 128
    config.num_epochs = 30
    config.warmup_epochs = 1
    config.eval_every_epochs = 1
    config.mix.prob = 0.0
    config.ema.decay = 0.999
    return config
