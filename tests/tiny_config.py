"""A tiny training config for tests: the demo recipe shrunk to 32 px, a 4-block ConvNeXt and a
few steps, with every moving part on (augmentation, Mixup/CutMix, stochastic depth, noise, EMA,
SWA). Used in-process and by subprocess runs of `alz_jax.main` (--config=tests/tiny_config.py).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alz_jax.configs import demo

# End-to-end runs (tests/test_train.py, tests/test_multiprocess.py) override the model to 2 stages:
# half the compile time of 4. They compare a run only with the same model's runs (resumed, on 1
# or 2 processes: bitwise equal), or its predictions with its own report. Not the tests holding
# two step implementations within 1e-6 (test_steps): there, Adam turns last-bit gradient
# differences of the 2-stage model into 1e-3 ones by step 3.
TWO_STAGES = {"model.depths": (1, 1), "model.dims": (8, 16)}


def get_config():
    """The tiny test config; data folders are set by the caller."""
    config = demo.get_config()
    config.data.synthetic_seed = None
    config.data.image_size = 32
    config.data.num_workers = 0
    config.model.depths = (1, 1, 1, 1)
    config.model.dims = (8, 16, 32, 64)
    config.model.drop_path_rate = 0.1  # exercised, and must resume exactly
    # XLA's grouped conv compiles several times faster than the CPU default 'shift'; the two are
    # held equal (loss, gradients, a whole train step) in tests/test_depthwise.py.
    config.model.depthwise = "xla"
    config.augment.rotate_prob = 0.5
    config.augment.erase_prob = 0.25
    config.augment.noise_prob = 0.5
    config.mix.prob = 1.0  # Mixup/CutMix over the first half, fading by 75%
    config.mix.group_size = 8
    config.batch_size = 16
    config.num_train_steps = 6
    config.warmup_steps = 2
    config.eval_every_steps = 2
    config.log_every_steps = 2
    config.swa.start_fraction = 0.5
    config.swa.every_steps = 1
    # Reports: cheaper than the demo's (the end-to-end test turns TTA and Grad-CAM back on).
    config.eval.tta = ""
    config.eval.gradcam_scans = 0
    config.eval.bootstrap_samples = 200
    return config


def two_step_config(manual_dir, data_dir):
    """The tiny config trained for 2 steps with the 2-stage model on `manual_dir` (TFDS build
    in `data_dir`), without SWA: a run to evaluate, quickly (tests of evaluation elsewhere)."""
    config = get_config()
    config.data.manual_dir = str(manual_dir)
    config.data.data_dir = str(data_dir)
    config.model.depths = TWO_STAGES["model.depths"]
    config.model.dims = TWO_STAGES["model.dims"]
    config.num_train_steps, config.warmup_steps, config.eval_every_steps = 2, 1, 2
    config.swa.enabled = False
    config.eval.bootstrap_samples = 50
    return config


def override(config, overrides: dict):
    """`config` with each 'a.b.c': value of `overrides` set (as --config.a.b.c=value would)."""
    for key, value in overrides.items():
        node = config
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return config
