"""Config resolution: the one place where an ml_collections config is read.

`resolve(config)` turns the config into a frozen `RunSpec` of typed specs (model, data, input
pipeline with augmentation and Mixup/CutMix, optimizer, train step, weight averages, checkpoints,
evaluation, durations), each checking its own fields when built, so that a bad value fails before
any data work or compile with a message naming the field, the value and what is allowed. What
depends on the run's length (steps per epoch are known once the data set is) is resolved by
`RunSpec.plan(steps_per_epoch)` into a `Plan` that holds only those values: total, warmup and
validation steps, SWA's start and period, the class weights; `Plan.averages`, `.pipeline` and
`.step` are the RunSpec's specs completed with them, so each value has one owner.

Everything that runs reads the RunSpec, not the config. The config itself is only recorded
(run/run_record.py, TensorBoard's Text tab) and, by cross-validation, copied per fold.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from alz_jax.core import averaging, optim, steps
from alz_jax.core.checkpoint_spec import CheckpointSpec
from alz_jax.data import augment, mixing
from alz_jax.data import data_spec as data_spec_lib
from alz_jax.data import scans as scans_lib
from alz_jax.data.data_spec import DataSpec
from alz_jax.data.pipeline_spec import PipelineSpec
from alz_jax.evaluation import metric_registry, tasks
from alz_jax.evaluation.settings import EvalSettings
from alz_jax.host.errors import UserError, check_fields
from alz_jax.models import convert, depthwise, registry, scan

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
RUN_PREFIX = "run:"  # model.init_from = 'run:WORKDIR': start from a trained run's weights
# Augmentation fields applied on device by the train step, not by the host pipeline.
_DEVICE_AUGMENT_FIELDS = ("noise_prob", "noise_std")
# Epoch fields not named <duration>_epochs.
_EPOCHS_FIELDS = {"num_train": "num_epochs"}


@dataclasses.dataclass(frozen=True)
class Duration:
    """A length given in steps or in epochs (steps win, so that a command line can shorten an
    epoch-based config: ml_collections flags can't set a field to None)."""

    name: str  # the config field without _steps/_epochs, with its section: 'warmup', 'swa.every'
    steps: int | None = None
    epochs: float | None = None

    def __post_init__(self):
        if self.steps is None and self.epochs is None:
            raise UserError(f"Set config.{self.name}_steps or config.{self.name}_epochs.")
        if self.steps is not None:
            check_fields("", [(f"{self.name}_steps", self.steps,
                               isinstance(self.steps, int) and self.steps >= 0,
                               "an integer >= 0")])  # fmt: skip
        else:
            # `< math.inf` refuses NaN too; either would fail later in math.ceil.
            field = _EPOCHS_FIELDS.get(self.name, f"{self.name}_epochs")
            check_fields("", [(field, self.epochs, 0 <= self.epochs < math.inf,
                               ">= 0 and finite")])  # fmt: skip

    def to_steps(self, steps_per_epoch: int) -> int:
        """Whole steps (epochs rounded up)."""
        if self.steps is not None:
            return int(self.steps)
        return math.ceil(float(self.epochs) * steps_per_epoch)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What depends on the data set and the run's length, and only that: the steps, SWA's start
    and period, and the class weights of the train split. The specs the run's parts take
    (`averages`, `pipeline`, `step`) are the RunSpec's, completed with these values."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    eval_every_steps: int
    swa_start_step: int = 0
    swa_every_steps: int = 1
    class_weights: tuple[float, ...] = ()
    run: RunSpec | None = None  # what the config decided; None: the numbers alone

    def _run(self) -> RunSpec:
        if self.run is None:
            raise ValueError("this Plan holds the step counts only (run=None): no specs")
        return self.run

    @property
    def averages(self) -> averaging.AveragingSpec:
        """The run's weight averages, SWA starting and averaging at the planned steps."""
        averages = self._run().averages
        if not averages.swa:
            return averages
        return dataclasses.replace(
            averages, swa_start_step=self.swa_start_step, swa_every_steps=self.swa_every_steps
        )

    @property
    def pipeline(self) -> PipelineSpec:
        """The run's input pipeline, its Mixup/CutMix schedule over the planned steps."""
        pipeline = self._run().pipeline
        mix = dataclasses.replace(pipeline.mix, total_steps=self.total_steps)
        return dataclasses.replace(pipeline, mix=mix)

    @property
    def step(self) -> steps.StepSpec:
        """The run's train step, with the class weights of the train split."""
        return dataclasses.replace(self._run().step, class_weights=self.class_weights)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything a run reads from its config, resolved and checked."""

    seed: int
    batch_size: int  # global, over all devices and processes
    model: registry.ModelSpec  # a model family's spec
    task: tasks.Task  # what the model's outputs mean: NC/AD, K classes (evaluation/tasks.py)
    init_from: str  # 'LAYOUT:PATH' of starting weights, or ''
    data: DataSpec
    pipeline: PipelineSpec  # the mix schedule's length is the plan's (Plan.pipeline)
    optim: optim.OptimSpec
    step: steps.StepSpec  # the class weights are the plan's (Plan.step)
    averages: averaging.AveragingSpec  # SWA's start and period are the plan's (Plan.averages)
    swa_start_fraction: float
    checkpoint: CheckpointSpec
    evaluation: EvalSettings
    # data.ordinal: True or False as set; None (auto) decides by the class names (with_classes).
    ordinal: bool | None
    train: Duration
    warmup: Duration
    eval_every: Duration
    swa_every: Duration | None
    log_every_steps: int
    profile_start_step: int
    profile_num_steps: int
    class_weights: str = "none"  # optim.class_weights: 'none', 'balanced' or 'w0,w1,...'
    # optim.trainable as a regex over '/'-joined parameter paths ('.*': everything trains).
    trainable_regex: str = ".*"
    # BatchNorm models: whole train batches of SWA's statistics pass (0: the whole split).
    swa_bn_batches: int = 0

    def plan(self, steps_per_epoch: int, class_counts: Sequence[int] | None = None) -> Plan:
        """Steps of the run for `steps_per_epoch`, and the class weights for the train split's
        `class_counts` (needed unless optim.class_weights is 'none'); refuses a run without steps
        or one whose warmup is longer than training."""
        total = self.train.to_steps(steps_per_epoch)
        warmup = self.warmup.to_steps(steps_per_epoch)
        if total < 1:
            raise UserError(f"The run has {total} training steps; expected at least 1.")
        if warmup > total:
            raise UserError(
                f"The warmup ({warmup} steps) is longer than training ({total} steps): "
                "shorten config.warmup_epochs/warmup_steps or train longer."
            )
        swa = {}
        if self.averages.swa:
            swa = dict(
                swa_start_step=max(1, math.ceil(self.swa_start_fraction * total)),
                # every_epochs on an epoch of < 1 step still averages every step
                swa_every_steps=max(1, self.swa_every.to_steps(steps_per_epoch)),
            )
        return Plan(
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            warmup_steps=warmup,
            eval_every_steps=max(1, self.eval_every.to_steps(steps_per_epoch)),
            class_weights=resolve_class_weights(
                self.class_weights, self.model.num_classes, class_counts
            ),
            run=self,
            **swa,
        )

    def with_model(self, model: registry.ModelSpec) -> RunSpec:
        """This run with another model (a benchmark's), and what the model decides resolved
        again for it: the task and the `optim.trainable` regex."""
        task = tasks.for_run(model.num_classes, model.head, self.ordinal,
                             self.evaluation.ordinal_decision)  # fmt: skip
        run = dataclasses.replace(self, model=model, task=task)
        return dataclasses.replace(run, trainable_regex=trainable_pattern(run))

    def plan_for(self, data) -> Plan:
        """The plan of a training on the prepared data set `data` (dataset.AdniData)."""
        bags = self.pipeline.bags
        return self.plan(
            steps_per_epoch(data, self.batch_size, bags), train_class_counts(data, bags)
        )

    def check_classes(self, class_names: Sequence[str]) -> None:
        """The model's head must have one output per class of the data set, in the order the
        task reads them."""
        if self.model.num_classes != len(class_names):
            raise UserError(
                f"The data set has {len(class_names)} classes ({', '.join(class_names)}), but "
                f"config.model.num_classes = {self.model.num_classes}: set "
                f"--config.model.num_classes={len(class_names)} (configs/stages_demo.py does "
                "for the dementia stages)."
            )
        self.task.check_class_names(class_names)

    def with_classes(self, class_names: Sequence[str]) -> RunSpec:
        """This run checked against the data set's classes (check_classes), its task resolved
        for them: with data.ordinal = auto, K dementia stages make an ordinal task; an ordinal
        head (CORAL, CORN) on classes that are not stages is refused."""
        self.check_classes(class_names)
        if self.ordinal is not None or len(class_names) < 3:
            return self
        stages = data_spec_lib.are_stages(class_names)
        if isinstance(self.task, tasks.OrdinalTask) and not stages:
            raise UserError(
                f"model.head = {self.model.head} reads the classes as ordered, but "
                f"{', '.join(class_names)} are not all dementia stages: set "
                "--config.data.ordinal=true if their label (name) order is their order, or "
                "--config.model.head=softmax."
            )
        if stages and not isinstance(self.task, tasks.OrdinalTask):
            task = tasks.OrdinalTask(len(class_names), self.model.head,
                                     self.evaluation.ordinal_decision)  # fmt: skip
            return dataclasses.replace(self, task=task)
        return self


def train_labels(data, bags: bool = False) -> np.ndarray:
    """The label of each training unit of a prepared data set: its images, or with `bags` (a
    scan model) its scans."""
    records = data.records("train")
    if bags:
        return scans_lib.ScanIndex.from_records(records, "train").labels
    return np.asarray(records["label"])


def train_class_counts(data, bags: bool = False) -> list[int]:
    """Training units (images, or scans with `bags`) per class, in label order."""
    return np.bincount(train_labels(data, bags), minlength=len(data.class_names)).tolist()


def steps_per_epoch(data, global_batch: int, bags: bool = False) -> int:
    """Whole global batches in the train split (of images, or of scans with `bags`); refuses a
    batch larger than the split."""
    units = len(train_labels(data, bags))
    per_epoch = units // global_batch
    if per_epoch == 0:
        noun = "training scans (config.batch_size counts bags)" if bags else "training images"
        raise UserError(f"batch_size {global_batch} exceeds the {units} {noun}.")
    return per_epoch


def parse_class_weights(value: str, num_classes: int) -> str:
    """Checks optim.class_weights: 'none', 'balanced' or one weight per class ('1,2.5,...')."""
    text = str(value).strip()
    if text in ("none", "balanced"):
        return text
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        weights = []
    if len(weights) != num_classes or not all(0 <= w < math.inf for w in weights):
        raise UserError(
            f"config.optim.class_weights = {value!r}; expected 'none', 'balanced' or "
            f"{num_classes} comma-separated weights >= 0 (one per class, in label order), at "
            "least one of them positive."
        )
    if not any(weights):  # every example's loss would be 0: nothing would train
        raise UserError(
            f"config.optim.class_weights = {value!r}: every weight is 0; at least one must be "
            "positive (a class of weight 0 adds nothing to the loss)."
        )
    return ",".join(f"{w:g}" for w in weights)


def resolve_class_weights(
    setting: str, num_classes: int, class_counts: Sequence[int] | None
) -> tuple[float, ...]:
    """The per-class loss weights of a checked setting: () for 'none'; for 'balanced',
    n / (K n_c) as scikit-learn's compute_class_weight (they average 1 over the train split)."""
    if setting == "none":
        return ()
    if setting != "balanced":
        return tuple(float(w) for w in setting.split(","))
    if class_counts is None:
        raise ValueError("balanced class weights need the train split's class counts")
    counts = np.asarray(class_counts, np.float64)
    if len(counts) != num_classes or np.any(counts <= 0):
        raise UserError(
            f"optim.class_weights = 'balanced' needs images of each of the {num_classes} "
            f"classes in the train split; found {counts.astype(int).tolist()}."
        )
    return tuple(float(w) for w in counts.sum() / (num_classes * counts))


def resolve(config: ml_collections.ConfigDict, backend: str | None = None) -> RunSpec:
    """The RunSpec of `config` for `backend` (JAX's default if not given), checked against the
    devices and processes of this runtime."""
    c = config
    check_fields("", [
        # Grain's shuffle and numpy's generators refuse a negative seed.
        ("seed", c.seed, isinstance(c.seed, int) and c.seed >= 0, "an integer >= 0"),
        ("batch_size", c.batch_size, c.batch_size > 0, "> 0"),
        ("log_every_steps", c.log_every_steps, c.log_every_steps > 0, "> 0"),
        ("dtype", c.dtype, c.dtype in COMPUTE_DTYPES, "|".join(COMPUTE_DTYPES)),
        ("profile.start_step/num_steps", (c.profile.start_step, c.profile.num_steps),
         c.profile.start_step >= 0 and c.profile.num_steps >= 0, ">= 0 each"),
    ])  # fmt: skip
    label_smoothing = c.optim.label_smoothing
    ordinal = ordinal_setting(c)
    spec = RunSpec(
        seed=c.seed,
        batch_size=c.batch_size,
        model=model_spec(
            c.model,
            compute_dtype(c.dtype, backend),
            backend,
            c.data.image_size,
            neighbours=c.data.get("neighbours", 0),
        ),
        task=tasks.for_run(
            c.model.num_classes,
            c.model.get("head", "softmax"),
            ordinal,
            c.eval.get("ordinal_decision", "auto"),
        ),
        ordinal=ordinal,
        init_from=c.model.init_from,
        data=data_spec(c.data),
        pipeline=pipeline_spec(c),
        optim=optim.OptimSpec(
            **{k: v for k, v in c.optim.items() if k not in ("label_smoothing", "class_weights")}
        ),
        swa_bn_batches=swa_bn_batches(c.swa),
        step=steps.StepSpec(
            impl=c.step_impl,
            grad_accum_steps=c.grad_accum_steps,
            label_smoothing=label_smoothing,
            noise_prob=c.augment.noise_prob,
            noise_std=c.augment.noise_std,
            seed=c.seed,
            head=c.model.get("head", "softmax"),
        ),
        averages=averaging_spec(c),
        swa_start_fraction=float(c.swa.start_fraction) if c.swa.enabled else 0.0,
        checkpoint=checkpoint_spec(c.checkpoint),
        evaluation=eval_settings(c.eval),
        train=Duration("num_train", c.num_train_steps, c.num_epochs),
        warmup=Duration("warmup", c.warmup_steps, c.warmup_epochs),
        eval_every=Duration("eval_every", c.eval_every_steps, c.eval_every_epochs),
        swa_every=Duration("swa.every", c.swa.every_steps, c.swa.every_epochs)
        if c.swa.enabled
        else None,
        log_every_steps=c.log_every_steps,
        profile_start_step=c.profile.start_step,
        profile_num_steps=c.profile.num_steps,
        class_weights=parse_class_weights(
            c.optim.get("class_weights", "none"), c.model.num_classes
        ),
    )
    check_fields("model", [
        ("num_classes", spec.model.num_classes, spec.model.num_classes >= 2,
         ">= 2 (the data set's classes: 2 for NC/AD, 4 for the dementia stages)"),
        ("in_chans", c.model.in_chans, c.model.in_chans in (1, spec.model.in_chans),
         f"1 (grayscale slices; data.neighbours = {spec.pipeline.neighbours} makes the model "
         f"take {spec.model.in_chans} channels)"),
    ])  # fmt: skip

    if spec.init_from and not spec.init_from.startswith(RUN_PREFIX):
        convert.parse_init_from(spec.init_from)  # the form; the file is checked at a fresh start
    # A preset or regex that matches some parameter, resolved once for the run's model.
    spec = spec.with_model(spec.model)
    check_batch(spec, jax.device_count(), jax.process_count())
    return spec


def checkpoint_spec(checkpoint_config: ml_collections.ConfigDict) -> CheckpointSpec:
    """The CheckpointSpec of `config.checkpoint`: best_metric one of the registry's selection
    metrics, best_mode its better direction."""
    spec = CheckpointSpec(**dict(checkpoint_config.items()))
    choices = metric_registry.best_metric_choices()
    check_fields("checkpoint", [
        ("best_metric", spec.best_metric, spec.best_metric in choices, "|".join(choices)),
    ])  # fmt: skip
    mode = metric_registry.best_mode(spec.best_metric)
    check_fields("checkpoint", [
        ("best_mode", spec.best_mode, spec.best_mode == mode, f"{mode} for {spec.best_metric}"),
    ])  # fmt: skip
    return spec


def swa_bn_batches(swa_config: ml_collections.ConfigDict) -> int:
    """swa.bn_update_batches: whole train batches of SWA's BatchNorm statistics pass (0: all)."""
    value = swa_config.get("bn_update_batches", 0)
    check_fields("swa", [("bn_update_batches", value, isinstance(value, int) and value >= 0,
                          "an integer >= 0 (0: the whole train split)")])  # fmt: skip
    return value


def trainable_pattern(spec: RunSpec) -> str:
    """The regex of optim.trainable for the run's model, checked to match some parameter."""
    pattern = registry.trainable_pattern(spec.model, spec.optim.trainable)
    if pattern != ".*":
        params, _ = jax.eval_shape(lambda: registry.init_variables(spec.model, 0))
        optim.check_trainable(params, pattern, spec.optim.trainable)
    return pattern


def compute_dtype(dtype: str, backend: str | None = None) -> str:
    """The resolved compute dtype: `dtype`, with 'auto' = bfloat16 on GPU/TPU, float32 on CPU
    (XLA:CPU gains nothing from bfloat16 here; see docs/performance.md)."""
    if dtype != "auto":
        return dtype
    return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"


AGGREGATOR_FIELDS = (
    "attention_dim",
    "transformer_depth",
    "transformer_heads",
    "max_positions",
    "remat",
)


def model_spec(
    model_config: ml_collections.ConfigDict,
    dtype: str = "float32",
    backend: str | None = None,
    image_size: int = 224,
    neighbours: int = 0,
):
    """The spec of a `config.model` section: `model.name` picks the family and variant
    (models/registry.py NAMES; a family's own name, or empty for the default family, lets the
    family read the section: ConvNeXt's model.size, or explicit depths and dims), computing in
    `dtype`, with `model.depthwise` resolved for `backend` and `image_size` the input size
    (ViT's position embeddings). The model takes 1 + 2 x `neighbours` channels (2.5D input:
    data.neighbours). With `model.aggregator` other than 'none' it is a scan model
    (models/scan.py) whose encoder is that slice model."""
    slice_model = _slice_model_spec(model_config, dtype, backend, image_size, neighbours)
    aggregator = model_config.get("aggregator", "none")
    if aggregator == "none":
        return slice_model
    check_fields("model", [("aggregator", aggregator, aggregator in scan.AGGREGATORS,
                            "|".join(["none", *sorted(scan.AGGREGATORS)]))])  # fmt: skip
    fields = {k: model_config[k] for k in AGGREGATOR_FIELDS if k in model_config}
    try:
        return scan.scan_spec(slice_model, aggregator, **fields)
    except ValueError as e:
        raise UserError(str(e)) from e


def _slice_model_spec(model_config, dtype, backend, image_size, neighbours):
    m = model_config
    try:
        impl = depthwise.resolve(m.depthwise, backend)
    except ValueError as e:
        raise UserError(str(e)) from e
    return registry.spec_from_config(
        m,
        in_chans=1 + 2 * neighbours,
        spatial_attention=bool(m.get("spatial_attention", False)),
        num_classes=m.num_classes,
        drop_path_rate=m.drop_path_rate,
        head_dropout=m.get("head_dropout", 0.0),
        dtype=dtype,
        param_dtype=m.param_dtype,
        depthwise=impl,
        image_size=image_size,
    )


def data_spec(data_config: ml_collections.ConfigDict) -> DataSpec:
    """The DataSpec of a `config.data` section (the input pipeline's fields aside)."""
    return data_spec_lib.from_config(data_config)


def augment_spec(augment_config: ml_collections.ConfigDict) -> augment.AugmentSpec:
    """The host AugmentSpec of a `config.augment` section (unknown fields are an error)."""
    fields = {f.name for f in dataclasses.fields(augment.AugmentSpec)}
    unknown = sorted(set(augment_config.keys()) - fields - set(_DEVICE_AUGMENT_FIELDS))
    if unknown:
        raise UserError(f"Unknown config.augment fields {unknown}; known: {sorted(fields)}")
    values = {k: v for k, v in augment_config.items() if k in fields}
    return augment.AugmentSpec(
        **{k: tuple(v) if isinstance(v, list | tuple) else v for k, v in values.items()}
    )


def pipeline_spec(config: ml_collections.ConfigDict) -> PipelineSpec:
    """The input pipeline of a config: size, augmentation, Mixup/CutMix (its schedule over the
    run's steps is set by `RunSpec.plan`), workers and buffers."""
    d = config.data
    return PipelineSpec(
        image_size=d.image_size,
        augment=augment_spec(config.augment),
        mix=mixing.MixSpec(
            **dict(config.mix.items()),
            label_smoothing=config.optim.label_smoothing,
            num_classes=config.model.num_classes,
        ),
        num_workers=d.num_workers,
        eval_num_workers=d.eval_num_workers,
        prefetch_buffer_size=d.prefetch_buffer_size,
        balanced_sampling=bool(d.get("balanced_sampling", False)),
        bags=config.model.get("aggregator", "none") != "none",
        bag_size=d.get("bag_size", 16),
        bag_augment=d.get("bag_augment", "slice"),
        neighbours=d.get("neighbours", 0),
    )


def averaging_spec(config: ml_collections.ConfigDict) -> averaging.AveragingSpec:
    """The AveragingSpec of `config.ema` and `config.swa`, checked; the SWA start and period in
    steps are set by `RunSpec.plan`."""
    ema, swa = config.ema, config.swa
    dtypes = "|".join(averaging.DTYPES)
    check_fields("ema", [
        ("decay", ema.decay, 0.0 <= ema.decay < 1.0, "in [0, 1)"),
        ("min_decay", ema.min_decay, 0.0 <= ema.min_decay <= ema.decay, "in [0, ema.decay]"),
        ("warmup_gamma", ema.warmup_gamma, 0 < ema.warmup_gamma < math.inf, "> 0 and finite"),
        ("warmup_power", ema.warmup_power, 0 < ema.warmup_power < math.inf, "> 0 and finite"),
        ("dtype", ema.dtype, ema.dtype in averaging.DTYPES, dtypes),
    ])  # fmt: skip
    check_fields("swa", [
        ("start_fraction", swa.start_fraction, 0.0 <= swa.start_fraction < 1.0, "in [0, 1)"),
        ("dtype", swa.dtype, swa.dtype in averaging.DTYPES, dtypes),
    ])  # fmt: skip
    if swa.every_steps is not None:
        check_fields("swa", [("every_steps", swa.every_steps, swa.every_steps >= 1, ">= 1")])
    elif swa.every_epochs is not None:
        check_fields("swa", [("every_epochs", swa.every_epochs,
                              0 < swa.every_epochs < math.inf, "> 0 and finite")])  # fmt: skip
    fields = {}
    if ema.enabled:
        fields.update(
            ema=True,
            ema_decay=float(ema.decay),
            ema_warmup=bool(ema.warmup),
            ema_warmup_gamma=float(ema.warmup_gamma),
            ema_warmup_power=float(ema.warmup_power),
            ema_min_decay=float(ema.min_decay),
            ema_dtype=ema.dtype,
        )
    if swa.enabled:
        fields.update(swa=True, swa_dtype=swa.dtype)
    return averaging.AveragingSpec(**fields)


ORDINAL_SETTINGS = {"auto": None, "true": True, "false": False}


def ordinal_setting(c: ml_collections.ConfigDict) -> bool | None:
    """config.data.ordinal: True, False, or None for auto (ordinal when every class is a
    dementia stage); an ordinal head needs ordered classes."""
    value = str(c.data.get("ordinal", "auto")).lower()
    if value not in ORDINAL_SETTINGS:
        raise UserError(f"config.data.ordinal = {c.data.ordinal!r}: expected auto, true or false.")
    ordinal = ORDINAL_SETTINGS[value]
    head = c.model.get("head", "softmax")
    if ordinal is False and head != "softmax":
        raise UserError(
            f"config.model.head = {head} is an ordinal head, but config.data.ordinal = false "
            "says the classes have no order: use model.head=softmax, or data.ordinal=auto|true."
        )
    return ordinal


def eval_settings(eval_config: ml_collections.ConfigDict, **overrides) -> EvalSettings:
    """The EvalSettings of `config.eval` with the non-None `overrides` (evaluate's flags)."""
    values = dict(eval_config.items())
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - {f.name for f in dataclasses.fields(EvalSettings)}
    if unknown:
        raise UserError(f"config.eval has unknown fields {sorted(unknown)}.")
    if isinstance(values.get("tta", ()), str):
        values["tta"] = tuple(v.strip() for v in values["tta"].split(",") if v.strip())
    values["tta"] = tuple(values.get("tta", ()))
    return EvalSettings(**values)


def check_batch(spec: RunSpec, devices: int, processes: int) -> None:
    """The global batch must split evenly over devices, processes, microbatches and mix groups."""
    batch, accum = spec.batch_size, spec.step.grad_accum_steps
    if batch % devices:
        raise UserError(
            f"config.batch_size = {batch} must be divisible by the {devices} devices "
            f"(e.g. {devices * max(1, round(batch / devices))})."
        )
    if (batch // devices) % accum:
        raise UserError(
            f"config.batch_size = {batch} over {devices} devices is {batch // devices} per "
            f"device, which config.grad_accum_steps = {accum} must divide."
        )
    mix, per_process = spec.pipeline.mix, batch // processes
    if mix.prob > 0 and per_process % mix.group_size:
        raise UserError(
            f"config.mix.group_size = {mix.group_size} must divide the per-process batch "
            f"{per_process} (batch_size {batch} over {processes} processes)."
        )


def check_init_from_file(value: str) -> None:
    """A local weight file named by model.init_from exists (checked at a fresh start, before any
    data work; a resume doesn't need it)."""
    if not value:
        return
    if value.startswith(RUN_PREFIX):
        workdir = value.removeprefix(RUN_PREFIX)
        if "://" not in workdir and not os.path.isfile(os.path.join(workdir, "run", "record.json")):
            raise UserError(
                f"config.model.init_from = {value!r}: {workdir} holds no training run "
                "(no run/record.json); expected 'run:WORKDIR' of a finished slice run."
            )
        return
    _, path = convert.parse_init_from(value)
    if "://" not in path and not os.path.isfile(os.path.expanduser(path)):
        raise UserError(f"config.model.init_from = {value!r}: no such file {path}.")
