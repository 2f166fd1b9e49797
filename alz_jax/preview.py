"""Command: a look at what the model is fed, a grid of augmented (and mixed) training images.

    python -m alz_jax.preview --config=configs/convnext_t.py --out=grid.png [--config.x=y]

Writes the first training batch of the config (the batch step 0 trains on), up to --num images,
as one PNG, each tile captioned with its whole class name or, when mixed, its AD target weight
(with more classes, the two largest shares and their classes). Training writes the same grid to
TensorBoard (`train/augmented`) when it starts.
"""

import cv2
from absl import flags

from alz_jax.data import dataset
from alz_jax.evaluation import figures
from alz_jax.host import command
from alz_jax.run import specs, train

_CONFIG = command.define_config(help_string="Training config.")
_OUT = flags.DEFINE_string("out", "grid.png", "Where to write the PNG.")
_NUM = flags.DEFINE_integer("num", 32, "How many images.")


def _first_batch(run: specs.RunSpec, data: dataset.AdniData) -> dict:
    """The per-process batch that training step 0 uses."""
    iterator = iter(train.training_batches(run, run.plan_for(data), data, 0))
    try:
        return next(iterator)
    finally:
        if hasattr(iterator, "close"):
            iterator.close()


def main(argv: list[str]) -> None:
    """Builds the data set if needed and writes the grid of step 0's batch."""
    del argv
    run = specs.resolve(_CONFIG.value)
    data = dataset.prepare(run.data)
    batch = _first_batch(run, data)
    grid = figures.image_grid(train.shown_batch(batch), _NUM.value, class_names=data.class_names)
    cv2.imwrite(_OUT.value, grid)
    print(f"wrote {_OUT.value}: {min(_NUM.value, len(batch['image']))} images")


if __name__ == "__main__":
    command.run(main)
