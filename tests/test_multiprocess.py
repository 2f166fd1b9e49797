"""The test that proves it: `python -m alz_jax.main` as 2 processes of 2 CPU devices each (JAX's
distributed runtime, gloo collectives on localhost), through the real pipeline with augmentation
and Mixup/CutMix, 2 Grain workers per process, stochastic depth, bf16 EMA and SWA, and gradient
accumulation 2; sent SIGTERM (to the whole process group, as a scheduler does) mid-run, it saves,
exits 0 and, restarted with the same command, ends bitwise equal to an uninterrupted 2-process
run, and within 1e-6 of a 1-process 4-device run on the same global batches. And on 2 processes
the shard_map step gives the jit step's updates within 1e-6 (tests/multiprocess_step.py).
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

from alz_jax.core import checkpointing, sharding, steps
from alz_jax.data import dataset
from alz_jax.host import logs
from alz_jax.models import convnext
from alz_jax.run import config_lib
from tests import tiny_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TOTAL_STEPS, SAVE_EVERY = 12, 10


def _overrides(manual_dir, data_dir):
    return {
        "data.manual_dir": str(manual_dir),
        "data.data_dir": str(data_dir),
        "data.num_workers": 2,
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


def _launch(workdir: Path, processes: int, devices: int, manual_dir, data_dir, *extra: str):
    """Starts `processes` copies of main (each in its own session); returns (procs, logs)."""
    port = _free_port()
    flags = [f"--config.{k}={v}" for k, v in _overrides(manual_dir, data_dir).items()]
    flags += extra
    procs, log_paths = [], []
    for pid in range(processes):
        cmd = [sys.executable, "-m", "alz_jax.main", "--config=tests/tiny_config.py",
               f"--workdir={workdir}", *flags]  # fmt: skip
        if processes > 1:
            cmd += [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
                    f"--process_id={pid}"]  # fmt: skip
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
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
    spec = convnext.spec_from_config(config.model)
    tx, _ = steps.make_optimizer(config, TOTAL_STEPS, config.warmup_steps)
    averages = config_lib.averaging_spec(config, TOTAL_STEPS, 1)
    abstract = steps.abstract_train_state(spec, tx, sharding.make_mesh(), averages)
    manager = checkpointing.make_manager(workdir, config.checkpoint)
    assert manager.latest_step() == TOTAL_STEPS
    return jax.device_get(checkpointing.restore(manager, TOTAL_STEPS, abstract))


def _losses(workdir):
    logged = logs.read_metrics(workdir)
    return np.array([logged[s]["train/loss"] for s in range(1, TOTAL_STEPS + 1)])


def test_two_processes_preempted_and_resumed_match_uninterrupted_runs(tiny_synthetic, tmp_path):
    manual_dir, _ = tiny_synthetic
    data_dir = tmp_path / "tfds"
    config = _config(manual_dir, data_dir)
    dataset.prepare(config.data)  # built once, shared by every run below

    # Uninterrupted: 2 processes x 2 devices, and 1 process x 4 devices.
    _wait(*_launch(tmp_path / "two", 2, 2, manual_dir, data_dir))
    _wait(*_launch(tmp_path / "one", 1, 4, manual_dir, data_dir))

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
    manager = checkpointing.make_manager(workdir, config.checkpoint)
    assert manager.latest_step() == stopped[0]
    _wait(*_launch(workdir, 2, 2, manual_dir, data_dir))

    two, one, resumed = (_final_state(tmp_path / n, config) for n in ("two", "one", "preempted"))
    assert int(resumed["swa_count"]) == int(two["swa_count"]) == 4  # steps 6, 8, 10, 12
    assert resumed["ema"]["head"]["fc"]["kernel"].dtype == np.dtype("bfloat16")
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(two), jax.tree.leaves(resumed), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), jax.tree_util.keystr(path))
    np.testing.assert_array_equal(_losses(tmp_path / "preempted"), _losses(tmp_path / "two"))

    # 1 process x 4 devices: the same run within 1e-6.
    for other, name in ((one, "one"),):
        for (path, x), y in zip(
            jax.tree_util.tree_leaves_with_path(two), jax.tree.leaves(other), strict=True
        ):
            a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
            where = f"{name} {jax.tree_util.keystr(path)}"
            if "ema" in jax.tree_util.keystr(path) or "swa" in jax.tree_util.keystr(path):
                # bf16 storage, stochastically rounded: values 1e-6 apart before rounding may
                # land on neighbouring bf16 values; allow one bf16 ulp.
                np.testing.assert_allclose(a, b, rtol=2**-7, atol=1e-6, err_msg=where)
            else:
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=where)
        np.testing.assert_allclose(_losses(tmp_path / name), _losses(tmp_path / "two"), atol=1e-6)


def test_shard_map_step_gives_the_jit_update_on_two_processes(tmp_path):
    """Same state, same global batches, 3 updates each: parameters and optimizer state within
    1e-6. (Whole runs drift apart: Adam turns last-bit gradient differences into visible ones
    over many steps, which is why this compares updates, not 12-step runs.)"""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
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
