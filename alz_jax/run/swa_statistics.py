"""BatchNorm statistics for SWA weights: a pass over the training images before the SWA weights
are evaluated, as `torch.optim.swa_utils.update_bn` after `AveragedModel`.

Averaged parameters don't go with any model's running statistics, so the SWA average keeps only
parameters, and before each validation of SWA weights (and so before every checkpoint that
may select them) the statistics are recomputed: the mean, over the train split's whole global
batches in evaluation preprocessing (no augmentation, in record order), of each BatchNorm's
training-mode batch mean and unbiased variance. The train state records the SWA update count
they were computed at (`swa_stats_count`), so a checkpoint saved without them (a preemption
save) is refused for SWA evaluation rather than evaluated with stale statistics.
"""

from __future__ import annotations

import logging
import time

import jax
import numpy as np

from alz_jax.core import sharding, steps
from alz_jax.data import input_pipeline
from alz_jax.data.pipeline_spec import PipelineSpec


def needs_refresh(state: steps.TrainState) -> bool:
    """Whether the state's SWA weights have BatchNorm statistics older than their last update."""
    return "swa_stats_count" in state and int(state["swa_stats_count"]) != int(state["swa_count"])


def refresh(
    state: steps.TrainState,
    source,
    statistics_pass,
    pipeline: PipelineSpec,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    max_batches: int = 0,
) -> steps.TrainState:
    """`state` with state["swa"]["batch_stats"] recomputed over the train split `source` (its
    first `max_batches` whole global batches; 0: all of them) and swa_stats_count set to the
    SWA update count. `statistics_pass` is steps.make_statistics_pass's function."""
    count = len(source) // batch_size
    if max_batches:
        count = min(count, max_batches)
    if count < 1:
        raise ValueError(f"the train split ({len(source)} images) has no whole batch")
    start = time.perf_counter()
    weights = state["swa"]
    stored = weights["batch_stats"]  # in the SWA storage dtype; accumulated in float32
    running = jax.tree.map(lambda x: x.astype(np.float32), stored)
    batch_sharding = sharding.batch_sharded(mesh)
    iterator = iter(input_pipeline.eval_dataset(source, pipeline, batch_size))
    try:
        for k in range(count):
            batch = next(iterator)
            # Padding only ever fills the split's last, partial batch.
            assert np.all(batch["mask"] > 0), "a padded batch in the statistics pass"
            images = jax.make_array_from_process_local_data(batch_sharding, batch["image"])
            running = statistics_pass(weights, running, np.int32(k), images)
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
    logging.info("SWA BatchNorm statistics recomputed over %d batches in %.1f s", count,
                 time.perf_counter() - start)  # fmt: skip
    return {
        **state,
        "swa": {
            "params": weights["params"],
            "batch_stats": jax.tree.map(lambda r, s: r.astype(s.dtype), running, stored),
        },
        # A new buffer: the train step donates its state, and two leaves sharing one buffer
        # would be donated twice (XLA:CPU crashes).
        "swa_stats_count": state["swa_count"] + 0,
    }
