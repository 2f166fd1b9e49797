"""CPU-sized demo on the synthetic stand-in data set (no ADNI needed).

    python -m alz_jax.main --config=configs/demo.py --workdir=/tmp/alz_demo
    make demo   # the same, from a fresh virtualenv, with stage timings and an accuracy gate

Generates the synthetic AD_NC folder (seed 0; `--config.data.synthetic_seed=1` for another set)
under data_dir unless --config.data.manual_dir is given, builds it with the TFDS builder, trains a
small ConvNeXt (depths 1-1-3-1, dims 32-256) at 64 px for 5 epochs and evaluates the best
checkpoint on test. Expected on a 2-core CPU: see README.md ("The demo's result").
"""

import ml_collections

from alz_jax.configs import convnext_t


def get_config() -> ml_collections.ConfigDict:
    """Returns the demo config: the reference recipe shrunk to a CPU and synthetic data."""
    config = convnext_t.get_config()
    config.data.data_dir = ".demo/data"
    config.data.synthetic_seed = 0
    config.data.image_size = 64
    # Chosen with `python -m alz_jax.bench e2e` (README, "Performance"): one worker with a
    # 4-deep buffer waited 8% of the time; 2 workers compete with XLA for the 2 cores.
    config.data.num_workers = 1
    config.data.prefetch_buffer_size = 4
    config.data.eval_num_workers = 0

    # Random resized crop and horizontal flip only (the rest of the seed pipeline is off).
    for op in ("vflip", "rotate", "affine", "blur", "jitter", "noise", "erase"):
        config.augment[f"{op}_prob"] = 0.0

    config.mix.prob = 0.0  # no Mixup/CutMix

    config.model.size = ""
    config.model.depths = (1, 1, 3, 1)
    config.model.dims = (32, 64, 128, 256)
    config.model.drop_path_rate = 0.0

    config.optim.learning_rate = 2e-3
    config.batch_size = 64
    config.num_epochs = 5
    config.warmup_epochs = 1
    config.eval_every_epochs = 1
    config.log_every_steps = 20
    config.eval.tta = "hflip"  # trained with horizontal flips: report what averaging them does
    return config
