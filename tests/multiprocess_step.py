"""Helper for test_multiprocess: on N processes (JAX distributed runtime), the shard_map train
step and the jit train step applied to the same state and global batches give the same updates.

    python -m tests.multiprocess_step COORDINATOR NUM_PROCESSES PROCESS_ID

Prints the largest difference per part of the state and exits 1 if any is over its tolerance.
"""

import sys

import jax
import numpy as np


def run(coordinator: str, num_processes: int, process_id: int) -> int:
    """Three updates of each step implementation; 0 if they agree."""
    from alz_jax.host import distributed

    distributed.initialize(coordinator, num_processes, process_id)
    from alz_jax.core import sharding
    from alz_jax.data import input_pipeline
    from tests import test_steps

    overrides = {"grad_accum_steps": 2, "ema.dtype": "bfloat16", "swa.dtype": "bfloat16"}
    _, make_state, jit_step = test_steps._setup(**overrides)
    _, _, shard_map_step = test_steps._setup(step_impl="shard_map", **overrides)
    mesh = sharding.make_mesh()
    per_process = 16 // jax.process_count()
    rows = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)

    def run_steps(step_fn):
        state = make_state()
        for i in range(3):
            local = {k: v[rows] for k, v in test_steps._batch(seed=i).items()}
            batch = input_pipeline.to_global(local, sharding.batch_sharded(mesh))
            state, _ = step_fn(state, batch)
        return jax.device_get(state)

    a, b = run_steps(jit_step), run_steps(shard_map_step)
    worst = {}
    ok = True
    for part in a:
        diffs = [
            float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0))
            for x, y in zip(jax.tree.leaves(a[part]), jax.tree.leaves(b[part]), strict=True)
        ]
        worst[part] = max(diffs)
        # bf16 averages: 1e-6 apart before rounding may land on neighbouring bf16 values.
        tolerance = 2**-7 * 0.1 if part in ("ema", "swa") else 1e-6
        ok &= worst[part] <= tolerance
    print("max differences jit vs shard_map:", worst, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
