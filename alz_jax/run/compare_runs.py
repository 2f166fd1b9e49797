"""The library of `python -m alz_jax.compare`: load several runs' reports and predictions on one
split, check that they were tested on the same images, measure each model's cost on this
machine, evaluate each under graded perturbations, and write compare.md, compare.json and the
figures.

    result = compare_runs.compare(["runs/convnext", "runs/vit"], "runs/compare", CompareSettings())

What each number means is in docs/compare.md; the statistics are in
`alz_jax.evaluation.compare_stats`, the perturbations in `alz_jax.evaluation.robustness`.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import fcntl
import io
import json
import logging
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

from alz_jax.core import sharding, steps
from alz_jax.data import dataset
from alz_jax.evaluation import compare_stats as stats
from alz_jax.evaluation import figures, metrics, reports, robustness, scan_methods, tasks
from alz_jax.host import profiling, storage, workdir_lock
from alz_jax.host.errors import UserError
from alz_jax.models import registry
from alz_jax.run import assembly, saved_run, specs
from alz_jax.run.saved_run import SavedRun

# The default throughput batch: the run's batch size, but no larger than this (a recipe's
# accelerator batch of 512 would take minutes per step on a CPU).
MAX_DEFAULT_BATCH = 128
# Level-0 (clean) probabilities further than this from the predictions file get a note.
CLEAN_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class CompareSettings:
    """What a comparison measures (the command's flags)."""

    split: str = "test"
    resamples: int = 1000
    seed: int = 0  # of the subject resamples and of the perturbations
    batch: int = 0  # throughput batch; 0: the run's batch size, capped at MAX_DEFAULT_BATCH
    warmup_steps: int = 2
    timed_steps: int = 5  # 0: no throughput or memory measurement
    perturbations: tuple[str, ...] = tuple(robustness.PERTURBATIONS)
    levels: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    evaluate_missing: bool = True  # evaluate the best checkpoint of a run without a report
    # Add each slice run's position-weighted soft vote (ClinicaDL's) as a model of its own.
    weighted_vote: bool = False

    def __post_init__(self):
        checks = [
            ("split", self.split, self.split in dataset.SPLITS, "|".join(dataset.SPLITS)),
            ("resamples", self.resamples, self.resamples >= 1, ">= 1"),
            ("seed", self.seed, self.seed >= 0, ">= 0"),
            ("batch", self.batch, self.batch >= 0, ">= 0 (0: the run's batch size)"),
            ("warmup_steps", self.warmup_steps, self.warmup_steps >= 0, ">= 0"),
            ("timed_steps", self.timed_steps, self.timed_steps >= 0, ">= 0 (0: not measured)"),
        ]
        for flag, value, ok, expected in checks:
            if not ok:  # named as the command's flag, where the value came from
                raise UserError(f"--{flag}={value}: expected {expected}.")
        unknown = [
            p for p in (*self.perturbations, *self.levels) if p not in robustness.PERTURBATIONS
        ]
        if unknown:
            raise UserError(
                f"Unknown perturbations {unknown}; expected some of "
                f"{', '.join(robustness.PERTURBATIONS)}."
            )

    def curve_levels(self, name: str) -> list[float | None]:
        """The levels of perturbation `name`'s curve, the clean level included."""
        levels = self.levels.get(name, robustness.PERTURBATIONS[name].default_levels)
        return robustness.curve_levels(name, levels)


@dataclasses.dataclass(frozen=True)
class Run:
    """One compared run: its name, the saved run, its report and predictions on the split."""

    name: str
    saved: SavedRun
    report: dict
    predictions: stats.Predictions
    # The soft vote of a slice run (compare --weighted_vote): its slice positions' weights.
    vote_weights: dict[int, float] | None = None

    @property
    def workdir(self) -> str:
        """The run's workdir."""
        return self.saved.workdir

    @property
    def spec(self) -> specs.RunSpec:
        """The run's resolved spec."""
        return self.saved.spec

    @property
    def record(self) -> dict:
        """The run's record (data fingerprint, pixel statistics)."""
        return self.saved.record

    @property
    def class_names(self) -> list[str]:
        """The classes its report names (its task's defaults for reports before the field)."""
        return self.report.get("class_names") or self.spec.task.default_class_names()

    @property
    def title(self) -> str:
        """The model's human name from the registry."""
        return registry.title(self.spec.model)


# ---- Names. ----


def run_names(workdirs: Sequence[str]) -> list[str]:
    """A name per workdir: its last folder, with parent folders added until names differ."""
    parts = [os.path.normpath(os.fspath(w)).rstrip("/").split("/") for w in workdirs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise UserError(f"--workdirs names one workdir twice: {', '.join(map(str, workdirs))}.")


def config_name(workdir: str) -> str | None:
    """The name of the config the run in `workdir` was started with (`demo_resnet` for
    --config=configs/demo_resnet.py; saved_run.config_name), None where unknown."""
    name = saved_run.config_name(workdir)
    return os.path.splitext(name)[0] if name else None


def family_label(model: registry.ModelSpec) -> str:
    """The model's family as its title spells it ('ConvNeXt', 'ResNet', 'Simple CNN'), or the
    family's registered name where the title starts otherwise."""
    name = registry.family(model).name.replace("_", " ")
    title = registry.title(model)
    return title[: len(name)] if title.lower().startswith(name) else name


def default_names(workdirs: Sequence[str], saved: Sequence[SavedRun]) -> list[str]:
    """A name per run: its config's name and model family ('demo_resnet (ResNet)'; the
    workdir's last folder for a run whose config file is unknown), with the workdir added in
    brackets to names that two runs share."""
    folders = run_names(workdirs)
    names = [
        f"{config_name(w) or os.path.basename(f)} ({family_label(s.spec.model)})"
        for w, f, s in zip(workdirs, folders, saved, strict=True)
    ]
    return [f"{n} [{f}]" if names.count(n) > 1 else n for n, f in zip(names, folders, strict=True)]


def check_names(names: Sequence[str], workdirs: Sequence[str]) -> list[str]:
    """The --names of the runs, checked: one non-empty, distinct name per workdir."""
    names = [n.strip() for n in names]
    if len(names) != len(workdirs):
        raise UserError(
            f"--names gives {len(names)} names for {len(workdirs)} --workdirs; expected one "
            "name per workdir, in the same order (or no --names: each run's config and model)."
        )
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise UserError(
            f"--names: name {empty[0]} of {len(names)} is empty; expected a name per workdir."
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--names gives {twice[0]!r} twice; expected a different name per run.")
    return names


# ---- The lock of a run that is training. ----


def _lock_holder(path) -> dict:
    """What a run.lock file says of its holder ({} when it says nothing readable)."""
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _training_error(workdir: str, holder: dict) -> UserError:
    host = holder.get("host")
    where = f" on host {host}" if host and host != socket.gethostname() else ""
    return UserError(
        f"{workdir}: a run is training there (pid {holder.get('pid', 'unknown')}{where}, "
        f"{workdir_lock.LOCK_NAME}); compare it when it ends."
    )


@contextlib.contextmanager
def no_training(workdirs: Sequence[str]) -> Iterator[None]:
    """Refuses (a UserError naming it) a workdir whose run holds its run.lock, i.e. is still
    training, before anything is read or written; and holds a shared lock on each local run.lock
    for the `with` block, so that no training starts in a compared workdir meanwhile (its start
    is refused as for a second run)."""
    with contextlib.ExitStack() as stack:
        for workdir in workdirs:
            path = storage.path(workdir) / workdir_lock.LOCK_NAME
            if storage.is_url(path):  # object storage: the file is the lock (workdir_lock.py)
                if path.exists():
                    holder = _lock_holder(path)
                    here = holder.get("host") == socket.gethostname()
                    # A holder on this host whose process is gone left a stale lock file.
                    if not (here and not workdir_lock.pid_alive(holder.get("pid"))):
                        raise _training_error(workdir, holder)
                continue
            try:
                f = stack.enter_context(open(os.fspath(path)))
            except FileNotFoundError:  # never trained under a lock
                continue
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _training_error(workdir, _lock_holder(path)) from None
        yield


# ---- Loading. ----


def _read_predictions(workdir, split: str, report: dict) -> stats.Predictions:
    """A run's predictions on `split` with its report's task, thresholds and calibration bins."""
    task = tasks.of_report(report)
    records, probs = saved_run.read_predictions(workdir, split, report)
    return stats.Predictions(
        records=records,
        probs=probs,
        subjects_known=report["subjects_known"],
        thresholds=task.thresholds_of(report),
        n_bins=len(report["slice"]["calibration"]["edges"]) - 1,
        task=task,
        conformal={
            level: m["conformal"]
            for level, m in (report.get("uncertainty") or {}).get("levels", {}).items()
        },
    )


def load_run(
    workdir: str, name: str, split: str, evaluate_missing: bool, saved: SavedRun | None = None
) -> Run:
    """A run's spec, record, report and predictions on `split` (`saved`: the run, if opened
    already); the best checkpoint is evaluated first when the report or predictions file is
    missing (or a UserError, if not allowed)."""
    saved = saved or SavedRun.open(os.fspath(workdir))
    folder = storage.path(workdir)
    report_path = folder / f"report_{split}.json"
    predictions_path = folder / f"predictions_{split}.csv"
    if not (report_path.exists() and predictions_path.exists()):
        if not evaluate_missing:
            raise UserError(
                f"{workdir} has no {report_path.name} and {predictions_path.name}: evaluate it "
                f"first (python -m alz_jax.evaluate --workdir={workdir} --split={split}) or "
                "drop --noevaluate_missing."
            )
        logging.info("%s has no %s report: evaluating its best checkpoint.", workdir, split)
        saved.evaluate(split, "best")
    report = json.loads(report_path.read_text())
    if report.get("split") != split:
        raise UserError(
            f"{report_path} is the report of split {report.get('split')!r}; expected {split!r}."
        )
    return Run(name, saved, report, _read_predictions(workdir, split, report))


def with_votes(runs: Sequence[Run]) -> list[Run]:
    """`runs`, each slice run followed by its soft vote weighted by slice position (the vote
    its report computed: predictions columns vote_prob_*, the position weights and the
    thresholds chosen on validation); refuses a run whose report has no vote."""
    out = []
    for run in runs:
        out.append(run)
        if run.spec.pipeline.bags:
            continue
        section = run.report.get(scan_methods.REPORT_KEY) or {}
        if not section.get("position_weights"):
            raise UserError(
                f"--weighted_vote: {run.name}'s report_{run.report['split']}.json has no "
                "weighted vote (a report from before it, or slices without positions); "
                f"evaluate it again: python -m alz_jax.evaluate --workdir={run.workdir}"
            )
        out.append(_vote_run(run, section))
    return out


def _vote_run(run: Run, section: dict) -> Run:
    """The soft vote of `run` as a compared model of its own."""
    path = storage.path(run.workdir) / f"predictions_{run.report['split']}.csv"
    rows = list(csv.DictReader(io.StringIO(path.read_text(), newline="")))
    task = run.predictions.task
    columns = ([scan_methods.VOTE_COLUMN] if task.num_classes == 2 else
               [f"{scan_methods.VOTE_COLUMN_PREFIX}{c}" for c in run.class_names])  # fmt: skip
    probs = np.asarray([[float(r[c]) for c in columns] for r in rows], np.float64)
    probs = probs[:, 0] if task.num_classes == 2 else probs
    levels = section["results"]
    thresholds = {}
    if task.num_classes == 2:  # a vote decides per scan: its slices carry the scan's threshold
        chosen = {lv: levels[lv][scan_methods.WEIGHTED_VOTE]["threshold"] for lv in levels}
        thresholds = {"slice": chosen["scan"], **chosen}
    # The run's prediction sets were calibrated on its averaged probabilities, not the vote's.
    predictions = dataclasses.replace(run.predictions, probs=probs, thresholds=thresholds,
                                      conformal={})  # fmt: skip
    weights = {int(k): v for k, v in section["position_weights"].items()}
    return dataclasses.replace(run, name=f"{run.name} + weighted vote", predictions=predictions,
                               vote_weights=weights)  # fmt: skip


def check_same_data(runs: Sequence[Run]) -> list[stats.Predictions]:
    """The runs' predictions in one image order, after checking that every run was tested on
    the same images (naming the differing subjects and images otherwise), has the same
    classes, and was trained on the same data set (fingerprint of data and splits)."""
    aligned = stats.align([r.predictions for r in runs], [r.name for r in runs])
    first = runs[0]
    classes = first.class_names
    for run in runs[1:]:
        if run.class_names != classes:
            raise UserError(
                f"{first.name} has classes {classes}, {run.name} "
                f"{run.report.get('class_names')}; expected the same."
            )
        a = first.record["identity"]["data"]["fingerprint"]
        b = run.record["identity"]["data"]["fingerprint"]
        if a != b:
            raise UserError(
                f"{first.name} and {run.name} were tested on the same images but trained on "
                f"different data sets (data fingerprints {a} and {b}: the data folder, or the "
                "train/validation split, differs); expected runs of one data set and protocol."
            )
    return aligned


# ---- The machine and each model's cost. ----


def machine() -> dict:
    """What the measurements ran on: CPU model and cores, JAX backend and devices."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    device = jax.devices()[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "device_kind": device.device_kind,
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def throughput_batch(run: Run, requested: int, mesh) -> int:
    """The batch the throughput is measured at: `requested`, or the run's batch size capped at
    MAX_DEFAULT_BATCH, as a multiple of devices x microbatches."""
    unit = mesh.devices.size * run.spec.step.grad_accum_steps
    k = bag_slices(run)
    if requested:
        if requested % (unit * max(k, 1)):
            raise UserError(
                f"--batch={requested} must be a multiple of {unit * max(k, 1)} (the "
                f"{mesh.devices.size} devices x {run.name}'s grad_accum_steps"
                + (f" x its {k} slices per bag" if k else "")
                + ")."
            )
        return requested
    if k:  # a scan model's batch counts bags: in images, its bags' slices
        return max(unit, min(run.spec.batch_size, MAX_DEFAULT_BATCH // k) // unit * unit) * k
    return max(unit, min(run.spec.batch_size, MAX_DEFAULT_BATCH) // unit * unit)


def _timed(step: Callable[[], object], warmup: int, timed: int) -> list[float]:
    """Seconds of `timed` calls of `step` after `warmup` calls, each waited for."""
    for _ in range(warmup):
        jax.block_until_ready(step())
    times = []
    for _ in range(timed):
        start = time.perf_counter()
        jax.block_until_ready(step())
        times.append(time.perf_counter() - start)
    return times


def bag_slices(run: Run) -> int:
    """Slices per bag of a scan model's timed steps: its data.bag_size, or for whole scans
    (bag_size 0) the longest scan of its predictions; 0 for a slice model."""
    pipeline = run.spec.pipeline
    if not pipeline.bags:
        return 0
    scans = run.predictions.records["scan_id"]
    return pipeline.bag_size or int(max(collections.Counter(scans).values()))


def timing_batch(run: Run, batch: int, rng: np.random.Generator) -> dict:
    """Random inputs of `batch` images for the run's steps: {image, label}, or for a scan model
    bags of `bag_slices` slices (at least one per device) with their slice mask and positions."""
    size, chans = run.spec.pipeline.image_size, run.spec.model.in_chans
    classes = run.spec.model.num_classes
    k = bag_slices(run)
    if not k:
        return {"image": rng.integers(0, 256, (batch, size, size, chans), np.uint8),
                "label": rng.integers(0, classes, (batch,)).astype(np.int32)}  # fmt: skip
    bags = batch // k  # throughput_batch: a multiple of devices x microbatches
    return {
        "image": rng.integers(0, 256, (bags, k, size, size, chans), np.uint8),
        "label": rng.integers(0, classes, (bags,)).astype(np.int32),
        "slice_mask": np.ones((bags, k), np.int32),
        "positions": np.tile(np.arange(k, dtype=np.int32), (bags, 1)),
    }


def _images(batch: dict) -> int:
    """Images (slices) in a timing batch."""
    return int(np.prod(batch["image"].shape[:-3]))


def _measure_train(run: Run, pixel_stats: dict, batch: dict, mesh, settings) -> dict:
    """The run's train step (its optimizer, averages and step settings) on random batches."""
    # The schedule's length only sets learning rates; any class counts do for timing.
    bench = dataclasses.replace(
        run.spec,
        train=specs.Duration("num_train", steps=1000),
        warmup=specs.Duration("warmup", steps=10),
    )
    plan = bench.plan(100, class_counts=[1] * run.spec.model.num_classes)
    parts = assembly.assemble(bench, plan, mesh, pixel_stats)
    holder = {"state": parts.fresh_state(run.spec.seed)}
    images = _images(batch)
    batch = jax.device_put(batch, sharding.batch_sharded(mesh))
    compiled = parts.train_step.lower(holder["state"], batch).compile()

    def step():
        holder["state"], step_metrics = compiled(holder["state"], batch)
        return step_metrics

    times = _timed(step, settings.warmup_steps, settings.timed_steps)
    del holder["state"]
    return {
        "step_s": statistics.median(times),
        "images_per_s": images / statistics.median(times),
        "step_s_all": times,
        **profiling.xla_memory(compiled),
    }


def _measure_inference(loaded: dict, batch: dict, mesh, settings) -> dict:
    """The predict step (the run's weights) on random images (a scan model's: bags)."""
    predict = steps.make_predict_step(loaded["model"], loaded["pixel_stats"], mesh)
    keys = ("image", *steps.BAG_INPUTS) if "slice_mask" in batch else ("image",)
    placed = [jax.device_put(batch[k], sharding.batch_sharded(mesh)) for k in keys]
    compiled = predict.lower(loaded["params"], *placed).compile()
    times = _timed(
        lambda: compiled(loaded["params"], *placed), settings.warmup_steps, settings.timed_steps
    )
    return {
        "step_s": statistics.median(times),
        "images_per_s": _images(batch) / statistics.median(times),
        "step_s_all": times,
        **profiling.xla_memory(compiled),
    }


def measure_cost(run: Run, loaded: dict | None, settings: CompareSettings) -> dict:
    """Parameters and forward FLOPs per image (the registry's), and, with timed steps, the
    measured train and inference images/s and memory at the run's image size."""
    size = run.spec.pipeline.image_size
    cost = {
        "params": registry.count_params(run.spec.model),
        "flops_per_image": registry.forward_flops_per_image(run.spec.model, size),
        "image_size": size,
        "dtype": run.spec.model.dtype,
    }
    if not settings.timed_steps or loaded is None:
        return cost
    mesh = loaded["mesh"]
    batch = throughput_batch(run, settings.batch, mesh)
    inputs = timing_batch(run, batch, np.random.default_rng(settings.seed))
    logging.info("%s: timing the train and predict steps at batch %d ...", run.name, batch)
    cost["batch"] = _images(inputs)
    cost["train"] = _measure_train(run, loaded["pixel_stats"], inputs, mesh, settings)
    cost["inference"] = _measure_inference(loaded, inputs, mesh, settings)
    stats_now = jax.devices()[0].memory_stats() or {}
    cost["device_peak_bytes"] = stats_now.get("peak_bytes_in_use")
    return cost


def load_weights(run: Run) -> dict:
    """The model and weights of the checkpoint the run's report evaluated."""
    step, weights = str(run.report["checkpoint_step"]), run.report["weights"]
    try:
        return run.saved.load_model(step, weights)
    except UserError as e:
        raise UserError(
            f"{run.name}: its report_{run.report['split']}.json was made from checkpoint "
            f"{step} ({weights} weights), which can't be loaded now: {e} Evaluate a saved "
            f"checkpoint again: python -m alz_jax.evaluate --workdir={run.workdir} "
            f"--split={run.report['split']}"
        ) from e


# ---- Robustness. ----


def _predict_all(data, runs: Sequence[Run], predictors: dict, split: str, mesh) -> dict:
    """Each run's probabilities on `data` (clean or perturbed), runs that read the images alike
    (image size; whole scans or slices; 2.5D neighbours) in one pass over them."""
    out = {}

    def reading(r: Run) -> tuple:
        p = r.spec.pipeline
        return p.image_size, p.bags, p.neighbours

    for key in sorted({reading(r) for r in runs}):
        group = [r for r in runs if reading(r) == key]
        outputs = reports.predict_split_multi(
            data,
            split,
            {r.name: predictors[r.name] for r in group},
            group[0].spec.pipeline,
            group[0].spec.batch_size,
            mesh,
        )
        for r in group:
            if r.vote_weights is not None:  # the report's vote: of uncalibrated slices
                slices = r.spec.task.probabilities({"plain": outputs[r.name]}, 1.0)
                out[r.name] = scan_methods.weighted_vote(
                    data.records(split), slices, r.vote_weights
                )
                continue
            temperature = r.report["calibration"]["temperature"]
            out[r.name] = r.spec.task.probabilities({"plain": outputs[r.name]}, temperature)
    return out


def _clean_mismatch(run: Run, records: dict, probs: np.ndarray) -> float | None:
    """The largest difference between the clean probabilities computed here and the run's
    predictions file (None when its file names repeat and can't be matched)."""
    names = [str(n) for n in run.predictions.records["file_name"]]
    if len(set(names)) != len(names):
        return None
    position = {n: i for i, n in enumerate(names)}
    order = np.array([position[str(n)] for n in records["file_name"]])
    return float(np.max(np.abs(run.predictions.probs[order] - probs)))


def _curve_entry(
    name: str, curve_levels: list, per_level: list[dict], runs: Sequence[Run], levels: list[str]
) -> dict:
    """One perturbation's curves: {model: {level of aggregation: {metric: [value per level]}}}
    with the levels, their names, which one is clean, and the level shown beside slices."""
    return {
        "parameter": robustness.PERTURBATIONS[name].parameter,
        "levels": curve_levels,
        "level_names": [
            robustness.level_text(v)
            + (" (clean)" if v is not None and robustness.is_clean(name, v) else "")
            for v in curve_levels
        ],
        "clean_index": next(i for i, v in enumerate(curve_levels) if robustness.is_clean(name, v)),
        "subject_level": next((lv for lv in ("subject", "scan") if lv in levels), None),
        "curves": {
            r.name: {
                lv: {k: [s[r.name][lv][k] for s in per_level] for k in r.predictions.metric_names}
                for lv in levels
            }
            for r in runs
        },
    }


def robustness_curves(
    runs: Sequence[Run], loaded: dict[str, dict], settings: CompareSettings
) -> dict:
    """Every run's metrics on the split under each perturbation at each level (the clean level
    from one unperturbed pass), per level of aggregation (slice and subject, or scan)."""
    first = runs[0]
    data = dataset.prepare(first.spec.data)
    if data.fingerprint() != first.record["identity"]["data"]["fingerprint"]:
        raise UserError(
            f"The data set now at {data.data_dir} differs from the one the runs "
            "were trained on (fingerprints differ); expected the same data."
        )
    records, split, mesh = data.records(settings.split), settings.split, loaded[first.name]["mesh"]
    predictors = {
        r.name: (
            loaded[r.name]["params"],
            steps.make_predict_step(loaded[r.name]["model"], loaded[r.name]["pixel_stats"], mesh),
        )
        for r in runs
    }

    def scores(probs_by_run: dict) -> dict:
        return {
            r.name: stats.point_metrics(
                dataclasses.replace(r.predictions, records=records, probs=probs_by_run[r.name])
            )
            for r in runs
        }

    logging.info("Robustness: the clean %s split ...", split)
    clean_probs = _predict_all(data, runs, predictors, split, mesh)
    clean = scores(clean_probs)
    levels = list(clean[first.name])
    out = {
        "seed": settings.seed,
        "levels_of_aggregation": levels,
        "clean_max_abs_diff": {
            r.name: _clean_mismatch(r, records, clean_probs[r.name]) for r in runs
        },
        "perturbations": {},
    }
    for name in settings.perturbations:
        curve_levels = settings.curve_levels(name)
        per_level = []
        for level in curve_levels:
            if robustness.is_clean(name, level):
                per_level.append(clean)
                continue
            logging.info("Robustness: %s at %s ...", name, robustness.level_text(level))
            perturbed = robustness.PerturbedData(data, name, level, settings.seed)
            per_level.append(scores(_predict_all(perturbed, runs, predictors, split, mesh)))
        out["perturbations"][name] = _curve_entry(name, curve_levels, per_level, runs, levels)
    return out


# ---- The comparison. ----


def _notes(runs: Sequence[Run], result: dict) -> list[str]:
    """What a reader of the tables should know: leakage, unknown subjects, clean predictions
    that differ from the reports' (another backend or dtype here), mixed image sizes."""
    notes = []
    warning = reports.leak_warning(runs[0].report)
    if warning:
        notes.append(warning.removeprefix("Warning: "))
    shared = runs[0].report.get("test_subjects_also_in_train")
    if shared:
        notes.append(
            f"{shared} test subjects also have visits in train or validation: every "
            "model's test metrics are optimistic."
        )
    if not runs[0].predictions.subjects_known:
        notes.append(
            "Subjects unknown (no metadata): scans are resampled, and one subject's "
            "scans may count as independent."
        )
    for name, diff in (result.get("robustness") or {}).get("clean_max_abs_diff", {}).items():
        if diff is not None and diff > CLEAN_TOLERANCE:
            notes.append(
                f"{name}: the clean probabilities computed here differ from its "
                f"predictions file by up to {diff:.2g} (another backend or compute "
                "dtype?): its robustness curves are on this machine's numbers."
            )
    if len({r.spec.pipeline.image_size for r in runs}) > 1:
        notes.append(
            "The models take different image sizes: FLOPs and throughput are each at "
            "its own run's size."
        )
    return notes


def _model_entry(run: Run, aligned: stats.Predictions, cost: dict, settings) -> dict:
    return {
        "name": run.name,
        "title": run.title,
        "workdir": run.workdir,
        "checkpoint_step": run.report["checkpoint_step"],
        "weights": run.report["weights"],
        "num_images": run.report["num_images"],
        "metrics": stats.model_metrics(aligned, settings.resamples, settings.seed),
        "cost": cost,
    }


def compare(
    workdirs: Sequence[str],
    out: str,
    settings: CompareSettings,
    names: Sequence[str] | None = None,
) -> dict:
    """Compares the runs in `workdirs` (the first is the reference) on `settings.split` and
    writes compare.md, compare.json and the figures into `out`; returns the result. `names`
    name the runs (default: each one's config and model family, `default_names`). A workdir
    whose run is still training is refused before anything is read or written."""
    if len(workdirs) < 2:
        raise UserError(f"--workdirs: expected two or more runs to compare, found {len(workdirs)}.")
    run_names(workdirs)  # refuses a workdir named twice
    if names is not None:
        names = check_names(names, workdirs)
    with no_training(workdirs):
        saved = [SavedRun.open(os.fspath(w)) for w in workdirs]
        names = names or default_names(workdirs, saved)
        runs = [
            load_run(w, n, settings.split, settings.evaluate_missing, s)
            for w, n, s in zip(workdirs, names, saved, strict=True)
        ]
        if settings.weighted_vote:
            runs = with_votes(runs)
        return write_outputs(_result(runs, settings), out)


def _result(runs: Sequence[Run], settings: CompareSettings) -> dict:
    """The comparison of loaded runs: metrics, paired differences, costs, robustness, notes."""
    aligned = check_same_data(runs)
    need_weights = bool(settings.timed_steps or settings.perturbations)
    loaded = {r.name: load_weights(r) for r in runs} if need_weights else {}
    costs = {}
    for i, r in enumerate(runs):  # a vote costs what its slice model does (the run before it)
        costs[r.name] = (costs[runs[i - 1].name] if r.vote_weights is not None
                         else measure_cost(r, loaded.get(r.name), settings))  # fmt: skip
    first = aligned[0]
    result = {
        "split": settings.split,
        "machine": machine(),
        "reference": runs[0].name,
        "num_classes": first.num_classes,
        "task": first.task.kind,
        "class_names": runs[0].class_names,
        "metric_names": list(first.metric_names),
        "bootstrap": {
            "samples": settings.resamples,
            "seed": settings.seed,
            "confidence": 0.95,
            "unit": "subject" if first.subjects_known else "scan",
        },
        "models": [
            _model_entry(r, a, costs[r.name], settings) for r, a in zip(runs, aligned, strict=True)
        ],
        "paired_differences": {
            r.name: stats.paired_differences(first, a, settings.resamples, settings.seed)
            for r, a in zip(runs[1:], aligned[1:], strict=True)
        },
        "robustness": robustness_curves(runs, loaded, settings) if settings.perturbations else None,
    }
    result["notes"] = _notes(runs, result)
    return result


def default_out(workdirs: Sequence[str]) -> str:
    """Where a comparison goes without --out: `compare` beside the first workdir."""
    first = storage.path(os.path.normpath(os.fspath(workdirs[0])))
    return os.fspath(first.parent / "compare")


def write_outputs(result: dict, out: str) -> dict:
    """Writes the figures, compare.md and compare.json into `out`; returns the result with the
    figures' file names."""
    folder = storage.path(out)
    result["out"] = os.fspath(folder)
    if jax.process_index() != 0:  # one writer when several processes compare together
        return result
    folder.mkdir(parents=True, exist_ok=True)
    rendered = {}
    last_level = [lv for lv in metrics.LEVELS if lv in result["models"][0]["metrics"]][-1]
    if result["paired_differences"]:
        rendered[f"differences_{last_level}"] = stats.differences_figure(result, last_level)
    for name, entry in ((result.get("robustness") or {}).get("perturbations") or {}).items():
        rendered[f"robustness_{name}"] = stats.robustness_figure(name, entry, result)
    result["figures"] = {}
    for name, figure in rendered.items():
        result["figures"][name] = f"{name}.png"
        figures.save(figure, folder / f"{name}.png")
    (folder / "compare.md").write_text(stats.format_markdown(result))
    (folder / "compare.json").write_text(json.dumps(result, indent=1))
    return result
