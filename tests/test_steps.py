"""The train step: shard_map and jit give the same update, gradient accumulation gives the same
update as one big batch, and per-sample randomness doesn't depend on the batch split."""

import jax
import numpy as np
import pytest

from alz_jax.core import sharding
from alz_jax.data import mixing
from alz_jax.run import assembly, specs
from tests import tiny_config

STATS = {"mean": 0.25, "std": 0.3}


def _setup(mesh=None, **overrides):
    config = tiny_config.get_config()
    tiny_config.override(config, overrides)
    run = specs.resolve(config)
    parts = assembly.assemble(run, run.plan(2), mesh or sharding.make_mesh(), STATS)
    return config, lambda: parts.fresh_state(run.seed), parts.train_step


def _batch(size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (size, 32, 32, 1), dtype=np.uint8)
    labels = rng.integers(0, 2, (size,), dtype=np.int32)
    targets = mixing.smooth_one_hot(labels, 2, 0.1).astype(np.float32)[::-1].copy()
    return {"image": images, "label": labels, "targets": targets}


def _run(step_fn, make_state, n=3):
    state = make_state()
    losses = []
    for i in range(n):
        state, metrics = step_fn(state, _batch(seed=i))
        losses.append(float(metrics["loss"]))
    return jax.device_get(state), losses


def _assert_close(a, b, atol):
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=0, atol=atol,
            err_msg=jax.tree_util.keystr(path),
        )  # fmt: skip


@pytest.fixture(scope="module")
def jit_accum2():
    _, make_state, step = _setup(grad_accum_steps=2, **{"ema.dtype": "float32"})
    return _run(step, make_state)


def test_shard_map_step_gives_the_jit_update(jit_accum2):
    _, make_state, step = _setup(
        grad_accum_steps=2, step_impl="shard_map", **{"ema.dtype": "float32"}
    )
    state, losses = _run(step, make_state)
    ref_state, ref_losses = jit_accum2
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    assert int(state["step"]) == 3 and int(state["swa_count"]) == int(ref_state["swa_count"]) > 0
    _assert_close(state, ref_state, atol=1e-6)


def test_gradient_accumulation_gives_the_full_batch_update(jit_accum2):
    _, make_state, step = _setup(grad_accum_steps=1, **{"ema.dtype": "float32"})
    state, losses = _run(step, make_state)
    ref_state, ref_losses = jit_accum2
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    _assert_close(state, ref_state, atol=1e-6)


def test_stochastic_depth_draws_do_not_depend_on_the_device_count():
    """Per-sample keys from the global position: 8 devices and 1 device draw the same masks."""
    _, make_state, step = _setup(grad_accum_steps=1)
    one_device = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1],
                               axis_types=(jax.sharding.AxisType.Auto,))  # fmt: skip
    _, make_state1, step1 = _setup(one_device, grad_accum_steps=1)
    state1 = make_state1()
    eight, _ = _run(step, make_state, n=2)
    state1, _ = step1(state1, _batch(seed=0))
    state1, _ = step1(state1, _batch(seed=1))
    _assert_close(jax.device_get(state1), eight, atol=1e-6)
