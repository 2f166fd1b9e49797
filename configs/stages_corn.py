"""The stages demo with an ordinal head: configs/stages_demo.py's model, data and recipe with a
CORN head (Shi, Cao and Raschka 2021) in place of softmax, so that a mistake of two stages costs
more than one of a single stage.

    python -m alz_jax.main --config=configs/stages_corn.py --workdir=/tmp/alz_stages_corn
    # beside the softmax stages demo and the plain-CNN baseline, on the same test subjects:
    make stages-compare

CORN trains K - 1 conditional binary tasks, P(stage > k | stage > k - 1), whose running product
is P(stage > k): the class probabilities are consistent with the stage order by construction.
The call is the median stage (the first whose cumulative probability reaches 1/2). The report
adds MAE in stages, accuracy within one stage and the kappas, and prediction sets that are
ranges of stages (docs/uncertainty.md). Time and result, measured beside the softmax demo by
`make stages-compare`: docs/demo/stages/compare.md.
"""

import ml_collections

from alz_jax.configs import stages_demo


def get_config() -> ml_collections.ConfigDict:
    """Returns the stages demo with a CORN ordinal head."""
    config = stages_demo.get_config()
    config.model.head = "corn"
    return config
