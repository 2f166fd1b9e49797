"""Predictions of a scan model (models/scan.py) over a split, in one pass of whole scans.

Each scan is one bag of all its slices (data/bags.py pads the bags of a batch to the split's
longest scan and masks the padding). The scan model's output for a scan is written onto every
one of its slices, so the per-record arrays the reports read keep their shape: the scan level
of a report (the mean of its slices) is then exactly the scan model's output, and the subject
level the mean of its scans. Beside them come each slice's weight in its bag (attention, or 1/n
for mean pooling) and each slice's output alone (the same weights on a bag of one slice: the
slice model the bag model contains, which the scan-level baselines read).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.experimental import multihost_utils

from alz_jax.core import sharding
from alz_jax.data import bags, input_pipeline
from alz_jax.host import logs


@dataclasses.dataclass
class BagPredictions:
    """Per-record arrays of one weight set's predictions over a split."""

    outputs: np.ndarray  # the scan model's output of each record's scan, (n,) or (n, K)
    weights: np.ndarray  # each record's weight in its scan's bag, (n,)
    slice_outputs: np.ndarray  # each record's output as a bag of one slice, (n,) or (n, K)


def _filled(out: dict, name: str, key: str, n: int, values: np.ndarray) -> np.ndarray:
    if (name, key) not in out:
        out[name, key] = np.full((n, *values.shape[1:]), np.nan, np.float64)
    return out[name, key]


def predict_split_bags(
    data, split: str, predictors: dict, pipeline: input_pipeline.PipelineSpec, batch_size: int,
    mesh,
) -> dict[str, BagPredictions]:  # fmt: skip
    """The BagPredictions of several (weights, bag predict step) pairs (raw/EMA/SWA weights,
    test-time views) over every scan of `split`, in one pass; every record is counted exactly
    once. `batch_size` counts bags."""
    records = data.records(split)
    n = len(records["label"])
    scans = bags.ScanIndex.from_records(records, split)
    dataset = bags.eval_bag_dataset(data.source(split), scans, pipeline, batch_size)
    batch_sharding = sharding.batch_sharded(mesh)
    out: dict[tuple[str, str], np.ndarray] = {}
    seen = np.zeros(n, np.int64)
    counter = logs.Progress(f"Predictions on {split} (scans)", len(scans))
    iterator = iter(dataset)
    try:
        for batch in iterator:
            placed = {
                k: jax.make_array_from_process_local_data(batch_sharding, batch[k])
                for k in ("image", "slice_mask", "positions", "records", "index")
            }
            found = {
                name: fn(weights, placed["image"], placed["slice_mask"], placed["positions"])
                for name, (weights, fn) in predictors.items()
            }
            found, where, index = multihost_utils.process_allgather(
                (found, placed["records"], placed["index"]), tiled=True
            )
            valid = where >= 0  # (B, K): real slices of real scans
            rows = where[valid]
            for name, got in found.items():
                bag_out = np.repeat(got["outputs"][:, None], where.shape[1], axis=1)
                for key, values in (("outputs", bag_out[valid]),
                                    ("weights", got["weights"][valid]),
                                    ("slice_outputs", got["slice_outputs"][valid])):  # fmt: skip
                    _filled(out, name, key, n, values)[rows] = values
            np.add.at(seen, rows, 1)
            counter.update(int((index >= 0).sum()))
        counter.finish()
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
    input_pipeline.check_counted_once(seen, split)
    return {
        name: BagPredictions(*(out[name, k] for k in ("outputs", "weights", "slice_outputs")))
        for name in predictors
    }
