"""`bench e2e`: the input pipeline feeding the config's train step, timed as the training loop
times it: the share of wall time spent waiting for the next batch."""

from __future__ import annotations

import contextlib
import dataclasses
import time

import jax

from alz_jax.bench import common, pipeline
from alz_jax.bench.settings import Settings
from alz_jax.core import sharding
from alz_jax.data import input_pipeline


def run(args: Settings) -> dict:
    """Steps per second of the train step fed by the input pipeline, and the input wait share."""
    run_spec = pipeline.input_spec(args, args.num_workers, args.prefetch)
    # The config's model at the benchmark's image size (ViT's position grid follows it).
    model = common.model_spec(
        args.base_config.model, "", run_spec.model.dtype, run_spec.pipeline.image_size
    )
    run_spec, parts = common.assemble(
        dataclasses.replace(run_spec, model=model), total_steps=10_000, warmup_steps=100
    )
    state, train_step = parts.fresh_state(run_spec.seed), parts.train_step
    batch_sharding = sharding.batch_sharded(parts.mesh)
    iterator = pipeline.training_input(run_spec)
    with contextlib.closing(iterator):
        for _ in range(args.warmup_steps):  # compile, fill the workers' buffers
            batch = input_pipeline.to_global(next(iterator), batch_sharding)
            state, metrics = train_step(state, batch)
        jax.block_until_ready(metrics)
        wait = 0.0
        start = time.perf_counter()
        for _ in range(args.steps):
            t = time.perf_counter()
            batch = next(iterator)
            wait += time.perf_counter() - t
            state, metrics = train_step(state, input_pipeline.to_global(batch, batch_sharding))
        jax.block_until_ready(metrics)
        elapsed = time.perf_counter() - start
    return {
        "bench": "e2e",
        "config": args.config,
        "config_hash": common.config_hash(run_spec),
        "num_workers": args.num_workers,
        "prefetch": args.prefetch,
        "batch": run_spec.batch_size,
        "image_size": run_spec.pipeline.image_size,
        "depthwise": getattr(run_spec.model, "depthwise", None),
        "steps": args.steps,
        "step_s": round(elapsed / args.steps, 6),
        "img_per_s": round(args.steps * run_spec.batch_size / elapsed, 1),
        "input_wait_share": round(wait / elapsed, 4),
    }
