"""Training and evaluation loop: data, model and optimizer, checkpoints, the loop, the report.

Reads top to bottom like the run it performs: take the workdir's lock, prepare the data
(generating and building it if needed), check the run record, build the model and optimizer on
a ('data',) mesh, restore the newest whole checkpoint if there is one, write the run record,
train with periodic logging, validation and checkpoints, then evaluate the best checkpoint on the
test split through `saved_run` (the same path as `python -m alz_jax.evaluate`): report_test.json
/.md, predictions and figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from alz_jax.core import averaging, checkpointing, optim, sharding, steps
from alz_jax.data import bags, dataset, input_pipeline
from alz_jax.evaluation import figures, metric_registry, reports, task_reports
from alz_jax.host import profiling, storage, workdir_lock, writers
from alz_jax.host.errors import UserError
from alz_jax.models import convert, scan
from alz_jax.run import assembly, progress, run_record, saved_run, specs, swa_statistics


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


class TrainingDivergedError(UserError):
    """The loss or gradient norm became NaN or infinite; nothing after it was saved."""


def _check_finite(history: list[tuple[int, dict]], manager) -> list[dict]:
    """The metrics of `history` fetched from device; stops the run, naming the step, if a step
    had a non-finite loss or gradient norm."""
    fetched_all = jax.device_get([m for _, m in history])
    bad = next(
        (
            (step, fetched)
            for (step, _), fetched in zip(history, fetched_all, strict=True)
            if not (math.isfinite(fetched["loss"]) and math.isfinite(fetched["grad_norm"]))
        ),
        None,
    )
    if bad is None:
        return fetched_all
    step, fetched = bad
    checkpointing.finish(manager)
    last = manager.latest_step()
    kept = (
        f"the last good checkpoint, step {last} in {manager.directory}, is kept"
        if last is not None
        else "no checkpoint had been saved yet"
    )
    raise TrainingDivergedError(
        f"Training diverged at step {step}: loss {float(fetched['loss'])}, gradient norm "
        f"{float(fetched['grad_norm'])}. Nothing from that step on was saved; {kept}. Try a lower "
        "optim.learning_rate, a longer warmup or optim.grad_clip_norm, in a new --workdir."
    )


def select_weights(per_weights: dict[str, dict], metric: str, mode: str) -> dict:
    """The weights whose validation `metric` (e.g. 'validation/loss') is best: the selection
    record saved with the checkpoint ({weights, metric, value, values})."""
    name = metric.removeprefix("validation/")
    values = {w: m.get(name) for w, m in per_weights.items() if m.get(name) is not None}
    if not values:
        raise UserError(
            f"checkpoint.best_metric {metric!r} is not computed on this validation set."
        )
    order = list(per_weights)  # ties go to the first: raw, then ema, then swa
    sign = 1 if mode == "min" else -1
    best = min(values, key=lambda w: (sign * values[w], order.index(w)))
    return {"weights": best, "metric": metric, "value": values[best], "values": values}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per `config` in `workdir` (resuming if possible); returns the test report, or
    {"preempted_at_step": N} if the run was asked to stop (SIGTERM) and saved its state."""
    timer = StageTimer()
    run = specs.resolve(config)  # every config check, before any data work or compile
    if run.data.protocol == "external":
        raise UserError(
            "config.data.protocol = 'external' puts every image in test: it "
            "evaluates on another cohort (python -m alz_jax.evaluate --workdir=W "
            "--data.manual_dir=DIR) and cannot train; use official|resplit|kfold."
        )
    workdir = storage.path(workdir)  # local or gs://
    with workdir_lock.hold(workdir):  # one run per workdir, before anything is written
        resuming = checkpointing.has_checkpoint(workdir)
        if not resuming:  # a resume doesn't read model.init_from
            specs.check_init_from_file(run.init_from)

        # ---- Data: the user's ADNI folder or the synthetic stand-in, built into TFDS. ----
        data = dataset.prepare(run.data, timer=timer)
        run = run.with_classes(data.class_names)
        plan = run.plan_for(data)
        with timer("run record + pixel statistics"):
            record = run_record.prepare(
                workdir, run, data.fingerprint(), has_checkpoint=resuming,
                pixel_stats=lambda: input_pipeline.pixel_stats(
                    bags.split_source(data, "train", run.pipeline.neighbours),
                    run.pipeline.image_size,
                ),
            )  # fmt: skip
        _log_plan(data, plan, record["pixel_stats"])

        # ---- Model, optimizer and state on a ('data',) mesh; the newest whole checkpoint. ----
        parts = assembly.assemble(run, plan, sharding.make_mesh(), record["pixel_stats"])
        manager = checkpointing.make_manager(workdir, run.checkpoint, for_training=True)
        state, start_step = _initial_state(run, plan, parts, manager)
        run_record.write(workdir, config, record, data.manifest, jax.process_index() == 0)
        loop = _Loop.create(run, plan, data, parts, manager, config, workdir, start_step)
        saved = saved_run.SavedRun(str(workdir), config, record, run, plan.averages, manager)

        # ---- The training loop, then the test report from the best checkpoint. ----
        with timer("train"), contextlib.closing(loop.grain_iter), contextlib.closing(loop.trace):
            try:
                preempted_at = _train(loop, state, start_step)
            finally:
                # Also on an exception: let an in-flight checkpoint finish rather than lose it.
                checkpointing.finish(loop.manager)
        loop.writer.flush()
        if preempted_at is not None:
            logging.warning(
                "Preemption requested: saved the checkpoint of step %d in %s; run the same "
                "command to continue.", preempted_at, loop.manager.directory,
            )  # fmt: skip
            return {"preempted_at_step": preempted_at}
        with timer("test evaluation"):
            report = _test_report(loop, saved)
        report["stage_seconds"] = {k: round(v, 1) for k, v in timer.seconds.items()}
        reports.write_report(report, workdir)
        return report


def _log_plan(data: dataset.AdniData, plan: specs.Plan, pixel_stats: dict) -> None:
    logging.info(
        "Data %s: %s images; %d steps/epoch, %d steps, warmup %d, eval every %d",
        data.fingerprint(),
        ", ".join(f"{s} {data.num_examples(s)}" for s in data.split_names),
        plan.steps_per_epoch, plan.total_steps, plan.warmup_steps, plan.eval_every_steps,
    )  # fmt: skip
    logging.info("Pixels of the train split: mean %.4f, std %.4f", pixel_stats["mean"],
                 pixel_stats["std"])  # fmt: skip


@dataclasses.dataclass
class _Loop:
    """What the loop's steps, validations and saves share."""

    run: specs.RunSpec
    plan: specs.Plan
    data: dataset.AdniData
    parts: assembly.Assembly
    manager: object  # orbax CheckpointManager
    grain_iter: object  # the Grain iterator of training batches
    writer: writers.Writer  # TensorBoard and metrics.jsonl (process 0 writes)
    trace: profiling.TraceWindow
    is_writer: bool
    workdir: object  # local path or epath of the run's folder
    images_per_step: int  # the batch's images (a scan model's: its bags' slices)

    @classmethod
    def create(cls, run, plan, data, parts, manager, config, workdir, start_step) -> _Loop:
        """Opens the training batches from `start_step` on and the metric writer."""
        batches = training_batches(run, plan, data, start_step)
        is_writer = jax.process_index() == 0
        writer = writers.create_writer(workdir, is_writer)
        if start_step == 0:
            writer.write_hparams(progress.hparams(run, plan), progress.HPARAM_METRICS)
            writer.write_texts(0, {"config": progress.config_table(config)})
        return cls(
            run=run, plan=plan, data=data, parts=parts, manager=manager,
            grain_iter=iter(batches), writer=writer,
            trace=profiling.TraceWindow(
                workdir / "profile", run.profile_start_step, run.profile_num_steps
            ),
            is_writer=is_writer, workdir=workdir, images_per_step=images_per_step(run, data),
        )  # fmt: skip


def training_batches(run, plan, data, start_step: int):
    """The training batches from `start_step` on: of images, or for a scan model of bags of
    each scan's slices (data/bags.py), whose memory per batch is logged first."""
    records = data.records("train")
    if not plan.pipeline.bags:
        return input_pipeline.train_dataset(
            bags.split_source(data, "train", plan.pipeline.neighbours), plan.pipeline,
            run.batch_size, seed=run.seed, start_step=start_step, labels=records["label"],
        )  # fmt: skip
    scans = bags.ScanIndex.from_records(records, "train")
    # Before any training: evaluations read whole scans, the longest of every split.
    scan.check_positions(run.model, max(
        bags.ScanIndex.from_records(data.records(s), s).max_slices for s in data.split_names
    ))  # fmt: skip
    logging.info(bags.describe_bags(plan.pipeline, run.batch_size, scans))
    return bags.train_bag_dataset(
        data.source("train"), scans, plan.pipeline, run.batch_size, seed=run.seed,
        start_step=start_step,
    )  # fmt: skip


def _initial_state(run, plan, parts, manager) -> tuple[steps.TrainState, int]:
    """The newest whole checkpoint's state (damaged ones moved aside), or a fresh one from
    model.init_from or the seed; and the step it is at. The data position follows from the step."""
    state, start_step = checkpointing.restore_latest(manager, parts.abstract_state())
    if start_step:
        logging.info("Resumed from checkpoint at step %d", start_step)
    else:
        imported = None
        if run.init_from.startswith(specs.RUN_PREFIX):
            imported = saved_run.run_variables(run.init_from, run.model, run.seed, parts.mesh)
        elif run.init_from:
            imported = convert.init_variables_from(run.init_from, run.model, run.seed)
        state = parts.fresh_state(run.seed, imported)
    logging.info(progress.parameter_overview(state["params"]))
    if run.optim.trainable != "all":
        pattern = run.trainable_regex
        trainable, total = optim.check_trainable(state["params"], pattern, run.optim.trainable)
        logging.info("Training %d of %d parameters (optim.trainable = %r, regex %r); the rest "
                     "are frozen.", trainable, total, run.optim.trainable, pattern)  # fmt: skip
        if parts.model.frozen_norms:
            logging.info("%d BatchNorm layers of the frozen part normalise with their running "
                         "statistics and keep them (optim.frozen_batchnorm = 'running').",
                         len(parts.model.frozen_norms))  # fmt: skip
    for line in progress.model_lines(run, plan):
        logging.info(line)
    return state, start_step


class _StepMeter:
    """Step metrics and timings since the last log; validation and saving are kept out of the
    step time, and so is the first step (its time is the train step's compilation)."""

    def __init__(self):
        self.history: list[tuple[int, dict]] = []
        self.wait = self.paused = 0.0
        self.timed_steps = 0
        self.start = time.perf_counter()

    def timed(self, batches: Iterator[dict]) -> Iterator[dict]:
        """`batches`, adding the time spent waiting for each to the input wait."""
        while True:
            start = time.perf_counter()
            batch = next(batches)
            self.wait += time.perf_counter() - start
            yield batch

    @contextlib.contextmanager
    def pause(self):
        """Time spent inside is not step time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - start

    def restart_clock(self) -> None:
        """Steps from here on are timed (after the compiling first step)."""
        self.wait = self.paused = 0.0
        self.timed_steps = 0
        self.start = time.perf_counter()

    def scalars(self, fetched: list[dict], batch_size: int) -> dict:
        """Means of the step metrics since the last log, with step time, images/s and input
        wait (the time ones only once steps were timed)."""
        out = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        if self.timed_steps:
            step_time = (time.perf_counter() - self.start - self.paused) / self.timed_steps
            out["train/step_time_s"] = step_time
            out["train/steps_per_sec"] = 1.0 / step_time
            out["train/images_per_sec"] = batch_size / step_time
            out["train/data_wait_s"] = self.wait / self.timed_steps
        self.history = []
        self.restart_clock()
        return out


def _train(loop: _Loop, state: steps.TrainState, start_step: int) -> int | None:
    """Trains from `start_step` to the end; returns the step a preemption stopped at, or None."""
    total, batch_sharding = loop.plan.total_steps, sharding.batch_sharded(loop.parts.mesh)
    meter = _StepMeter()
    batches = meter.timed(_batches(loop, start_step))
    for step, batch in zip(range(start_step, total), batches, strict=False):
        loop.trace.before_step(step)
        if step == start_step:
            logging.info("Compiling the train step ...")
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            state, metrics = loop.parts.train_step(
                state, input_pipeline.to_global(batch, batch_sharding)
            )
        if step == start_step:
            _log_compile(loop, step + 1, jax.block_until_ready(metrics), meter)
        else:
            meter.timed_steps += 1
        loop.trace.after_step(step, metrics)
        done = step + 1
        meter.history.append((done, metrics))
        if done % loop.run.log_every_steps == 0 or done == total:
            images = loop.images_per_step
            scalars = meter.scalars(_check_finite(meter.history, loop.manager), images)
            scalars["train/epoch"] = done / loop.plan.steps_per_epoch
            loop.writer.write_scalars(done, scalars)
            if loop.is_writer:
                logging.info(progress.step_line(done, loop.plan, scalars, images))
        with meter.pause():
            state, stop = _save_or_stop(loop, done, state, meter.history)
            if stop:
                return done
    return None


def _log_compile(loop: _Loop, done: int, metrics, meter: _StepMeter) -> None:
    """The first step's time is the train step's compilation: logged and written as a scalar,
    and left out of the step times."""
    seconds = time.perf_counter() - meter.start - meter.paused
    logging.info("Compiled the train step in %.1f s (the first step included).", seconds)
    loop.writer.write_scalars(done, {"train/compile_time_s": seconds})
    del metrics
    meter.restart_clock()


def shown_batch(batch: dict) -> dict:
    """A training batch as its grid shows it: one image per example, the first slice of a bag
    and, with 2.5D input, the slice itself without its neighbours."""
    images = batch["image"]
    if images.ndim == 5:  # bags (B, K, S, S, C)
        images = images[:, 0]
    centre = images.shape[-1] // 2
    return {**batch, "image": images[..., centre : centre + 1]}


def _batches(loop: _Loop, start_step: int) -> Iterator[dict]:
    """The training batches; a fresh run first shows TensorBoard what the model is fed."""
    if start_step == 0:
        first = next(loop.grain_iter)
        grid = figures.image_grid(shown_batch(first), class_names=loop.data.class_names)
        loop.writer.write_images(0, {"train/augmented": grid[None]})
        yield first
    yield from loop.grain_iter


def _save_or_stop(loop: _Loop, done: int, state, history) -> tuple[steps.TrainState, bool]:
    """Validates and saves when due; on a preemption notice saves (if not just done). Returns
    the state (with SWA's BatchNorm statistics recomputed before a validation) and whether to
    stop. Every process asks at every step, and all agree on where to stop."""
    saved = False
    if done % loop.plan.eval_every_steps == 0 or done == loop.plan.total_steps:
        _check_finite(history, loop.manager)  # never save a diverged state
        if loop.parts.statistics_pass is not None and swa_statistics.needs_refresh(state):
            state = swa_statistics.refresh(
                state, bags.split_source(loop.data, "train", loop.run.pipeline.neighbours),
                loop.parts.statistics_pass,
                # A training batch's images (a scan model's encoder sees its bags' slices).
                loop.run.pipeline, loop.images_per_step, loop.parts.mesh,
                loop.run.swa_bn_batches,
            )  # fmt: skip
        scalars, selection = _validate(loop, done, state)
        checkpointing.save(loop.manager, done, state, scalars, selection=selection)
        saved = True
    # At the last step too: the final checkpoint is saved, so the test report is skipped and the
    # same command writes it.
    if loop.manager.reached_preemption(done):
        if not saved:
            _check_finite(history, loop.manager)
            checkpointing.save(loop.manager, done, state)
        return state, True
    return state, False


def images_per_step(run: specs.RunSpec, data) -> int:
    """Images in a training batch: the batch, or for a scan model its bags' slices."""
    if not run.pipeline.bags:
        return run.batch_size
    scans = bags.ScanIndex.from_records(data.records("train"), "train")
    return run.batch_size * bags.bag_slices(run.pipeline, scans)


def _validate(loop: _Loop, step: int, state) -> tuple[dict, dict]:
    """Validation of every weight set that exists; (checkpoint metrics, selection). The
    selection also stores each weight set's temperature and thresholds (for `predict`)."""
    run, data = loop.run, loop.data
    names = averaging.available(loop.plan.averages, step)
    predictors = {n: (saved_run.weights_of(state, n), loop.parts.predict_step) for n in names}
    logits = reports.predict_split_multi(
        data, "validation", predictors, run.pipeline, run.batch_size, loop.parts.mesh
    )
    records, task = data.records("validation"), run.task
    per_weights = {n: task.validation_metrics(records, logits[n]) for n in names}
    selection = select_weights(per_weights, run.checkpoint.best_metric, run.checkpoint.best_mode)
    plain = dataclasses.replace(run.evaluation, tta=())
    subjects_known = data.metadata.get("subject_source") != "scan_id"
    selection["calibration"] = {
        n: task.calibrate(records, {"plain": logits[n]}, plain, subjects_known) for n in names
    }
    if data.has_split(task_reports.CALIBRATION):  # prediction sets: on the calibration split
        held_out = reports.predict_split_multi(
            data, task_reports.CALIBRATION, predictors, run.pipeline, run.batch_size,
            loop.parts.mesh,
        )  # fmt: skip
        for n in names:
            both = {"validation": {"plain": logits[n]},
                    task_reports.CALIBRATION: {"plain": held_out[n]}}  # fmt: skip
            selection["calibration"][n]["uncertainty"] = task_reports.uncertainty_source(
                task, data, both, selection["calibration"][n], plain, subjects_known
            )
    selection["class_names"] = list(data.class_names)  # what `predict` and `export` call them
    scalars = {f"validation/{name}/{k}": v for name, m in per_weights.items() for k, v in m.items()}
    # Unqualified names are the selected weights': what the best checkpoint is chosen on.
    scalars.update({f"validation/{k}": v for k, v in per_weights[selection["weights"]].items()})
    loop.writer.write_scalars(
        step,
        {**scalars, "validation/selected_weights": progress.SELECTED_CODE[selection["weights"]]},
    )
    if loop.is_writer:
        loop.writer.write_texts(
            step, {"validation/selection": progress.selection_text(step, selection)}
        )
        title = f"validation, step {step}, {selection['weights']} weights (selected)"
        chosen = logits[selection["weights"]]
        images = task_reports.reporter(task).validation_images(
            records, chosen, data.class_names, title
        )
        loop.writer.write_images(step, images)
        logging.info(progress.validation_line(step, per_weights, selection))
    return scalars, selection


def _test_report(loop: _Loop, saved: saved_run.SavedRun) -> dict:
    """The test report of the best checkpoint, with the weights that won its validation."""
    restored = saved.restore("best", mesh=loop.parts.mesh)
    report = saved_run.evaluate_restored(
        saved,
        loop.data,
        restored,
        "test",
        loop.run.evaluation,
        loop.parts.mesh,
        loop.writer,
        model=loop.parts.model,
    )
    test = {"test/loss": report["loss"]}
    for level in metric_registry.LEVELS:
        m = report.get(level, {})
        prefix = "test/" + metric_registry.level_prefix(level)
        test.update({f"{prefix}{k}": m[k] for k in loop.run.task.metric_names("test")
                     if isinstance(m.get(k), int | float)})  # fmt: skip
    loop.writer.write_scalars(restored.step, test)  # the HParams tab's test columns
    loop.writer.flush()
    return report
