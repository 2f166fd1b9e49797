"""The benchmarks' command line: one set of absl flags shared by all (a flag a benchmark does not
use is ignored), and each benchmark's defaults for the flags it leaves unset."""

from __future__ import annotations

import dataclasses
import os

import ml_collections
from absl import app, flags

from alz_jax.bench import common
from alz_jax.host import command
from alz_jax.models import registry

# Defaults that differ between benchmarks (a 0 batch or res: the config's).
DEFAULTS = {
    "step": {"config": "convnext_t", "batch": 16, "res": 224, "steps": 5},
    "compare": {"config": "convnext_t", "batch": 16, "res": 224, "steps": 5},
    "pipeline": {"config": "demo", "batch": 0, "res": 0, "seconds": 10.0},
    "e2e": {"config": "demo", "batch": 0, "res": 0, "steps": 40},
    "matmul": {"batch": 16, "res": 224, "seconds": 2.0},
    "augment": {"res": 224, "seconds": 10.0},
    "devices": {},
    "depthwise": {"batch": 8, "res": 224, "steps": 5},
    "summary": {},
}

_CONFIG = command.define_config(
    help_string="step, compare: default convnext_t; pipeline, e2e: default demo.", required=False
)
command.define_distributed()
_MODEL = flags.DEFINE_enum(
    "model", None, sorted(registry.NAMES),
    "step, compare: the model (config.model.name: convnext_tiny, vit_s16, resnet50, ...); "
    "default: a ConvNeXt of --size.",
)  # fmt: skip
_SIZE = flags.DEFINE_string("size", "tiny", "ConvNeXt size (atto .. large; empty: the config's).")
_BATCH = flags.DEFINE_integer("batch", None, "Batch (default 16; pipeline, e2e: the config's).")
_RES = flags.DEFINE_integer("res", None, "Image size (default 224; pipeline, e2e: the config's).")
_IN_CHANS = flags.DEFINE_integer("in_chans", 3, "Input channels (step, compare).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "auto"], "Compute dtype.")
_DEPTHWISE = flags.DEFINE_enum(
    "depthwise", None, ["auto", "xla", "shift"], "Depthwise conv (default: the config's)."
)
_STEP_IMPL = flags.DEFINE_enum(
    "step_impl", None, ["jit", "shard_map"], "Train step form (default: the config's)."
)
_STEPS = flags.DEFINE_integer("steps", None, "Timed steps (step, compare: 5; e2e: 40).")
_AGGREGATOR = flags.DEFINE_enum(
    "aggregator", None, ["none", "mean", "attention", "transformer"],
    "step: a scan model pooling bags of --bag_size slices (default: the config's "
    "model.aggregator); --batch still counts images.",
)  # fmt: skip
_BAG_SIZE = flags.DEFINE_integer("bag_size", None, "step: slices per bag (default: the config's).")
_PROFILE = flags.DEFINE_bool("profile", False, "step: add a per-op time breakdown.")
_TORCH_PYTHON = flags.DEFINE_string(
    "torch_python", "/tmp/torchref/bin/python", "compare: python of a PyTorch virtualenv."
)
_REFERENCE = flags.DEFINE_string(
    "reference", os.fspath(common.TORCH_REFERENCE), "compare: the anchor."
)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "compare: rounds of anchor and step.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "pipeline: Grain worker counts.")
_SECONDS = flags.DEFINE_float("seconds", None, "Timing window (pipeline, augment: 10; matmul: 2).")
_WARMUP_BATCHES = flags.DEFINE_integer("warmup_batches", 3, "pipeline: untimed batches.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 1, "e2e: Grain workers.")
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 3, "e2e: untimed steps.")
_PREFETCH = flags.DEFINE_integer("prefetch", 2, "pipeline, e2e: Grain prefetch buffer size.")
_RESULTS = flags.DEFINE_string("results", "gpu_check_out/results.jsonl", "summary: JSON lines.")


@dataclasses.dataclass(frozen=True)
class Settings:
    """One benchmark's settings: the flags, with the benchmark's defaults for those not given."""

    config: str  # the config file
    base_config: ml_collections.ConfigDict  # its get_config(), with --config.x=y overrides
    model: str  # a registry name; "": the config's model (a ConvNeXt of `size` if set)
    size: str
    batch: int
    res: int
    in_chans: int
    dtype: str
    depthwise: str  # "": the config's
    step_impl: str  # "": the config's
    steps: int
    aggregator: str  # "": the config's model.aggregator
    bag_size: int  # 0: the config's data.bag_size
    profile: bool
    torch_python: str
    reference: str
    rounds: int
    workers: tuple[int, ...]
    seconds: float
    warmup_batches: int
    num_workers: int
    warmup_steps: int
    prefetch: int
    results: str


def _value(holder: flags.FlagHolder, defaults: dict, fallback: float) -> float:
    return holder.value if holder.value is not None else defaults.get(holder.name, fallback)


def settings(benchmark: str) -> Settings:
    """The parsed flags for `benchmark`, its defaults filled in."""
    defaults = DEFAULTS[benchmark]
    if _CONFIG.value is not None:
        config_file, base_config = os.fspath(command.config_file()), _CONFIG.value
    else:
        config_file = command.resolve_config(defaults.get("config", "convnext_t"))
        base_config = command.load_config(config_file)
    model = _MODEL.value or ""
    # --size names a variant: the same as --model's, or a conflict.
    if model and _SIZE.present and _SIZE.value and registry.NAMES[model][1] != _SIZE.value:
        raise app.UsageError(f"--model={model} and --size={_SIZE.value}: give one of them.")
    return Settings(
        config=config_file, base_config=base_config, model=model, size=_SIZE.value,
        batch=_value(_BATCH, defaults, 0), res=_value(_RES, defaults, 0),
        in_chans=_IN_CHANS.value, dtype=_DTYPE.value, depthwise=_DEPTHWISE.value or "",
        step_impl=_STEP_IMPL.value or "", steps=_value(_STEPS, defaults, 5),
        aggregator=_AGGREGATOR.value or "", bag_size=_BAG_SIZE.value or 0,
        profile=_PROFILE.value, torch_python=_TORCH_PYTHON.value, reference=_REFERENCE.value,
        rounds=_ROUNDS.value, workers=tuple(int(w) for w in _WORKERS.value),
        seconds=_value(_SECONDS, defaults, 10.0), warmup_batches=_WARMUP_BATCHES.value,
        num_workers=_NUM_WORKERS.value, warmup_steps=_WARMUP_STEPS.value,
        prefetch=_PREFETCH.value, results=_RESULTS.value,
    )  # fmt: skip
