"""One way to reopen a training run from its workdir: its config, record, run spec and task,
its checkpoints and the weights of `raw`, `ema` or `swa`, and its data set.

    saved = SavedRun.open("runs/convnext_t")
    restored = saved.restore("best")            # the weights that won that validation
    report = saved.evaluate("test", "best")     # what `evaluate` writes
    loaded = saved.load_model("best", "ema")    # what `predict`, `export` and `compare` use

`evaluate`, `predict`, `export`, `compare`, `cross_validate` and the end of training all reopen
a run here, so they agree on which weights, which averages and which calibration they use.
Reading the weights needs no data set; evaluating checks that the data set is the one the run
was trained on.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path

import jax
import ml_collections
import numpy as np

from alz_jax.core import averaging, checkpointing, sharding, steps
from alz_jax.data import dataset
from alz_jax.evaluation import task_reports, tasks
from alz_jax.host import storage, writers
from alz_jax.host.errors import UserError
from alz_jax.models import registry, scan
from alz_jax.run import run_record, specs

# One compiled conversion of a whole tree: converting leaf by leaf compiles a program per leaf
# shape (about 200 for bfloat16 EMA and SWA weights) in every new process.
_as_float32 = jax.jit(lambda tree: jax.tree.map(lambda x: x.astype(np.float32), tree))


@dataclasses.dataclass(frozen=True)
class Restored:
    """One weight set of one checkpoint, float32 and replicated."""

    step: int
    weights: str  # raw, ema or swa
    params: dict  # what the model evaluates (with BatchNorm {"params", "batch_stats"})
    selection: dict | None  # the checkpoint's validation record, if it saved one


def weights_of(state: steps.TrainState, name: str):
    """The weights to evaluate for `name` (raw, ema, swa) of a train state, in float32: the
    parameters, with BatchNorm {"params", "batch_stats"} (steps.Model.split)."""
    if name != "raw":
        return _as_float32(state[name])
    if "batch_stats" in state:
        return _as_float32({"params": state["params"], "batch_stats": state["batch_stats"]})
    return _as_float32(state["params"])


def _abstract_weights(spec, averages: averaging.AveragingSpec, weights: str, mesh) -> dict:
    """What a restore of weight set `weights` fills: shapes, dtypes, replicated shardings."""
    repl = sharding.replicated(mesh)
    params_shapes, stats_shapes = jax.eval_shape(lambda: registry.init_variables(spec, 0))
    dtype = {"raw": spec.param_dtype, "ema": averages.ema_dtype, "swa": averages.swa_dtype}[weights]

    def abstract_of(shapes, dtype):
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype, sharding=repl), shapes)

    scalar = jax.ShapeDtypeStruct((), np.int32, sharding=repl)
    if not stats_shapes:
        key = "params" if weights == "raw" else weights
        abstract = {key: abstract_of(params_shapes, dtype)}
    elif weights == "raw":
        abstract = {"params": abstract_of(params_shapes, dtype),
                    "batch_stats": abstract_of(stats_shapes, np.float32)}  # fmt: skip
    else:
        abstract = {weights: {"params": abstract_of(params_shapes, dtype),
                              "batch_stats": abstract_of(stats_shapes, dtype)}}  # fmt: skip
        if weights == "swa":
            abstract["swa_stats_count"] = scalar
    if weights == "swa":
        abstract["swa_count"] = scalar
    return abstract


def restore_weights(
    manager, which: str, spec, averages: averaging.AveragingSpec,
    weights: str = "selected", mesh=None,
) -> Restored:  # fmt: skip
    """Restores one weight set of checkpoint `which` ('best', 'latest', step), float32 and
    replicated: `weights` raw, ema, swa, or 'selected' (those that won that checkpoint's
    validation; raw if it recorded none)."""
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
    abstract = _abstract_weights(spec, averages, weights, mesh or sharding.make_mesh())
    restored = checkpointing.restore_weights(manager, step, abstract)
    if weights == "swa" and int(restored["swa_count"]) == 0:
        raise UserError(f"Checkpoint {step} holds no SWA average yet (SWA starts at step "
                        f"{averages.swa_start_step}).")  # fmt: skip
    if "swa_stats_count" in restored and int(restored["swa_stats_count"]) != int(
        restored["swa_count"]
    ):
        raise UserError(
            f"Checkpoint {step} was saved before the SWA weights' BatchNorm statistics were "
            "recomputed (a preemption save): evaluate --checkpoint=best, or resume the run."
        )
    if "batch_stats" in restored:
        params = _as_float32({"params": restored["params"], "batch_stats": restored["batch_stats"]})
    else:
        params = _as_float32(restored["params" if weights == "raw" else weights])
    return Restored(step, weights, params, selection)


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """A training run as its workdir holds it."""

    workdir: str
    config: ml_collections.ConfigDict
    record: dict  # run/record.json: data fingerprint, pixel statistics, identity
    spec: specs.RunSpec
    # The weight averages, with SWA's start when the data set is known (plan_for).
    averages: averaging.AveragingSpec
    # The training's own checkpoint manager, when a training evaluates at its end.
    checkpoint_manager: object | None = None

    @classmethod
    def open(cls, workdir: str) -> SavedRun:
        """The run in `workdir` (a UserError names what is missing)."""
        config = run_record.load_config(workdir)
        record = run_record.load(workdir)
        spec = specs.resolve(config)
        if "task" in record:  # resolved for the data set's classes when it trained
            stored = record["task"]
            spec = dataclasses.replace(spec, task=tasks.for_classes(
                stored["num_classes"], stored["kind"], stored.get("options")))  # fmt: skip
        return cls(str(workdir), config, record, spec, spec.averages)

    @property
    def pixel_stats(self) -> dict:
        """The train split's pixel mean and std the model normalises with."""
        return self.record["pixel_stats"]

    @functools.cached_property
    def manager(self):
        """The Orbax manager of the run's checkpoints: the training's, or one that reads."""
        if self.checkpoint_manager is not None:
            return self.checkpoint_manager
        return checkpointing.make_manager(self.workdir, self.spec.checkpoint)

    def model(self) -> steps.Model:
        """The run's model, its predict step returning the task's outputs."""
        return steps.make_model(self.spec.model, outputs=self.spec.task.device_outputs)

    def open_data(self) -> tuple[dataset.AdniData, SavedRun]:
        """The run's data set, checked to be the one it was trained on, and this run with its
        averages planned over that data (SWA's start in steps)."""
        data = dataset.prepare(self.spec.data)
        spec = self.spec.with_classes(data.class_names)
        if data.fingerprint() != self.record["identity"]["data"]["fingerprint"]:
            raise UserError(
                f"The data set now at {data.data_dir} differs from the one the run in "
                f"{self.workdir} was trained on (fingerprints differ)."
            )
        bags = self.spec.pipeline.bags
        steps_per_epoch = max(1, len(specs.train_labels(data, bags)) // self.spec.batch_size)
        plan = self.spec.plan(steps_per_epoch, specs.train_class_counts(data, bags))
        return data, dataclasses.replace(self, spec=spec, averages=plan.averages)

    def restore(self, which: str = "best", weights: str = "selected", mesh=None) -> Restored:
        """One weight set of checkpoint `which` (see restore_weights)."""
        return restore_weights(self.manager, which, self.spec.model, self.averages, weights, mesh)

    def calibration(self, restored: Restored) -> dict:
        """The temperature (and thresholds) chosen on validation for the restored weights, as
        stored with the checkpoint; the task's neutral one, with a warning, when none was."""
        stored = (restored.selection or {}).get("calibration", {}).get(restored.weights)
        if stored is not None:
            return stored
        logging.warning("Checkpoint %d stores no validation calibration for %s weights: %s.",
                        restored.step, restored.weights,
                        self.spec.task.uncalibrated_text)  # fmt: skip
        return self.spec.task.uncalibrated()

    def class_names(self, restored: Restored) -> list[str]:
        """The class names stored with the checkpoint (the task's defaults for older ones)."""
        stored = (restored.selection or {}).get("class_names")
        return list(stored) if stored else self.spec.task.default_class_names()

    def load_model(self, which: str = "best", weights: str = "selected") -> dict:
        """The model, weights, pixel statistics, image size, calibration and class names of
        checkpoint `which`, for predicting images; reads no data set."""
        mesh = sharding.make_mesh()
        restored = self.restore(which, weights, mesh)
        return {
            "model": self.model(),
            "params": restored.params,
            "mesh": mesh,
            "pixel_stats": self.pixel_stats,
            "image_size": self.spec.pipeline.image_size,
            "step": restored.step,
            "weights": restored.weights,
            "calibration": self.calibration(restored),
            "class_names": self.class_names(restored),
            "task": self.spec.task,
            "workdir": self.workdir,
        }

    def about(self, data) -> dict:
        """What a report says it is about: the model (family, title, shape, parameters), the
        config file the run was started with, and the data folder the data set was built from,
        and whether it is the synthetic stand-in."""
        model, spec = self.spec.model, self.spec.data
        shape = {k: v for k, v in registry.export_fields(model).items() if isinstance(v, list)}
        synthetic = not spec.manual_dir and spec.synthetic_seed is not None
        return {
            "model": {"family": registry.family(model).name, "title": registry.title(model),
                      "shape": shape, "parameters": registry.count_params(model)},
            "config": config_name(self.workdir),
            "data": {
                "folder": str(data.manual_dir), "synthetic": synthetic,
                "synthetic_text": f"data.synthetic_seed {spec.synthetic_seed}, layout "
                f"{spec.synthetic_layout}, difficulty {spec.synthetic_difficulty}"
                if synthetic else None,
            },
        }  # fmt: skip

    def evaluate(
        self, split: str, which: str = "best", weights: str = "selected",
        overrides: dict | None = None,
    ) -> dict:  # fmt: skip
        """Evaluates checkpoint `which` on `split` and writes its report, predictions and
        figures into the workdir (figures also to TensorBoard under <workdir>/evaluate);
        `overrides` replace config.eval fields."""
        settings = specs.eval_settings(self.config.eval, **(overrides or {}))
        data, planned = self.open_data()
        mesh = sharding.make_mesh()
        restored = planned.restore(which, weights, mesh)
        (storage.path(self.workdir) / "evaluate").mkdir(exist_ok=True)
        writer = writers.create_writer(
            storage.path(self.workdir) / "evaluate", jax.process_index() == 0
        )
        report = evaluate_restored(planned, data, restored, split, settings, mesh, writer)
        writer.close()
        return report


def run_variables(value: str, spec, seed: int, mesh=None) -> tuple[dict, dict]:
    """The starting (params, batch_stats) of `spec` named by model.init_from = 'run:WORKDIR':
    the selected weights of that run's best checkpoint. They must fit `spec` (a run of the same
    model: it continues from them) or, from a slice run, a scan model's encoder (whose
    aggregator starts fresh from `seed`); compute dtype and regularisation may differ."""
    workdir = value.removeprefix(specs.RUN_PREFIX)
    source = SavedRun.open(workdir)
    trained = source.spec.model
    into_encoder = isinstance(spec, scan.ScanSpec) and not isinstance(trained, scan.ScanSpec)
    target = spec.encoder if into_encoder else spec
    mismatch = _shape_mismatch(trained, target)
    if mismatch:
        raise UserError(
            f"config.model.init_from = {value!r}: that run trained {registry.title(trained)}, "
            f"whose weights do not fit {registry.title(target)}: {mismatch}. Start from a run "
            "of the same model (family, sizes, classes, channels)."
        )
    restored = source.restore("best", mesh=mesh)
    params, stats = steps.make_model(trained).split(restored.params)
    logging.info("Starting from the %s weights of step %d of the run in %s", restored.weights,
                 restored.step, workdir)  # fmt: skip
    if not into_encoder:
        return params, stats
    fresh_params, fresh_stats = registry.init_variables(spec, seed)
    return (scan.load_slice_weights(fresh_params, params),
            scan.load_slice_weights(fresh_stats, stats) if stats else fresh_stats)  # fmt: skip


def _shape_mismatch(trained, target) -> str:
    """The first parameter or statistic whose path or shape differs between two models' trees
    ('' when they fit each other)."""
    shapes = [
        {jax.tree_util.keystr(p): tuple(v.shape) for tree in trees
         for p, v in jax.tree_util.tree_leaves_with_path(tree)}
        for trees in (jax.eval_shape(lambda s=s: registry.init_variables(s, 0))
                      for s in (trained, target))
    ]  # fmt: skip
    for path in sorted(set(shapes[0]) | set(shapes[1])):
        if shapes[0].get(path) != shapes[1].get(path):
            return (f"at {path} the run has {shapes[0].get(path, 'nothing')}, this model "
                    f"{shapes[1].get(path, 'nothing')}")  # fmt: skip
    return ""


# Commands that train a default config when their command line names none (older runs'
# starts.jsonl has no config_file): `python -m alz_jax.demo` trains configs/demo.py.
_DEFAULT_CONFIGS = {"demo": "demo.py"}


def config_name(workdir) -> str | None:
    """The file name of the config the run in `workdir` was first started with, from
    run/starts.jsonl (its `config_file`, or for older runs the --config of its command line,
    or the config its command trains by default), or None where that start named none (a run
    started from Python) or there is no readable starts.jsonl."""
    path = storage.path(workdir) / "run" / "starts.jsonl"
    try:
        lines = path.read_text().splitlines() if path.exists() else []
        start = json.loads(lines[0]) if lines else {}
    except (OSError, ValueError):
        return None
    if start.get("config_file"):
        return start["config_file"]
    argv = [str(a) for a in start.get("argv", [])]
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith(("--config=", "-config=")) else (
            argv[i + 1] if arg in ("--config", "-config") and i + 1 < len(argv) else None
        )  # fmt: skip
        if value:
            return Path(value.partition(":")[0]).name
    return _DEFAULT_CONFIGS.get(Path(argv[0]).stem) if argv else None


def read_predictions(folder, split: str, report: dict) -> tuple[dict, np.ndarray]:
    """(records, probabilities) of the predictions CSV of `split` in a run's folder, read by
    the task its report names; refuses a file whose image count differs from the report's."""
    path = storage.path(folder) / f"predictions_{split}.csv"
    records, probs = tasks.of_report(report).read_predictions(path, report.get("class_names") or ())
    if "num_images" in report and len(probs) != report["num_images"]:
        raise UserError(
            f"{path} holds {len(probs)} images, but report_{split}.json reports "
            f"{report['num_images']}: the two files are from different evaluations. Evaluate "
            f"again: python -m alz_jax.evaluate --workdir={folder} --split={split}"
        )
    return records, probs


def evaluate_restored(
    saved: SavedRun, data, restored: Restored, split: str, settings, mesh, writer=None,
    model: steps.Model | None = None,
) -> dict:  # fmt: skip
    """The report of `restored` weights on `split` (task_reports.evaluate_weights)."""
    return task_reports.evaluate_weights(
        saved.spec.task, data=data, model=model or saved.model(), params=restored.params,
        pixel_stats=saved.pixel_stats, pipeline=saved.spec.pipeline,
        batch_size=saved.spec.batch_size, mesh=mesh, split=split, step=restored.step,
        weights=restored.weights, selection=restored.selection, workdir=saved.workdir,
        settings=settings, writer=writer, about=saved.about(data),
    )  # fmt: skip
