"""Helper for test_multiprocess: on N processes (JAX distributed runtime), the shard_map train
step applied to the same initial state and global batches gives the jit step's updates.

    python -m tests.multiprocess_step COORDINATOR NUM_PROCESSES PROCESS_ID REFERENCE.npz

The initial state and the jit step's updates (REFERENCE.npz) come from `write_reference`, run by
the test in its own process on 4 of its devices: the same global batches on the same number of
devices as 2 processes of 2, where the jit step gives the 2-process jit step's updates within
3e-8 (measured; the test beside this one holds whole 12-step runs on 1 and 2 processes within
1e-6). So each process compiles only the shard_map step. Prints the largest difference per part
of the state and exits 1 if any is over its tolerance.
"""

import sys

import jax
import numpy as np

OVERRIDES = {"grad_accum_steps": 2, "ema.dtype": "bfloat16", "swa.dtype": "bfloat16"}
UPDATES = 3
GLOBAL_BATCH = 16


def _setup(step_impl: str, mesh):
    """(make_state, step) of the tiny config with OVERRIDES on `mesh`."""
    from tests import test_steps

    _, make_state, step = test_steps._setup(mesh=mesh, step_impl=step_impl, **OVERRIDES)
    return make_state, step


def _updates(step, state, mesh) -> dict:
    """The state after UPDATES steps from `state`, on `mesh` (whose devices may span processes:
    each feeds its own rows of every global batch)."""
    from alz_jax.core import sharding
    from alz_jax.data import input_pipeline
    from tests import test_steps

    per_process = GLOBAL_BATCH // jax.process_count()
    rows = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    for i in range(UPDATES):
        batch = test_steps._batch(size=GLOBAL_BATCH, seed=i)
        if jax.process_count() > 1:
            local = {k: v[rows] for k, v in batch.items()}
            batch = input_pipeline.to_global(local, sharding.batch_sharded(mesh))
        state, _ = step(state, batch)
    return jax.device_get(state)


def _flat(state, prefix: str) -> dict[str, np.ndarray]:
    """Every leaf as float64 (bf16 and integers exactly), keyed by `prefix` and its path."""
    return {
        prefix + jax.tree_util.keystr(path): np.asarray(leaf, np.float64)
        for path, leaf in jax.tree_util.tree_leaves_with_path(state)
    }


def write_reference(path: str, devices) -> None:
    """The initial state and the jit step's state after UPDATES steps on a mesh of `devices`
    (of this one process), to `path`."""
    mesh = jax.make_mesh(
        (len(devices),), ("data",), devices=devices, axis_types=(jax.sharding.AxisType.Auto,)
    )
    make_state, step = _setup("jit", mesh)
    state = make_state()
    initial = jax.device_get(state)  # before the step donates it
    np.savez(path, **_flat(initial, "initial"), **_flat(_updates(step, state, mesh), "jit"))


def run(coordinator: str, num_processes: int, process_id: int, reference: str) -> int:
    """UPDATES updates of the shard_map step from the reference's initial state; 0 if they
    agree with the jit step's."""
    from alz_jax.host import distributed

    distributed.initialize(coordinator, num_processes, process_id)
    from alz_jax.core import sharding

    mesh = sharding.make_mesh()
    make_state, step = _setup("shard_map", mesh)
    with np.load(reference) as npz:
        saved = dict(npz)
    # The initial state as the jit run had it (not compiled again: its shapes are traced only).
    abstract = jax.eval_shape(make_state)
    state = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jax.make_array_from_process_local_data(
            sharding.replicated(mesh),
            saved["initial" + jax.tree_util.keystr(path)].astype(leaf.dtype),
        ),
        abstract,
    )
    got = _flat(_updates(step, state, mesh), "")
    assert sorted(got) == sorted(k.removeprefix("jit") for k in saved if k.startswith("jit"))
    worst = {}
    for key, value in got.items():
        part = key.split("'")[1]  # "['params']['stem']..." -> params
        diff = float(np.max(np.abs(value - saved["jit" + key]), initial=0))
        worst[part] = max(worst.get(part, 0.0), diff)
    ok = True
    for part, diff in worst.items():
        # bf16 averages: 1e-6 apart before rounding may land on neighbouring bf16 values.
        ok &= diff <= (2**-7 * 0.1 if part in ("ema", "swa") else 1e-6)
    print("max differences jit vs shard_map:", worst, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
