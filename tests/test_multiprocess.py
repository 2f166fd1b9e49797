"""The test that proves it: `python -m alz_jax.main` as 2 processes of 2 CPU devices each (JAX's
distributed runtime, gloo collectives on localhost), through the real pipeline with augmentation
and Mixup/CutMix, 2 Grain workers per process, stochastic depth, bf16 EMA and SWA, and gradient
accumulation 2; sent SIGTERM (to the whole process group, as a scheduler does) mid-run, it saves,
exits 0 and, restarted with the same command, ends bitwise equal to an uninterrupted 2-process
run (whose batches are made in-process, without workers: the same stream), and within 1e-6 of a
1-process 4-device run on the same global batches. And on 2 processes the shard_map step gives
the jit step's updates within 1e-6 (tests/multiprocess_step.py).

The uninterrupted runs are module fixtures, made once: the 2-process one is the reference of
both comparisons, and the 1-process one runs beside it (3 processes on 2 cores end sooner together
than one run after the other).
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from alz_jax.core import checkpointing, sharding
from alz_jax.data import dataset
from alz_jax.host import writers
from alz_jax.run import assembly, specs
from tests import multiprocess_step, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.serial]
REPO = Path(__file__).resolve().parents[1]
# SIGTERM reaches JAX's preemption notifier within its 1 s poll, about 10 of these 0.1 s steps:
# 24 steps leave room for that after the signal at step 2.
TOTAL_STEPS, SAVE_EVERY = 24, 10


def _overrides(manual_dir, data_dir, workers=2):
    return {
        "data.manual_dir": str(manual_dir),
        "data.data_dir": str(data_dir),
        "data.num_workers": workers,
        "num_train_steps": TOTAL_STEPS,
        "eval_every_steps": SAVE_EVERY,
        "log_every_steps": 1,
        "grad_accum_steps": 2,
        "ema.dtype": "bfloat16",
        "swa.dtype": "bfloat16",
        "swa.every_steps": 2,
        **tiny_config.TWO_STAGES,
    }


def _config(manual_dir, data_dir):
    config = tiny_config.get_config()
    tiny_config.override(config, _overrides(manual_dir, data_dir))
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, processes: int) -> dict:
    """This session's environment with `devices` fake CPU devices per process instead of 8 (the
    other XLA flags of tests/conftest.py kept). No persistent compilation cache for 2 processes:
    JAX keys process 1's executables apart and only process 0 writes, so process 0 would load
    while process 1 compiles, and wait for it at the first collective, where gloo gives up
    after 30 s."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]  # fmt: skip
    xla_flags = [*kept, f"--xla_force_host_platform_device_count={devices}"]
    env = dict(os.environ, XLA_FLAGS=" ".join(xla_flags))
    if processes > 1:
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    return env


def _launch(workdir: Path, processes: int, devices: int, manual_dir, data_dir, workers=2):
    """Starts `processes` copies of main (each in its own session); returns (procs, logs)."""
    port = _free_port()
    flags = [f"--config.{k}={v}" for k, v in _overrides(manual_dir, data_dir, workers).items()]
    procs, log_paths = [], []
    for pid in range(processes):
        cmd = [sys.executable, "-m", "alz_jax.main", "--config=tests/tiny_config.py",
               f"--workdir={workdir}", *flags]  # fmt: skip
        if processes > 1:
            cmd += [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
                    f"--process_id={pid}"]  # fmt: skip
        env = _env(devices, processes)
        log_path = workdir.parent / f"{workdir.name}_p{pid}_{time.monotonic_ns()}.log"
        log = open(log_path, "w")  # noqa: SIM115 (closed with the process)
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))  # fmt: skip
        log_paths.append(log_path)
    return procs, log_paths


def _wait(procs, log_paths, timeout=420):
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
            raise
    outputs = [p.read_text() for p in log_paths]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    return outputs


def _final_state(workdir, config):
    run = specs.resolve(config)
    parts = assembly.assemble(run, run.plan(1), sharding.make_mesh(), {"mean": 0.0, "std": 1.0})
    abstract = parts.abstract_state()
    manager = checkpointing.make_manager(workdir, run.checkpoint)
    assert manager.latest_step() == TOTAL_STEPS
    return jax.device_get(checkpointing.restore(manager, TOTAL_STEPS, abstract))


def _losses(workdir):
    logged = writers.read_metrics(workdir)
    return np.array([logged[s]["train/loss"] for s in range(1, TOTAL_STEPS + 1)])


@pytest.fixture(scope="module")
def data(tiny_synthetic, tmp_path_factory):
    """(manual_dir, data_dir, config): the TFDS set built once, shared by every run below."""
    manual_dir, _ = tiny_synthetic
    data_dir = tmp_path_factory.mktemp("multiprocess_tfds")
    config = _config(manual_dir, data_dir)
    dataset.prepare(config.data)
    return manual_dir, data_dir, config


@pytest.fixture(scope="module")
def one(data, tmp_path_factory):
    """(workdir, procs, logs): 1 process x 4 devices, uninterrupted, batches made in-process;
    started before the 2-process reference, to run beside it."""
    manual_dir, data_dir, _ = data
    workdir = tmp_path_factory.mktemp("multiprocess_one") / "one"
    procs, log_paths = _launch(workdir, 1, 4, manual_dir, data_dir, workers=0)
    yield workdir, procs, log_paths
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def two(data, one, tmp_path_factory):
    """(workdir, final state): uninterrupted, 2 processes x 2 devices, batches made in-process
    (`one` runs beside it)."""
    manual_dir, data_dir, config = data
    workdir = tmp_path_factory.mktemp("multiprocess_two") / "two"
    _wait(*_launch(workdir, 2, 2, manual_dir, data_dir, workers=0))
    return workdir, _final_state(workdir, config)


def test_two_processes_preempted_and_resumed_match_uninterrupted_runs(data, two, tmp_path):
    manual_dir, data_dir, config = data
    two_dir, two_state = two

    # Preempted: SIGTERM to both process groups once step 2 is logged, then the same command.
    workdir = tmp_path / "preempted"
    procs, log_paths = _launch(workdir, 2, 2, manual_dir, data_dir)
    deadline = time.monotonic() + 300
    while max(writers.read_metrics(workdir), default=0) < 2:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), log_paths[
            0
        ].read_text()[-3000:]
        time.sleep(0.05)
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    outputs = _wait(procs, log_paths)
    stopped = [int(out.split("Preempted: state saved at step ")[1].split(";")[0])
               for out in outputs]  # fmt: skip
    # Both stop where JAX's coordination service agreed: the step after the notice reached it,
    # which can be a scheduled save (then that save is the preemption save).
    assert stopped[0] == stopped[1]
    assert 2 <= stopped[0] < TOTAL_STEPS, stopped
    manager = checkpointing.make_manager(workdir, specs.resolve(config).checkpoint)
    assert manager.latest_step() == stopped[0]
    _wait(*_launch(workdir, 2, 2, manual_dir, data_dir))

    resumed = _final_state(workdir, config)
    assert int(resumed["swa_count"]) == int(two_state["swa_count"]) == 7  # steps 12, 14, ..., 24
    assert resumed["ema"]["head"]["fc"]["kernel"].dtype == np.dtype("bfloat16")
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(two_state), jax.tree.leaves(resumed), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), jax.tree_util.keystr(path))
    np.testing.assert_array_equal(_losses(workdir), _losses(two_dir))


def test_one_process_of_four_devices_matches_two_processes(data, one, two):
    """1 process x 4 devices: the same run within 1e-6."""
    _, _, config = data
    workdir, procs, log_paths = one
    two_dir, two_state = two
    _wait(procs, log_paths)
    one_state = _final_state(workdir, config)
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(two_state), jax.tree.leaves(one_state), strict=True
    ):
        a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
        where = jax.tree_util.keystr(path)
        if "ema" in where or "swa" in where:
            # bf16 storage, stochastically rounded: values 1e-6 apart before rounding may land
            # on neighbouring bf16 values; allow one bf16 ulp.
            np.testing.assert_allclose(a, b, rtol=2**-7, atol=1e-6, err_msg=where)
        else:
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=where)
    np.testing.assert_allclose(_losses(workdir), _losses(two_dir), atol=1e-6)


def test_shard_map_step_gives_the_jit_update_on_two_processes(tmp_path):
    """Same state, same global batches, 3 updates each: parameters and optimizer state within
    1e-6. (Whole runs drift apart: Adam turns last-bit gradient differences into visible ones
    over many steps, which is why this compares updates, not whole runs.) The jit updates are
    computed here, on 4 of this process's devices (within 3e-8 of the 2-process jit step's:
    tests/multiprocess_step.py); the 2 processes compute the shard_map ones."""
    reference = tmp_path / "jit_updates.npz"
    multiprocess_step.write_reference(str(reference), jax.devices()[:4])
    port = _free_port()
    procs = []
    for pid in range(2):
        cmd = [sys.executable, "-m", "tests.multiprocess_step", f"localhost:{port}", "2", str(pid),
               str(reference)]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(2, 2), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    outputs = [p.communicate(timeout=420)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
        assert "max differences jit vs shard_map" in out
