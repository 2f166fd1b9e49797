"""Config checks and the one place where durations in epochs or steps become steps."""

from __future__ import annotations

import math
import os

import jax
import ml_collections

from alz_jax.core import averaging
from alz_jax.data import augment, mixing
from alz_jax.evaluation import reports
from alz_jax.host.errors import UserError
from alz_jax.models import convert, convnext

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
# Names of the validation scalars a best checkpoint may be chosen on.
BEST_METRICS = tuple(
    f"validation/{name}"
    for name in ("loss", "accuracy", "balanced_accuracy", "scan_accuracy", "roc_auc")
)


def duration_steps(
    config: ml_collections.ConfigDict, name: str, steps_per_epoch: int, section: str = ""
) -> int:
    """Steps for `<name>_steps` if set, else `<name>_epochs` (rounded up to whole steps);
    `section` ('swa.') names a sub-config in messages.

    Steps win so that a command line can shorten an epoch-based config
    (`--config.num_train_steps=100`): ml_collections flags can't set an int field to None.
    """
    steps, epochs = config.get(f"{name}_steps"), config.get(f"{name}_epochs")
    if steps is None and epochs is None:
        raise UserError(f"Set config.{section}{name}_steps or config.{section}{name}_epochs.")
    value = int(steps) if steps is not None else math.ceil(float(epochs) * steps_per_epoch)
    if value < 0:
        raise UserError(f"config.{section}{name}_steps/_epochs must be >= 0, got {value}.")
    return value


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Total optimizer steps: num_train_steps if set, else num_epochs over the train split."""
    if config.get("num_train_steps") is not None:
        return int(config.num_train_steps)
    if config.get("num_epochs") is None:
        raise UserError("Set config.num_train_steps or config.num_epochs.")
    return math.ceil(float(config.num_epochs) * steps_per_epoch)


def averaging_spec(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int):
    """The AveragingSpec of `config.ema` and `config.swa` (either may be absent: off)."""
    ema, swa = config.get("ema"), config.get("swa")
    fields = {}
    if ema is not None and ema.enabled:
        fields.update(
            ema=True,
            ema_decay=float(ema.decay),
            ema_warmup=bool(ema.warmup),
            ema_warmup_gamma=float(ema.warmup_gamma),
            ema_warmup_power=float(ema.warmup_power),
            ema_min_decay=float(ema.min_decay),
            ema_dtype=ema.dtype,
        )
    if swa is not None and swa.enabled:
        from alz_jax import config_lib  # config_lib imports this module's checks

        every = config_lib.duration_steps(swa, "every", steps_per_epoch, section="swa.")
        fields.update(
            swa=True,
            swa_start_step=max(1, math.ceil(float(swa.start_fraction) * total_steps)),
            swa_every_steps=max(1, every),  # every_epochs on an epoch of < 1 step
            swa_dtype=swa.dtype,
        )
    return averaging.AveragingSpec(**fields)


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects config values that can't work, naming the field, the value and what's allowed."""
    c = config
    best_mode = "min" if c.checkpoint.best_metric.endswith("/loss") else "max"
    checks = [
        ("batch_size", c.batch_size, c.batch_size > 0, "> 0"),
        ("data.image_size", c.data.image_size, c.data.image_size % 32 == 0, "a multiple of 32"),
        (
            "data.validation_fraction",
            c.data.validation_fraction,
            0.0 < c.data.validation_fraction < 1.0,
            "in (0, 1): validation picks the best checkpoint",
        ),
        ("data.num_workers", c.data.num_workers, c.data.num_workers >= 0, ">= 0"),
        ("data.eval_num_workers", c.data.eval_num_workers, c.data.eval_num_workers >= 0, ">= 0"),
        (
            "model.drop_path_rate",
            c.model.drop_path_rate,
            0.0 <= c.model.drop_path_rate < 1.0,
            "in [0, 1)",
        ),
        ("model.num_classes", c.model.num_classes, c.model.num_classes == 2, "2 (NC, AD)"),
        ("model.in_chans", c.model.in_chans, c.model.in_chans == 1, "1 (grayscale slices)"),
        (
            "dtype",
            c.get("dtype", "auto"),
            c.get("dtype", "auto") in COMPUTE_DTYPES,
            "|".join(COMPUTE_DTYPES),
        ),
        (
            "model.param_dtype",
            c.model.param_dtype,
            c.model.param_dtype == "float32",
            "float32 (parameters and optimizer state stay float32; config.dtype sets compute)",
        ),
        (
            "checkpoint.best_mode",
            c.checkpoint.best_mode,
            c.checkpoint.best_metric not in BEST_METRICS or c.checkpoint.best_mode == best_mode,
            f"{best_mode} for {c.checkpoint.best_metric}",
        ),
        (
            "step_impl",
            c.get("step_impl", "jit"),
            c.get("step_impl", "jit") in ("jit", "shard_map"),
            "jit|shard_map",
        ),
        (
            "grad_accum_steps",
            c.get("grad_accum_steps", 1),
            isinstance(c.get("grad_accum_steps", 1), int) and c.get("grad_accum_steps", 1) >= 1,
            "an integer >= 1",
        ),
        (
            "checkpoint.best_metric",
            c.checkpoint.best_metric,
            c.checkpoint.best_metric in BEST_METRICS,
            "|".join(BEST_METRICS),
        ),
        (
            "optim.label_smoothing",
            c.optim.label_smoothing,
            0.0 <= c.optim.label_smoothing < 1.0,
            "in [0, 1)",
        ),
        ("optim.learning_rate", c.optim.learning_rate, c.optim.learning_rate > 0, "> 0"),
        (
            "optim.layer_decay",
            c.optim.get("layer_decay", 1.0),
            0.0 < c.optim.get("layer_decay", 1.0) <= 1.0,
            "in (0, 1] (1.0: off)",
        ),
        ("log_every_steps", c.log_every_steps, c.log_every_steps > 0, "> 0"),
        (
            "profile.start_step/num_steps",
            (c.get("profile", {}).get("start_step", 0), c.get("profile", {}).get("num_steps", 0)),
            c.get("profile", {}).get("start_step", 0) >= 0
            and c.get("profile", {}).get("num_steps", 0) >= 0,
            ">= 0 each",
        ),
        ("checkpoint.keep_latest", c.checkpoint.keep_latest, c.checkpoint.keep_latest >= 1, ">= 1"),
        ("checkpoint.keep_best", c.checkpoint.keep_best, c.checkpoint.keep_best >= 1, ">= 1"),
        (
            "augment.crop_scale",
            tuple(c.augment.crop_scale),
            0 < c.augment.crop_scale[0] <= c.augment.crop_scale[1] <= 1,
            "0 < low <= high <= 1",
        ),
        (
            "augment.crop_ratio",
            tuple(c.augment.crop_ratio),
            0 < c.augment.crop_ratio[0] <= c.augment.crop_ratio[1],
            "0 < low <= high",
        ),
    ]
    for name, value in c.augment.items():
        if name.endswith("_prob"):
            checks.append((f"augment.{name}", value, 0.0 <= value <= 1.0, "in [0, 1]"))
    checks += [
        (
            "augment.blur_kernel",
            c.augment.get("blur_kernel", 3),
            c.augment.get("blur_kernel", 3) % 2 == 1,
            "an odd number",
        ),
        (
            "augment.noise_std",
            c.augment.get("noise_std", 0),
            c.augment.get("noise_std", 0) >= 0,
            ">= 0",
        ),
    ]
    if "mix" in c:
        m = c.mix
        checks += [
            ("mix.prob", m.prob, 0.0 <= m.prob <= 1.0, "in [0, 1]"),
            ("mix.mixup_alpha", m.mixup_alpha, m.mixup_alpha >= 0, ">= 0"),
            ("mix.cutmix_alpha", m.cutmix_alpha, m.cutmix_alpha >= 0, ">= 0"),
            ("mix.group_size", m.group_size, m.group_size > 0, "> 0"),
            (
                "mix.explore_end/transition_end",
                (m.explore_end, m.transition_end),
                0.0 <= m.explore_end <= m.transition_end <= 1.0,
                "0 <= explore_end <= transition_end <= 1",
            ),
        ]
    checks += _averaging_checks(c)

    reports.EvalSettings.from_config(c)
    try:
        augment.AugmentSpec.from_config(c.augment)
        mixing.spec_from_config(c, 1)
        convnext.spec_from_config(c.model)
    except ValueError as e:
        raise UserError(str(e)) from e
    for field, value, ok, expected in checks:
        if not ok:
            raise UserError(f"config.{field} = {value!r}: expected {expected}.")
    _check_init_from(c.model.get("init_from", ""))
    validate_batch(c, jax.device_count(), jax.process_count())


def _averaging_checks(config: ml_collections.ConfigDict) -> list[tuple]:
    """(field, value, ok, expected) checks of config.ema and config.swa."""
    checks = []
    if config.get("ema") is not None:
        e = config.ema
        checks += [
            ("ema.decay", e.decay, 0.0 <= e.decay < 1.0, "in [0, 1)"),
            ("ema.min_decay", e.min_decay, 0.0 <= e.min_decay <= e.decay, "in [0, ema.decay]"),
            ("ema.warmup_gamma", e.warmup_gamma, e.warmup_gamma > 0, "> 0"),
            ("ema.warmup_power", e.warmup_power, e.warmup_power > 0, "> 0"),
            ("ema.dtype", e.dtype, e.dtype in averaging.DTYPES, "|".join(averaging.DTYPES)),
        ]
    if config.get("swa") is not None:
        s = config.swa
        checks += [
            ("swa.start_fraction", s.start_fraction, 0.0 <= s.start_fraction < 1.0, "in [0, 1)"),
            ("swa.dtype", s.dtype, s.dtype in averaging.DTYPES, "|".join(averaging.DTYPES)),
        ]
        steps, epochs = s.get("every_steps"), s.get("every_epochs")
        if steps is not None:
            checks.append(("swa.every_steps", steps, steps >= 1, ">= 1"))
        elif epochs is not None:
            checks.append(("swa.every_epochs", epochs, epochs > 0, "> 0"))
        else:
            checks.append(("swa.every_steps/every_epochs", None, False, "one of them set"))
    return checks


def _check_init_from(value: str) -> None:
    """model.init_from must read 'LAYOUT:PATH' (whether the file exists is checked when a run
    starts from it: `check_init_from_file`; a resume no longer needs it)."""
    if value:
        convert.parse_init_from(value)


def check_init_from_file(value: str) -> None:
    """A local weight file named by model.init_from exists (before any data work)."""
    if not value:
        return
    _, path = convert.parse_init_from(value)
    if "://" not in path and not os.path.isfile(os.path.expanduser(path)):
        raise UserError(f"config.model.init_from = {value!r}: no such file {path}.")


def validate_batch(config: ml_collections.ConfigDict, devices: int, processes: int) -> None:
    """The global batch must split evenly over devices, processes, microbatches and mix groups."""
    batch, accum = config.batch_size, config.get("grad_accum_steps", 1)
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
    per_process = batch // processes
    if "mix" in config and config.mix.prob > 0 and per_process % config.mix.group_size:
        raise UserError(
            f"config.mix.group_size = {config.mix.group_size} must divide the per-process batch "
            f"{per_process} (batch_size {batch} over {processes} processes)."
        )


def validate_durations(
    config: ml_collections.ConfigDict, total_steps: int, warmup_steps: int
) -> None:
    """Checks that need the run's length in steps (known once the data set is)."""
    if total_steps < 1:
        raise UserError(f"The run has {total_steps} training steps; expected at least 1.")
    if warmup_steps > total_steps:
        raise UserError(
            f"The warmup ({warmup_steps} steps) is longer than training ({total_steps} steps): "
            "shorten config.warmup_epochs/warmup_steps or train longer."
        )


def compute_dtype(config: ml_collections.ConfigDict, backend: str | None = None) -> str:
    """The resolved compute dtype: config.dtype, with 'auto' = bfloat16 on GPU/TPU, float32 on
    CPU (XLA:CPU gains nothing from bfloat16 here; see the README)."""
    dtype = config.get("dtype", "auto")
    if dtype != "auto":
        return dtype
    return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"
