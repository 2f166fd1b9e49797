"""Fine-tuning an ImageNet ResNet-50 with its early layers frozen (the published ADNI transfer
recipe) at 224 px.

    python -m alz_jax.main --config=configs/resnet50_finetune.py --workdir=runs/resnet50 \
        --config.data.manual_dir=/path/to/adni \
        --config.model.init_from=torchvision:/path/to/resnet50-11ad3fa6.pth

Source weights: torchvision's resnet50 (IMAGENET1K_V2, resnet50-11ad3fa6.pth, read with torch's
weights_only loader, or the same state dict saved as .safetensors) or timm's resnet50.a1_in1k
('timm:PATH': the same key layout). The 7x7 RGB stem is summed to one channel and the fc layer
initialised for 2 classes.

Only the last stage (layer4) and the classifier train (optim.trainable = 'last_stage'; the rest
is frozen and has no optimizer state, and its BatchNorm layers keep their ImageNet running
statistics and normalise with them: optim.frozen_batchnorm = 'running', as timm's freeze).
The trained layers' BatchNorm statistics are the global batch's on any number of devices; SWA
weights get their statistics recomputed over the train split before validation.
AdamW peak lr 1e-3, weight decay 0.01, batch 128, 1 warmup epoch then cosine over 30 epochs,
label smoothing 0.1, no Mixup/CutMix. Expected time per epoch on a GPU: not measured (no
accelerator was available when the recipe was written); result: not measured.
"""

import ml_collections

from alz_jax.configs import convnext_t


def get_config() -> ml_collections.ConfigDict:
    """Returns the ResNet-50 partial fine-tuning recipe."""
    config = convnext_t.get_config()
    config.model.name = "resnet50"
    config.model.drop_path_rate = 0.0
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
