"""`bench pipeline`: training input throughput (decode, augmentation, Mixup/CutMix, batching) in
the main process and with N Grain workers. With `bench e2e`, the only benchmark that imports the
data set and the input pipeline (TFDS, Grain): `python -m alz_jax.bench` imports it only when
asked for one of the two."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator

from alz_jax.bench.settings import Settings
from alz_jax.data import bags, dataset, input_pipeline
from alz_jax.run import specs


def input_spec(args: Settings, num_workers: int, prefetch: int) -> specs.RunSpec:
    """The config's run spec with the benchmark's workers, buffer, image size and batch (0:
    the config's)."""
    run = specs.resolve(args.base_config)
    pipeline = dataclasses.replace(
        run.pipeline,
        num_workers=num_workers,
        prefetch_buffer_size=prefetch,
        image_size=args.res or run.pipeline.image_size,
    )
    return dataclasses.replace(run, pipeline=pipeline, batch_size=args.batch or run.batch_size)


def training_input(run: specs.RunSpec) -> Iterator[dict]:
    """The train split's batch iterator of `run` (mixing, if the run mixes, at full strength:
    the schedule of a 10,000-step run)."""
    data = dataset.prepare(run.data)
    mix = dataclasses.replace(run.pipeline.mix, total_steps=10_000)
    pipeline = dataclasses.replace(run.pipeline, mix=mix)
    return iter(
        input_pipeline.train_dataset(
            bags.split_source(data, "train", pipeline.neighbours),
            pipeline,
            run.batch_size,
            seed=0,
        )
    )


def _rate(args: Settings, workers: int) -> tuple[specs.RunSpec, float]:
    """The run spec and its input's images per second with `workers` Grain workers."""
    run = input_spec(args, workers, args.prefetch)
    iterator = training_input(run)
    with contextlib.closing(iterator):
        for _ in range(args.warmup_batches):
            next(iterator)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            next(iterator)
            n += 1
        elapsed = time.perf_counter() - start
    return run, n * run.batch_size / elapsed


def run(args: Settings) -> dict:
    """Training batches per second from the input pipeline alone, per worker count."""
    results = []
    for workers in args.workers:
        run_spec, img_per_s = _rate(args, workers)
        results.append(
            {
                "workers": workers,
                "img_per_s": round(img_per_s, 1),
                "img_per_s_per_worker": round(img_per_s / max(workers, 1), 1),
            }
        )
    return {
        "bench": "pipeline",
        "config": args.config,
        "image_size": run_spec.pipeline.image_size,
        "batch": run_spec.batch_size,
        "prefetch": args.prefetch,
        "augment_and_mix": "the config's (decode, augmentation, Mixup/CutMix, batching)",
        "per_worker_count": results,
    }
