"""Training and evaluation loop: data, model and optimizer, checkpoints, the loop, the report.

Reads top to bottom like the run it performs: prepare the data (generating and building it if
needed), record the run, build the model and optimizer on a ('data',) mesh, restore the latest
checkpoint if there is one, train with periodic logging, validation and checkpoints, then
evaluate the best checkpoint on the test split through `reports.evaluate_weights` (the same
path as `python -m alz_jax.evaluate`): report_test.json/.md, predictions and figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import time

import jax
import ml_collections
import numpy as np
from clu import periodic_actions

from alz_jax.core import averaging, checkpointing, sharding, steps
from alz_jax.data import dataset, input_pipeline
from alz_jax.evaluation import figures, metrics, reports
from alz_jax.host import logs, profiling, storage
from alz_jax.host.errors import UserError
from alz_jax.models import convert, convnext
from alz_jax.run import config_lib, run_record


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
    manager.wait_until_finished()
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


def _train_scalars(fetched: list[dict], elapsed: float, wait_time: float) -> dict:
    """Means of the step metrics since the last log (fetched from device at the log only)."""
    scalars = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    scalars["train/step_time_s"] = elapsed / len(fetched)
    scalars["train/data_wait_s"] = wait_time / len(fetched)
    return scalars


def weights_of(state: steps.TrainState, name: str):
    """The parameters to evaluate for `name` (raw, ema, swa), in float32."""
    tree = state["params"] if name == "raw" else state[name]
    return jax.tree.map(lambda x: x.astype(np.float32), tree)


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
    config_lib.validate(config)  # before any data work or compile
    workdir = storage.path(workdir)  # local or gs://
    if not checkpointing.has_checkpoint(workdir):  # a resume doesn't read model.init_from
        config_lib.check_init_from_file(config.model.get("init_from", ""))
    workdir.mkdir(parents=True, exist_ok=True)
    is_writer = jax.process_index() == 0

    # ---- Data: the user's ADNI folder or the synthetic stand-in, built into TFDS once. ----
    data = dataset.prepare(config.data, timer=timer)
    global_batch = config.batch_size
    steps_per_epoch = data.num_examples("train") // global_batch
    if steps_per_epoch == 0:
        raise UserError(
            f"batch_size {global_batch} exceeds the {data.num_examples('train')} training images."
        )
    total_steps = config_lib.num_train_steps(config, steps_per_epoch)
    warmup_steps = config_lib.duration_steps(config, "warmup", steps_per_epoch)
    eval_every = max(1, config_lib.duration_steps(config, "eval_every", steps_per_epoch))
    config_lib.validate_durations(config, total_steps, warmup_steps)
    averages = config_lib.averaging_spec(config, total_steps, steps_per_epoch)
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

    # ---- Model, optimizer and train state on a ('data',) mesh over every process's devices. ----
    mesh = sharding.make_mesh()
    spec = convnext.spec_from_config(config.model, config_lib.compute_dtype(config))
    model = steps.make_model(spec)
    tx, schedule = steps.make_optimizer(config, total_steps, warmup_steps)
    manager = checkpointing.make_manager(workdir, config.checkpoint, for_training=True)
    # The data iterator is checkpointed with the model: a resume continues the same stream.
    grain_iter = iter(
        input_pipeline.train_dataset(
            train_source, config, global_batch, seed=config.seed, total_steps=total_steps
        )
    )
    start_step = manager.latest_step() or 0
    if start_step:
        abstract = steps.abstract_train_state(spec, tx, mesh, averages)
        state = checkpointing.restore(manager, start_step, abstract, grain_iter)
        logging.info("Resumed from checkpoint at step %d", start_step)
    else:
        state = steps.create_train_state(
            spec, tx, mesh, config.seed, averages, _imported_params(config, spec)
        )
    train_step = steps.make_train_step(model, tx, schedule, config, pixel_stats, mesh, averages)
    predict_step = steps.make_predict_step(model, pixel_stats, mesh)
    logging.info(
        "Model %s, compute %s, step %s, %d microbatch(es) per step, averages %s on %d devices "
        "of %d process(es)",
        spec.dims, spec.dtype, config.get("step_impl", "jit"), config.get("grad_accum_steps", 1),
        averaging.available(averages, total_steps), jax.device_count(), jax.process_count(),
    )  # fmt: skip

    # ---- Metric writers and progress reporting (process 0 writes). ----
    writer = logs.create_writer(workdir, is_writer)
    if start_step == 0:
        writer.write_hparams(_flat_hparams(config))
    progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)

    eval_settings = reports.EvalSettings.from_config(config)
    val_subjects_known = data.report_metadata().get("subject_source") != "scan_id"

    def run_validation(step: int, state) -> tuple[dict, dict]:
        """Validation of every weight set that exists; (checkpoint metrics, selection). The
        selection also stores each weight set's temperature and thresholds (for `predict`)."""
        names = averaging.available(averages, step)
        with progress.timed("eval"):
            logits = reports.predict_split_multi(
                data, "validation", {n: (weights_of(state, n), predict_step) for n in names},
                config, mesh,
            )  # fmt: skip
        per_weights = {n: reports.validation_metrics(val_records, logits[n]) for n in names}
        selection = select_weights(
            per_weights, config.checkpoint.best_metric, config.checkpoint.best_mode
        )
        plain = dataclasses.replace(eval_settings, tta=())
        selection["calibration"] = {
            n: reports.calibrate(val_records, {"plain": logits[n]}, plain, val_subjects_known)
            for n in names
        }
        scalars = {
            f"validation/{name}/{k}": v for name, m in per_weights.items() for k, v in m.items()
        }
        # Unqualified names are the selected weights': what the best checkpoint is chosen on.
        scalars.update({f"validation/{k}": v for k, v in per_weights[selection["weights"]].items()})
        writer.write_scalars(step, scalars)
        if is_writer:
            writer.write_images(step, validation_images(val_records, logits[selection["weights"]]))
        logging.info("Step %d: %s weights selected (%s)", step, selection["weights"],
                     selection["values"])  # fmt: skip
        return scalars, selection

    def save_or_stop(done: int, state, history) -> bool:
        """Validates and saves when due; on a preemption notice saves (if not just done) and
        returns True. Every process asks at every step, and all agree on where to stop."""
        saved = False
        if done % eval_every == 0 or done == total_steps:
            _check_finite(history, manager)  # never save a diverged state
            val, selection = run_validation(done, state)
            checkpointing.save(
                manager, done, state, val, data_iterator=grain_iter, selection=selection
            )
            saved = True
        # At the last step too: the final checkpoint is saved, so the test report is skipped and
        # the same command writes it.
        if manager.reached_preemption(done):
            if not saved:
                _check_finite(history, manager)
                checkpointing.save(manager, done, state, data_iterator=grain_iter)
            return True
        return False

    # ---- The training loop. ----
    batch_sharding = sharding.batch_sharded(mesh)
    preempted_at = None
    profile = config.get("profile", {})
    trace_window = profiling.TraceWindow(
        workdir / "profile", profile.get("start_step", 0), profile.get("num_steps", 0)
    )
    with timer("train"), contextlib.closing(grain_iter), contextlib.closing(trace_window):
        try:
            if start_step < total_steps:
                train_iter = grain_iter
                if start_step == 0:  # what the model is fed, to TensorBoard once
                    first = next(grain_iter)
                    writer.write_images(0, {"train/augmented": figures.image_grid(first)[None]})
                    train_iter = itertools.chain([first], grain_iter)
                history, wait_time, interval_start = [], 0.0, time.perf_counter()
                eval_time = 0.0  # validation and saving, kept out of the step time
                for step in range(start_step, total_steps):
                    wait_start = time.perf_counter()
                    batch = next(train_iter)
                    wait_time += time.perf_counter() - wait_start
                    trace_window.before_step(step)
                    with jax.profiler.StepTraceAnnotation("train", step_num=step):
                        state, step_metrics = train_step(
                            state, input_pipeline.to_global(batch, batch_sharding)
                        )
                    trace_window.after_step(step, step_metrics)
                    done = step + 1
                    history.append((done, step_metrics))
                    progress(done)
                    if done % config.log_every_steps == 0 or done == total_steps:
                        fetched = _check_finite(history, manager)
                        elapsed = time.perf_counter() - interval_start - eval_time
                        scalars = _train_scalars(fetched, elapsed, wait_time)
                        scalars["train/epoch"] = done / steps_per_epoch
                        writer.write_scalars(done, scalars)
                        history, wait_time, interval_start = [], 0.0, time.perf_counter()
                        eval_time = 0.0
                    eval_start = time.perf_counter()
                    if save_or_stop(done, state, history):
                        preempted_at = done
                        break
                    eval_time += time.perf_counter() - eval_start
        finally:
            # Also on an exception: let an in-flight checkpoint finish rather than lose it.
            manager.wait_until_finished()
    writer.flush()
    if preempted_at is not None:
        logging.warning(
            "Preemption requested: saved the checkpoint of step %d in %s; run the same command "
            "to continue.", preempted_at, manager.directory,
        )  # fmt: skip
        return {"preempted_at_step": preempted_at}

    # ---- Test report from the best checkpoint, with the weights that won validation. ----
    with timer("test evaluation"):
        step, weights, params, selection = restore_weights(manager, "best", model.spec, averages)
        report = reports.evaluate_weights(
            data=data, model=model, params=params, pixel_stats=pixel_stats, config=config,
            mesh=mesh, split="test", step=step, weights=weights, selection=selection,
            workdir=workdir, settings=eval_settings, writer=writer,
        )  # fmt: skip
    writer.flush()
    report["stage_seconds"] = {k: round(v, 1) for k, v in timer.seconds.items()}
    reports.write_report(report, workdir)
    return report


def _imported_params(config: ml_collections.ConfigDict, spec: convnext.ConvNeXtSpec):
    """The starting weights named by model.init_from (e.g. ImageNet weights from torchvision or
    timm), or None for a fresh initialisation."""
    if not config.model.get("init_from"):
        return None
    return convert.init_params_from(config.model.init_from, spec, config.seed)


def validation_images(records: dict, logit_ad: np.ndarray) -> dict[str, np.ndarray]:
    """TensorBoard images of a validation: ROC/PR curves (slice, scan) and the scan-level
    confusion matrix at 0.5."""
    units = metrics.level_units(records, metrics.sigmoid(logit_ad), subjects_known=False)
    scan = metrics.classification_metrics(units["scan"].labels, units["scan"].probs)
    return {
        "validation/roc": figures.to_image(figures.roc_figure(units))[None],
        "validation/confusion_scan": figures.to_image(
            figures.confusion_figure({"scan": scan["confusion_matrix"]["counts"]}, {"scan": 0.5})
        )[None],
    }


def restore_weights(
    manager, which: str, spec: convnext.ConvNeXtSpec, averages: averaging.AveragingSpec,
    weights: str = "selected", mesh=None,
) -> tuple[int, str, dict, dict | None]:  # fmt: skip
    """Restores one weight set of checkpoint `which` ('best', 'latest', step), float32 and
    replicated: `weights` raw, ema, swa, or 'selected' (those that won that checkpoint's
    validation; raw if it recorded none). Returns (step, weights name, params, selection)."""
    step = checkpointing.resolve_step(manager, which)
    selection = checkpointing.restore_selection(manager, step)
    if weights == "selected":
        if selection is None:
            logging.warning(
                "Checkpoint %d was saved without a validation (a preemption save): raw weights.",
                step,
            )
        weights = selection["weights"] if selection else "raw"
    averaging.check_weights_name(weights, averages)
    repl = sharding.replicated(mesh or sharding.make_mesh())
    shapes = jax.eval_shape(lambda: convnext.init_params(spec, 0))
    dtype = {"raw": spec.param_dtype, "ema": averages.ema_dtype, "swa": averages.swa_dtype}
    key = "params" if weights == "raw" else weights
    abstract = {
        key: jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, dtype[weights], sharding=repl), shapes
        )
    }
    if weights == "swa":
        abstract["swa_count"] = jax.ShapeDtypeStruct((), np.int32, sharding=repl)
    restored = checkpointing.restore_weights(manager, step, abstract)
    if weights == "swa" and int(restored["swa_count"]) == 0:
        raise UserError(f"Checkpoint {step} holds no SWA average yet (SWA starts at step "
                        f"{averages.swa_start_step}).")  # fmt: skip
    params = jax.tree.map(lambda x: x.astype(np.float32), restored[key])
    return step, weights, params, selection


def evaluate_checkpoint(
    workdir: str, split: str, which: str, weights: str = "selected", overrides: dict | None = None
) -> dict:
    """Evaluates checkpoint `which` of the run in `workdir` on `split` and writes its report,
    predictions and figures; `overrides` replace config.eval fields."""
    config = run_record.load_config(workdir)
    record = run_record.load(workdir)
    settings = reports.EvalSettings.from_config(config, **(overrides or {}))
    data = dataset.prepare(config.data)
    if data.fingerprint() != record["identity"]["data"]["fingerprint"]:
        raise UserError(
            f"The data set now at {data.data_dir} differs from the one the run in {workdir} "
            "was trained on (fingerprints differ)."
        )
    config_lib.validate_batch(config, jax.device_count(), jax.process_count())
    mesh = sharding.make_mesh()
    steps_per_epoch = max(1, data.num_examples("train") // config.batch_size)
    total_steps = config_lib.num_train_steps(config, steps_per_epoch)
    spec = convnext.spec_from_config(config.model, config_lib.compute_dtype(config))
    averages = config_lib.averaging_spec(config, total_steps, steps_per_epoch)
    manager = checkpointing.make_manager(workdir, config.checkpoint)
    step, weights, params, selection = restore_weights(
        manager, which, spec, averages, weights, mesh
    )
    # The evaluation's figures go to TensorBoard beside the run's, under <workdir>/evaluate.
    (storage.path(workdir) / "evaluate").mkdir(exist_ok=True)
    writer = logs.create_writer(storage.path(workdir) / "evaluate", jax.process_index() == 0)
    report = reports.evaluate_weights(
        data=data, model=steps.make_model(spec), params=params,
        pixel_stats=record["pixel_stats"], config=config, mesh=mesh, split=split, step=step,
        weights=weights, selection=selection, workdir=workdir, settings=settings, writer=writer,
    )  # fmt: skip
    writer.close()
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
