"""Helper for test_pipeline: a mixing training stream in a fresh process, from a given step and
with a given number of Grain workers; prints a hash of every batch.

    python -m tests.resume_stream START COUNT WORKERS

A resumed run opens its stream at the restored step (the position is derived from the step, not
stored), so a resume may use another worker count than the run it continues.
"""

import hashlib
import sys

import numpy as np
from absl import flags


def _digest(batch) -> str:
    h = hashlib.sha256()
    for key in sorted(batch):
        h.update(key.encode())
        h.update(np.ascontiguousarray(batch[key]).tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    """Prints COUNT batch hashes from step START with WORKERS Grain workers."""
    flags.FLAGS.mark_as_parsed()
    from alz_jax.data import input_pipeline
    from tests.test_pipeline import _config, _records

    start, count, workers = map(int, sys.argv[1:4])
    pipeline = _config(workers=workers, total_steps=12)
    stream = iter(input_pipeline.train_dataset(_records(40), pipeline, 8, seed=3, start_step=start))
    try:
        for _ in range(count):
            print(_digest(next(stream)))
    finally:
        stream.close()


if __name__ == "__main__":
    main()
