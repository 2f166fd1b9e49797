"""A process killed (SIGKILL) while Orbax writes a checkpoint leaves the previous one restorable."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from alz_jax.core import checkpointing, sharding
from tests import checkpoint_child
from tests.xla_flags import ONE_DEVICE_XLA_FLAGS

REPO = Path(__file__).resolve().parents[1]


def test_sigkill_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.checkpoint_child", str(tmp_path)],
        cwd=REPO, env=dict(os.environ, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS), stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    ckpt_dir = tmp_path / "checkpoints"
    try:
        assert child.stdout.readline().strip() == "saved 1"
        deadline = time.monotonic() + 120
        # Wait for Orbax's temporary directory of step 2, then kill mid-write.
        while not any(p.name.startswith("2.orbax-checkpoint-tmp") for p in ckpt_dir.iterdir()):
            assert time.monotonic() < deadline and child.poll() is None, "no tmp directory seen"
            time.sleep(0.001)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    leftovers = [p.name for p in ckpt_dir.iterdir() if "orbax-checkpoint-tmp" in p.name]
    assert leftovers, "the kill came after the save had finished: the test proved nothing"
    assert not (ckpt_dir / "2").exists()

    # An evaluation's manager lists only step 1 and leaves the directory alone; the training's
    # manager (the resumed run) removes it.
    reader = checkpointing.make_manager(tmp_path, checkpointing.CheckpointSpec())
    assert reader.all_steps() == [1] and leftovers == [
        p.name for p in ckpt_dir.iterdir() if "orbax-checkpoint-tmp" in p.name
    ]
    manager = checkpointing.make_manager(
        tmp_path, checkpointing.CheckpointSpec(), for_training=True
    )
    assert manager.all_steps() == [1]
    repl = sharding.replicated(sharding.make_mesh())
    abstract = {
        "w": jax.ShapeDtypeStruct((checkpoint_child.SIZE,), np.float32, sharding=repl),
        "step": jax.ShapeDtypeStruct((), np.int32, sharding=repl),
    }
    state = checkpointing.restore(manager, 1, abstract)
    assert int(state["step"]) == 1
    w = np.asarray(state["w"])
    assert w.shape == (checkpoint_child.SIZE,) and np.all(w == 1.0)
    # The half-written directory is cleaned up, and the next save of step 2 works.
    manager.wait_until_finished()
    checkpointing.save(manager, 2, {"w": state["w"] * 3, "step": np.int32(2)})
    manager.wait_until_finished()
    assert manager.all_steps() == [1, 2]
    assert not [p.name for p in ckpt_dir.iterdir() if "orbax-checkpoint-tmp" in p.name]
