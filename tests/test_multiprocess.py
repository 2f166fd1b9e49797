"""The test that proves it: `python -m alz_jax.main` as 2 processes of 2 CPU devices each (JAX's
distributed runtime, gloo collectives on localhost), through the real pipeline with augmentation
and Mixup/CutMix, 2 Grain workers per process, stochastic depth, bf16 EMA and SWA, and gradient
accumulation 2; sent SIGTERM (to the whole process group, as a scheduler does) mid-run, it saves,
exits 0 and, restarted with the same command, ends bitwise equal to an uninterrupted 2-process
run (whose batches are made in-process, without workers: the same stream), and within 1e-6 of a
1-process 4-device run on the same global batches. And on 2 processes the shard_map step gives
the jit step's updates within 1e-6 (tests/multiprocess_step.py).

The uninterrupted 2-process run is made once (a module fixture) for both comparisons; it also
fills the session's compilation cache (tests/conftest.py), so both processes of the preempted and
the resumed run load their steps from it instead of compiling them.
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
from alz_jax.host import logs
from alz_jax.run import assembly, specs
from tests import tiny_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TOTAL_STEPS, SAVE_EVERY = 12, 10


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
    }


def _config(manual_dir, data_dir):
    config = tiny_config.get_config()
    for key, value in _overrides(manual_dir, data_dir).items():
        node = config
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _xla_flags(devices: int) -> str:
    """This session's XLA flags (tests/conftest.py) with `devices` fake CPU devices instead of 8."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]  # fmt: skip
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


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
        env = dict(os.environ, XLA_FLAGS=_xla_flags(devices))
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
    logged = logs.read_metrics(workdir)
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
def two(data, tmp_path_factory):
    """(workdir, final state): uninterrupted, 2 processes x 2 devices, batches made in-process."""
    manual_dir, data_dir, config = data
    workdir = tmp_path_factory.mktemp("multiprocess") / "two"
    _wait(*_launch(workdir, 2, 2, manual_dir, data_dir, workers=0))
    return workdir, _final_state(workdir, config)


def test_two_processes_preempted_and_resumed_match_uninterrupted_runs(data, two, tmp_path):
    manual_dir, data_dir, config = data
    two_dir, two_state = two

    # Preempted: SIGTERM to both process groups once step 2 is logged, then the same command.
    workdir = tmp_path / "preempted"
    procs, log_paths = _launch(workdir, 2, 2, manual_dir, data_dir)
    deadline = time.monotonic() + 300
    while max(logs.read_metrics(workdir), default=0) < 2:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), log_paths[
            0
        ].read_text()[-3000:]
        time.sleep(0.05)
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    outputs = _wait(procs, log_paths)
    stopped = [int(out.split("Preempted: state saved at step ")[1].split(";")[0])
               for out in outputs]  # fmt: skip
    assert stopped[0] == stopped[1]
    assert 2 <= stopped[0] < TOTAL_STEPS and stopped[0] % SAVE_EVERY, stopped
    manager = checkpointing.make_manager(workdir, specs.resolve(config).checkpoint)
    assert manager.latest_step() == stopped[0]
    _wait(*_launch(workdir, 2, 2, manual_dir, data_dir))

    resumed = _final_state(workdir, config)
    assert int(resumed["swa_count"]) == int(two_state["swa_count"]) == 4  # steps 6, 8, 10, 12
    assert resumed["ema"]["head"]["fc"]["kernel"].dtype == np.dtype("bfloat16")
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(two_state), jax.tree.leaves(resumed), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), jax.tree_util.keystr(path))
    np.testing.assert_array_equal(_losses(workdir), _losses(two_dir))


def test_one_process_of_four_devices_matches_two_processes(data, two, tmp_path):
    """1 process x 4 devices: the same run within 1e-6."""
    manual_dir, data_dir, config = data
    two_dir, two_state = two
    workdir = tmp_path / "one"
    _wait(*_launch(workdir, 1, 4, manual_dir, data_dir, workers=0))
    one = _final_state(workdir, config)
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(two_state), jax.tree.leaves(one), strict=True
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
    over many steps, which is why this compares updates, not 12-step runs.)"""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS=_xla_flags(2))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.multiprocess_step", f"localhost:{port}", "2", str(i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=420)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
        assert "max differences jit vs shard_map" in out
