"""The reference recipe on a dementia-stage collection: ConvNeXt-T from scratch at 224 px.

    python -m alz_jax.main --config=configs/stages_convnext_t.py --workdir=runs/stages_t \
        --config.data.manual_dir=/path/to/collection   # four-class folders, OASIS-1 or parquet

configs/convnext_t.py (AdamW lr 1e-3, weight decay 0.05, batch 512, warmup-cosine, drop path
0.1, label smoothing 0.1, Mixup/CutMix, EMA and SWA, bfloat16 on GPU/TPU) with four classes,
class-balanced loss weights and 100 epochs. The collection's layout is detected; where it has no
split folders (OASIS-1) it is split by subject 70/15/15. Mixup/CutMix groups of 64 need a
per-process batch divisible by 64. Expected time and result: not measured (no GPU was available
to this project when the recipe was written); the four-class folder set's published ~0.98 test
accuracy comes from an image-level split (docs/stages.md): expect far less on subject-disjoint
splits.
"""

import ml_collections

from alz_jax.configs import convnext_t


def get_config() -> ml_collections.ConfigDict:
    """Returns the ConvNeXt-T recipe for four dementia stages."""
    config = convnext_t.get_config()
    config.model.num_classes = 4
    config.optim.class_weights = "balanced"
    config.num_epochs = 100
    config.eval.gradcam_scans = 0  # Grad-CAM pictures are drawn for two classes only
    return config
