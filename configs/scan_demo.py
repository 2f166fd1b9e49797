"""CPU-sized scan-model demo: attention pooling over bags of a scan's slices, on the synthetic
AD_NC stand-in (no ADNI needed).

    python -m alz_jax.main --config=configs/scan_demo.py --workdir=/tmp/alz_scan
    # the same model with mean pooling, or the transformer over the slices:
    python -m alz_jax.main --config=configs/scan_demo.py --workdir=/tmp/alz_scan_mean \
        --config.model.aggregator=mean

The demo's model (configs/demo.py: a small ConvNeXt at 64 px) encodes every slice of a bag with
shared weights; gated attention (Ilse et al. 2018) pools the slice embeddings into one
prediction per scan. A training bag is 8 slices drawn from one scan each step (a seeded draw);
8 bags per step make 64 images, the demo's batch, and the run sees as many images as the demo
(12.5 epochs of 8 of each scan's 20 slices are the demo's 5 epochs of slices). Evaluation reads
every slice of each scan. The report
puts the bag model beside the slice model it contains, averaged over a scan's slices and
soft-voted with each slice position's validation accuracy (ClinicaDL), with paired intervals.
Measured on this project's 2-core CPU on 2026-12-05 (`make demo-scan`): training 107 s (mean
pooling 98 s); test subject balanced accuracy 0.776 [0.685, 0.862] (mean pooling 0.847), below
the demo's slice model's 0.966 at equal images seen: a loss, docs/scan_models.md ("The
comparison, measured"; docs/demo/scan/compare.md, which CI checks).
"""

import ml_collections

from alz_jax.configs import demo


def get_config() -> ml_collections.ConfigDict:
    """Returns the scan demo: the demo's ConvNeXt as the encoder of an attention-pooling model."""
    config = demo.get_config()
    config.model.aggregator = "attention"
    config.data.bag_size = 8
    config.batch_size = 8  # bags: 8 x 8 = 64 images per step, as the demo
    # An epoch of scans is 8 of each scan's 20 slices: 2.5 of them see as many images as one
    # epoch of the demo's slices, so 12.5 epochs match its 5 (its warmup and validations too).
    for key, epochs in (("num_epochs", 12.5), ("warmup_epochs", 2.5), ("eval_every_epochs", 2.5)):
        del config[key]  # whole epochs in the base config; fractions of them here
        config[key] = epochs
    config.eval.tta = ""
    return config
