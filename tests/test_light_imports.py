"""The training core runs where only JAX, Flax, Optax, NumPy, OpenCV, absl and ml_collections
are installed (a GPU host, docs/performance.md): in a subprocess whose imports of TensorFlow,
TFDS, Grain, CLU, Orbax, Matplotlib, array_record, TensorBoard and PyTorch fail as if they were
not installed, the model and train-step modules import, a tiny model trains a step, and
`python -m alz_jax.bench step` runs; none of those packages ends up in sys.modules.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.xla_flags import ONE_DEVICE_XLA_FLAGS

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow", "tensorflow_datasets", "grain", "clu", "orbax", "matplotlib",
           "array_record", "tensorboard", "torch", "torchvision")  # fmt: skip
# Imported by Python at start-up from the first folder of PYTHONPATH: the blocker is in place
# before any import of the child, and of its own children (an entry point re-executing itself).
SITECUSTOMIZE = """
import importlib.abc, os, sys

BLOCKED = frozenset(os.environ["ALZ_JAX_TEST_BLOCKED"].split(","))


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by a test)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
"""


def _run_blocked(tmp_path: Path, args: list[str], **env) -> subprocess.CompletedProcess:
    """Runs `python ARGS` in the repository with the BLOCKED packages unimportable."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pythonpath = os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=pythonpath, ALZ_JAX_TEST_BLOCKED=",".join(BLOCKED), **env)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, check=False, timeout=300)  # fmt: skip


def _last_json(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# The child's preamble: the blocker holds (each blocked package fails to import).
_CHECK_BLOCKER = """
import json, sys
for name in BLOCKED:
    try:
        __import__(name)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"{name} imported despite the blocker")
"""
_BATCH = """
import numpy as np
rng = np.random.default_rng(0)
batch = {"image": rng.integers(0, 256, (16, 32, 32, 1), dtype=np.uint8),
         "label": rng.integers(0, 2, (16,), dtype=np.int32)}
"""


def _script(body: str) -> str:
    return f"BLOCKED = {BLOCKED!r}\n" + _CHECK_BLOCKER + _BATCH + textwrap.dedent(body)


def test_the_model_and_the_train_step_run_without_the_optional_packages(tmp_path):
    """The core's own factories (what run.assembly calls), on the tiny config's model and
    optimizer: one train step with EMA and SWA."""
    script = _script("""
        import dataclasses
        import alz_jax.models, alz_jax.models.convert
        from alz_jax.core import averaging, optim, sharding, steps
        from alz_jax.models import convnext, depthwise
        from tests import tiny_config

        c = tiny_config.get_config()
        spec = convnext.ConvNeXtSpec(depths=tuple(c.model.depths), dims=tuple(c.model.dims),
                                     in_chans=1, drop_path_rate=0.1, depthwise="xla")
        opt = optim.OptimSpec(**{k: v for k, v in c.optim.items()
                                 if k not in ("label_smoothing", "class_weights")})
        schedule = optim.learning_rate_schedule(opt, 10, 2)
        tx = optim.make_optimizer(opt, schedule)
        averages = averaging.AveragingSpec(ema=True, swa=True, swa_start_step=1)
        step_spec = steps.StepSpec(label_smoothing=0.1, noise_prob=0.5, noise_std=0.05)
        mesh = sharding.make_mesh()
        model = steps.make_model(spec)
        train_step = steps.make_train_step(model, tx, schedule, step_spec,
                                           {"mean": 0.25, "std": 0.3}, mesh, averages)
        state = steps.create_train_state(spec, tx, mesh, 0, averages)
        state, metrics = train_step(state, batch)
        print(json.dumps({"loss": float(metrics["loss"]), "step": int(state["step"]),
                          "imported": [n for n in BLOCKED if n in sys.modules]}))
    """)
    result = _last_json(_run_blocked(tmp_path, ["-c", script]))
    assert result["imported"] == []
    assert result["step"] == 1 and 0 < result["loss"] < 10


def test_the_run_spec_resolves_and_assembles_the_tiny_config_step(tmp_path):
    """What training and the benchmarks build: specs.resolve and assembly.assemble."""
    script = _script("""
        from alz_jax.core import sharding
        from alz_jax.run import assembly, specs
        from tests import tiny_config

        run = specs.resolve(tiny_config.get_config())
        parts = assembly.assemble(run, run.plan(2), sharding.make_mesh(), {"mean": 0.2, "std": 0.3})
        state, metrics = parts.train_step(parts.fresh_state(run.seed), batch)
        print(json.dumps({"loss": float(metrics["loss"]),
                          "imported": [n for n in BLOCKED if n in sys.modules]}))
    """)
    result = _last_json(_run_blocked(tmp_path, ["-c", script]))
    assert result["imported"] == [] and 0 < result["loss"] < 10


def test_bench_step_runs_without_the_optional_packages(tmp_path):
    args = ["-m", "alz_jax.bench", "step", "--config=convnext_t", "--size=",
            "--config.model.size=", "--config.model.depths=(1,1,1,1)",
            "--config.model.dims=(8,16,32,64)", "--depthwise=xla", "--res=32", "--batch=8",
            "--in_chans=1", "--steps=1"]  # fmt: skip
    result = _last_json(_run_blocked(tmp_path, args, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS))
    assert result["bench"] == "step" and result["optional_imports"] == []
    assert result["dims"] == [8, 16, 32, 64] and 0 < result["loss"] < 10
