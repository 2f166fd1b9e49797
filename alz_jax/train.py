"""Training and evaluation loop: data, model and optimizer, checkpoints, the loop, the report.

Reads top to bottom like the run it performs: prepare the data (generating and building it if
needed), record the run, build the model and optimizer on a ('data',) mesh, restore the latest
checkpoint if there is one, train with periodic logging, validation and checkpoints, then
evaluate the best checkpoint on the test split and write report_test.json.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from clu import metric_writers, periodic_actions

from alz_jax import checkpointing, config_lib, evaluate, preview, run_record, sharding, steps
from alz_jax.data import dataset, input_pipeline
from alz_jax.errors import UserError
from alz_jax.models import convnext


class StageTimer:
    """Wall-clock time of each named stage of a run, for the final summary."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _train_scalars(history: list[dict], elapsed: float, wait_time: float, step: int) -> dict:
    """Means of the step metrics since the last log (fetched from device only here)."""
    fetched = jax.device_get(history)
    scalars = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    if not math.isfinite(scalars["train/loss"]):
        raise FloatingPointError(f"Loss is {scalars['train/loss']} at step {step}.")
    scalars["train/step_time_s"] = elapsed / len(history)
    scalars["train/data_wait_s"] = wait_time / len(history)
    return scalars


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per `config` in `workdir` (resuming if possible); returns the test report."""
    timer = StageTimer()
    config_lib.validate(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_writer = jax.process_index() == 0

    # ---- Data: the user's ADNI folder or the synthetic stand-in, built into TFDS once. ----
    data = dataset.prepare(config.data, timer=timer)
    global_batch = config.batch_size
    if global_batch % jax.device_count():
        raise UserError(
            f"batch_size {global_batch} must be divisible by the {jax.device_count()} devices."
        )
    steps_per_epoch = data.num_examples("train") // global_batch
    if steps_per_epoch == 0:
        raise UserError(
            f"batch_size {global_batch} exceeds the {data.num_examples('train')} training images."
        )
    total_steps = config_lib.num_train_steps(config, steps_per_epoch)
    warmup_steps = config_lib.duration_steps(config, "warmup", steps_per_epoch)
    eval_every = max(1, config_lib.duration_steps(config, "eval_every", steps_per_epoch))
    train_source = data.source("train")
    with timer("run record + pixel statistics"):
        record = run_record.start(
            workdir,
            config,
            data.fingerprint(),
            manifest=data.manifest,
            pixel_stats=lambda: input_pipeline.pixel_stats(train_source, config.data.image_size),
            is_writer=is_writer,
        )
    pixel_stats = record["pixel_stats"]
    val_records = data.records("validation")
    logging.info(
        "Data %s: %s images; %d steps/epoch, %d steps, warmup %d, eval every %d; pixels %s",
        data.fingerprint(),
        {s: data.num_examples(s) for s in dataset.SPLITS},
        steps_per_epoch, total_steps, warmup_steps, eval_every, pixel_stats,
    )  # fmt: skip

    # ---- Model, optimizer and train state on a ('data',) mesh. ----
    mesh = sharding.make_mesh()
    spec = convnext.spec_from_config(config.model)
    model = steps.make_model(spec)
    tx, schedule = steps.make_optimizer(config, total_steps, warmup_steps)
    manager = checkpointing.make_manager(workdir, config.checkpoint)
    # The data iterator is checkpointed with the model: a resume continues the same stream.
    grain_iter = iter(
        input_pipeline.train_dataset(
            train_source, config, global_batch, seed=config.seed, total_steps=total_steps
        )
    )
    start_step = manager.latest_step() or 0
    if start_step:
        state = checkpointing.restore(
            manager, start_step, steps.abstract_train_state(spec, tx, mesh), grain_iter
        )
        logging.info("Resumed from checkpoint at step %d", start_step)
    else:
        state = steps.create_train_state(spec, tx, mesh, config.seed)
    train_step = steps.make_train_step(model, tx, schedule, config, pixel_stats, mesh)
    predict_step = steps.make_predict_step(model, pixel_stats, mesh)

    # ---- Metric writers and progress reporting (process 0 writes). ----
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_writer)
    if start_step == 0:
        writer.write_hparams(_flat_hparams(config))
    progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)

    def run_validation(step: int, params) -> dict:
        with progress.timed("eval"):
            prob_ad = evaluate.predict_split(data, "validation", params, predict_step, config, mesh)
            scalars = evaluate.validation_metrics(val_records, prob_ad)
        writer.write_scalars(step, {f"validation/{k}": v for k, v in scalars.items()})
        return {f"validation/{k}": v for k, v in scalars.items()}

    # ---- The training loop. ----
    batch_sharding = sharding.batch_sharded(mesh)
    with timer("train"), contextlib.closing(grain_iter):
        try:
            if start_step < total_steps:
                train_iter = grain_iter
                if start_step == 0:  # what the model is fed, to TensorBoard once
                    first = next(grain_iter)
                    writer.write_images(0, {"train/augmented": preview.image_grid(first)[None]})
                    train_iter = itertools.chain([first], grain_iter)
                history, wait_time, interval_start = [], 0.0, time.perf_counter()
                eval_time = 0.0  # validation and saving, kept out of the step time
                for step in range(start_step, total_steps):
                    wait_start = time.perf_counter()
                    batch = next(train_iter)
                    wait_time += time.perf_counter() - wait_start
                    with jax.profiler.StepTraceAnnotation("train", step_num=step):
                        state, step_metrics = train_step(
                            state, input_pipeline.to_global(batch, batch_sharding)
                        )
                    history.append(step_metrics)
                    done = step + 1
                    progress(done)
                    if done % config.log_every_steps == 0 or done == total_steps:
                        elapsed = time.perf_counter() - interval_start - eval_time
                        scalars = _train_scalars(history, elapsed, wait_time, done)
                        scalars["train/epoch"] = done / steps_per_epoch
                        writer.write_scalars(done, scalars)
                        history, wait_time, interval_start = [], 0.0, time.perf_counter()
                        eval_time = 0.0
                    if done % eval_every == 0 or done == total_steps:
                        eval_start = time.perf_counter()
                        val = run_validation(done, state["params"])
                        checkpointing.save(manager, done, state, val, data_iterator=grain_iter)
                        eval_time += time.perf_counter() - eval_start
        finally:
            # Also on an exception: let an in-flight checkpoint finish rather than lose it.
            manager.wait_until_finished()

    # ---- Test report from the best checkpoint. ----
    with timer("test evaluation"):
        report = evaluate_saved(
            manager, "best", "test",
            data=data, model=model, tx=tx, pixel_stats=pixel_stats, config=config, mesh=mesh,
            workdir=workdir,
        )  # fmt: skip
    writer.flush()
    report["stage_seconds"] = {k: round(v, 1) for k, v in timer.seconds.items()}
    evaluate.write_report(report, workdir)
    return report


def evaluate_saved(
    manager, which: str, split: str, *, data, model, tx, pixel_stats, config, mesh, workdir
):
    """Restores checkpoint `which` ('best', 'latest', step), writes predictions_<split>.csv and
    returns the report of `split`."""
    step = checkpointing.resolve_step(manager, which)
    state = checkpointing.restore(manager, step, steps.abstract_train_state(model.spec, tx, mesh))
    predict_step = steps.make_predict_step(model, pixel_stats, mesh)
    prob_ad = evaluate.predict_split(data, split, state["params"], predict_step, config, mesh)
    records = data.records(split)
    evaluate.write_predictions(records, prob_ad, Path(workdir) / f"predictions_{split}.csv")
    return evaluate.build_report(split, records, prob_ad, data.report_metadata(), step)


def evaluate_checkpoint(workdir: str, split: str, which: str) -> dict:
    """Evaluates checkpoint `which` of the run in `workdir` on `split` and writes its report."""
    config = run_record.load_config(workdir)
    record = run_record.load(workdir)
    data = dataset.prepare(config.data)
    if data.fingerprint() != record["identity"]["data"]["fingerprint"]:
        raise UserError(
            f"The data set now at {data.data_dir} differs from the one the run in {workdir} "
            "was trained on (fingerprints differ)."
        )
    mesh = sharding.make_mesh()
    spec = convnext.spec_from_config(config.model)
    steps_per_epoch = max(1, data.num_examples("train") // config.batch_size)
    total_steps = config_lib.num_train_steps(config, steps_per_epoch)
    tx, _ = steps.make_optimizer(
        config, total_steps, config_lib.duration_steps(config, "warmup", steps_per_epoch)
    )
    manager = checkpointing.make_manager(workdir, config.checkpoint)
    report = evaluate_saved(
        manager, which, split,
        data=data, model=steps.make_model(spec), tx=tx, pixel_stats=record["pixel_stats"],
        config=config, mesh=mesh, workdir=workdir,
    )  # fmt: skip
    evaluate.write_report(report, workdir)
    return report


def _flat_hparams(config: ml_collections.ConfigDict) -> dict:
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix[:-1]] = value if isinstance(value, int | float | str | bool) else str(value)

    walk("", config.to_dict())
    return flat
