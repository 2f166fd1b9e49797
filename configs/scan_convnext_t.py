"""The accelerator recipe of a scan model: ConvNeXt-T encoding every slice of a scan (ADNI's 20),
pooled by gated attention.

    python -m alz_jax.main --config=configs/scan_convnext_t.py --workdir=runs/scan_convnext_t \
        --config.data.manual_dir=/path/to/adni
    # the encoder from a trained slice run (configs/convnext_t.py) instead of from scratch:
    ... --config.model.init_from=run:runs/convnext_t --config.optim.learning_rate=2e-4

The reference recipe (configs/convnext_t.py) with a global batch of 24 bags of all of a scan's
slices (data.bag_size 0: 480 images per step on ADNI, near the slice recipe's 512), gradient
checkpointing of the encoder (model.remat) so that the activations of 480 images fit an
accelerator's memory, and no Mixup/CutMix (mix.prob 0). An epoch of scans with every slice is
an epoch of the slices: 400 epochs, as the slice recipe.
Expected: not measured on an accelerator yet; docs/scan_models.md gives the CPU comparison and
the cost of a bag step against a slice step (`python -m alz_jax.bench step --bag_size=...`).
"""

import ml_collections

from alz_jax.configs import convnext_t


def get_config() -> ml_collections.ConfigDict:
    """Returns the accelerator scan recipe: ConvNeXt-T + attention pooling over whole scans."""
    config = convnext_t.get_config()
    config.model.aggregator = "attention"
    config.model.remat = True
    config.data.bag_size = 0  # every slice of the scan
    config.batch_size = 24  # bags
    config.mix.prob = 0.0
    return config
