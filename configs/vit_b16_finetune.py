"""Fine-tuning ViT-B/16 pre-trained on ImageNet-21k (the published ADNI ViT recipe) at 224 px.

    python -m alz_jax.main --config=configs/vit_b16_finetune.py --workdir=runs/vit_b16 \
        --config.data.manual_dir=/path/to/adni \
        --config.model.init_from=huggingface:/path/to/vit-base-patch16-224-in21k/model.safetensors

Source weights: the Hugging Face model google/vit-base-patch16-224-in21k (its model.safetensors;
download it yourself, alz_jax downloads nothing). Its 16x16x3 patch embedding is summed to one
channel, its pooler is dropped and the classifier is initialised for 2 classes. timm weights
(vit_base_patch16_224.augreg_in21k, 'timm:PATH') work too: then set
--config.model.arch.norm_eps=1e-6 (timm's LayerNorm eps; Hugging Face's is 1e-12, set here).

AdamW peak lr 1e-4 with layer-wise decay 0.75 (12 blocks: the embeddings learn at 0.75^13 of
the head's rate), weight decay 0.05, batch 64, 2 warmup epochs then cosine over 30 epochs,
drop path 0.1, label smoothing 0.1, no Mixup/CutMix, EMA and SWA validated beside the raw
weights. Expected time per epoch on a GPU: not measured (no accelerator was available when the
recipe was written); result: not measured.
"""

import ml_collections

from alz_jax.configs import convnext_t


def get_config() -> ml_collections.ConfigDict:
    """Returns the ViT-B/16 fine-tuning recipe."""
    config = convnext_t.get_config()
    config.model.name = "vit_b16"
    config.model.arch = ml_collections.ConfigDict({"norm_eps": 1e-12})  # Hugging Face's
    config.model.drop_path_rate = 0.1
    config.optim.learning_rate = 1e-4
    config.optim.layer_decay = 0.75
    config.optim.weight_decay = 0.05
    config.batch_size = 64
    config.num_epochs = 30
    config.warmup_epochs = 2
    config.eval_every_epochs = 1
    config.mix.prob = 0.0
    config.ema.decay = 0.999
    config.eval.gradcam_scans = 0  # ViT classifies its class token: no Grad-CAM map
    return config
