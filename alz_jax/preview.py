"""A look at what the model is fed: a grid of augmented (and mixed) training images.

    python -m alz_jax.preview --config=configs/convnext_t.py --out=grid.png [--config.x=y]

Writes the first training batch of the config (the batch step 0 trains on), up to --num images,
as one PNG, each tile captioned with its label or, when mixed, its AD target weight. Training
writes the same grid to TensorBoard (`train/augmented`) when it starts.
"""

from __future__ import annotations

import cv2
from absl import app, flags
from ml_collections import config_flags

from alz_jax.data import dataset, input_pipeline
from alz_jax.evaluation import figures
from alz_jax.host import logs
from alz_jax.host.errors import exit_on_user_error
from alz_jax.run import config_lib


def first_batch(config, data, total_steps: int) -> dict:
    """The per-process batch that training step 0 uses."""

    dataset = input_pipeline.train_dataset(
        data.source("train"), config, config.batch_size, seed=config.seed, total_steps=total_steps
    )
    iterator = iter(dataset)
    try:
        return next(iterator)
    finally:
        if hasattr(iterator, "close"):
            iterator.close()


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
    flags.DEFINE_string("out", "grid.png", "Where to write the PNG.")
    flags.DEFINE_integer("num", 32, "How many images.")
    flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    """Builds the data set if needed and writes the grid of step 0's batch."""
    del argv

    logs.setup()
    config = flags.FLAGS.config
    with exit_on_user_error():
        config_lib.validate(config)
        data = dataset.prepare(config.data)
        steps_per_epoch = max(1, data.num_examples("train") // config.batch_size)
        batch = first_batch(config, data, config_lib.num_train_steps(config, steps_per_epoch))
    grid = figures.image_grid(batch, flags.FLAGS.num)
    cv2.imwrite(flags.FLAGS.out, grid)
    print(f"wrote {flags.FLAGS.out}: {min(flags.FLAGS.num, len(batch['image']))} images")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
