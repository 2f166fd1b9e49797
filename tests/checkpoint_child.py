"""Helper for test_checkpointing: saves checkpoint 1 of a large state, waits for it, starts
saving checkpoint 2 and sleeps, to be killed while Orbax writes it.

    python -m tests.checkpoint_child CKPT_WORKDIR
"""

import sys
import time

import jax.numpy as jnp

from alz_jax.core import checkpointing

SIZE = 48 * 1024 * 1024  # float32 values: 192 MiB, so the write takes a while


def main(workdir: str) -> None:
    manager = checkpointing.make_manager(workdir, checkpointing.CheckpointSpec())
    checkpointing.save(manager, 1, {"w": jnp.full((SIZE,), 1.0), "step": jnp.int32(1)})
    manager.wait_until_finished()
    print("saved 1", flush=True)
    checkpointing.save(manager, 2, {"w": jnp.full((SIZE,), 2.0), "step": jnp.int32(2)})
    time.sleep(600)


if __name__ == "__main__":
    main(sys.argv[1])
