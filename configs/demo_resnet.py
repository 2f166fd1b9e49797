"""The CPU demo with a small ResNet (BatchNorm) in place of the demo's ConvNeXt, to compare the two.

    python -m alz_jax.main --config=configs/demo_resnet.py --workdir=runs/demo_resnet
    python -m alz_jax.compare --workdirs=.demo/workdir,runs/demo_resnet   # after `make demo`

Same synthetic data, 64 px images, recipe and 5 epochs as configs/demo.py; the model is a
bottleneck ResNet of depths 1-1-2-1, widths 16-32-64-128 and a 16-channel stem (576k
parameters), with BatchNorm statistics of the global batch, EMA of the running statistics and
SWA statistics recomputed before each validation. Expected (measured on a 2-core CPU,
2026-11-30): 2.5 min; test slice accuracy 0.978, scan 0.980, subject 1.000 (60 subjects).
docs/demo/compare.md is its comparison with the demo ConvNeXt.
"""

import ml_collections

from alz_jax.configs import demo


def get_config() -> ml_collections.ConfigDict:
    """Returns the demo recipe with a small ResNet."""
    config = demo.get_config()
    config.model.name = "resnet50"
    config.model.arch = ml_collections.ConfigDict(
        {"depths": (1, 1, 2, 1), "widths": (16, 32, 64, 128), "stem_width": 16}
    )
    return config
