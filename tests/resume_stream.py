"""Helper for test_pipeline: run, save or resume a 2-worker, mixing training stream in a fresh
process and print a hash of every batch.

    python -m tests.resume_stream run N
    python -m tests.resume_stream save K CKPT_DIR
    python -m tests.resume_stream resume CKPT_DIR M
"""

import hashlib
import sys

import jax.numpy as jnp
import numpy as np
from absl import flags


def _stream():
    from alz_jax.data import input_pipeline
    from tests.test_pipeline import _config, _records

    pipeline = _config(workers=2, total_steps=12)
    return iter(input_pipeline.train_dataset(_records(40), pipeline, 8, seed=3))


def _digest(batch) -> str:
    h = hashlib.sha256()
    for key in sorted(batch):
        h.update(key.encode())
        h.update(np.ascontiguousarray(batch[key]).tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    """Runs one mode and prints one hash per batch."""
    flags.FLAGS.mark_as_parsed()
    from alz_jax.core import checkpointing

    mode = sys.argv[1]
    checkpoint = checkpointing.CheckpointSpec(keep_latest=1, keep_best=1)
    stream = _stream()
    try:
        if mode in ("run", "save"):
            count = int(sys.argv[2])
        else:
            manager = checkpointing.make_manager(sys.argv[2], checkpoint)
            state = {"x": jnp.zeros(1)}
            checkpointing.restore(manager, manager.latest_step(), state, stream)
            count = int(sys.argv[3])
        for _ in range(count):
            print(_digest(next(stream)))
        if mode == "save":
            manager = checkpointing.make_manager(sys.argv[3], checkpoint)
            checkpointing.save(
                manager, count, {"x": jnp.zeros(1)}, {"validation/loss": 0.0}, stream
            )
            manager.wait_until_finished()
    finally:
        stream.close()


if __name__ == "__main__":
    main()
