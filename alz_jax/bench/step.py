"""`bench step`: train-step throughput of the step `main` builds, on random uint8 batches.

The run spec is the config's, resolved once by `specs.resolve`; the benchmark's settings (image
size, batch, model, input channels, dtype, depthwise implementation, step form) then replace
fields of the resolved specs. Reports the time to the first step (compile), the steady-state
step time, peak host memory, model FLOPs per image, achieved FLOP/s and, where the device's peak
is known, utilisation; `--profile` adds a per-op time breakdown of one step.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import statistics
import tempfile
import time

import jax
import numpy as np

from alz_jax.bench import common
from alz_jax.bench.settings import Settings
from alz_jax.host import compilation_cache, profiling
from alz_jax.host.errors import UserError
from alz_jax.models import depthwise, registry, scan
from alz_jax.run import specs

# The fields of every family's spec (in_chans, num_classes, drop_path_rate, ...): what is not
# one of them is a spec's architecture.
COMMON_FIELDS = frozenset.intersection(
    *(frozenset(f.name for f in dataclasses.fields(fam.spec_type))
      for fam in registry.FAMILIES.values())
)  # fmt: skip


def chosen_model(args: Settings, backend: str | None = None) -> registry.ModelSpec:
    """The model the settings choose, resolved as `main` resolves a config's: --model (a
    registry name), else the config's model with --size as its `model.size`, at --res, in
    --dtype, with --depthwise and --in_chans; `backend` as in `specs.model_spec`."""
    section = args.base_config.model
    if (not args.model and args.size) or args.aggregator:
        section = section.copy_and_resolve_references()
        with section.unlocked():
            if not args.model and args.size:
                section.size = args.size
            section.aggregator = args.aggregator or section.get("aggregator", "none")
    dtype = specs.compute_dtype(args.dtype, backend)
    model = common.model_spec(section, args.model, dtype, args.res, backend)
    encoder = model.encoder if isinstance(model, scan.ScanSpec) else model
    fields = {"in_chans": args.in_chans}
    if args.depthwise and "depthwise" in {f.name for f in dataclasses.fields(encoder)}:
        fields["depthwise"] = depthwise.resolve(args.depthwise, backend)
    if isinstance(model, scan.ScanSpec):  # the scan model of the changed encoder
        return dataclasses.replace(
            model, encoder=dataclasses.replace(encoder, **fields), in_chans=args.in_chans
        )
    return dataclasses.replace(model, **fields)


def bag_size(run: specs.RunSpec, args: Settings) -> int:
    """Slices per bag of a scan model's step (--bag_size, else the config's data.bag_size);
    0 for a slice model. --batch counts images, so it must be a multiple."""
    if not isinstance(run.model, scan.ScanSpec):
        return 0
    k = args.bag_size or args.base_config.data.get("bag_size", 16)
    if k < 1:
        raise UserError(
            "The config's data.bag_size is 0 (every slice of a scan), which a benchmark without "
            "data cannot know: give --bag_size (e.g. 20, ADNI's slices per scan)."
        )
    if args.batch % k:
        raise UserError(f"--batch={args.batch} images must be a whole number of bags of {k}.")
    return k


def random_batch(args: Settings, k: int, num_classes: int) -> dict:
    """A random uint8 batch of --batch images: of images, or of bags of `k` slices."""
    rng = np.random.default_rng(0)
    shape = (args.res, args.res, args.in_chans)
    if not k:
        return {"image": rng.integers(0, 256, (args.batch, *shape), np.uint8),
                "label": rng.integers(0, num_classes, (args.batch,)).astype(np.int32)}  # fmt: skip
    bags = args.batch // k
    return {
        "image": rng.integers(0, 256, (bags, k, *shape), np.uint8),
        "label": rng.integers(0, num_classes, (bags,)).astype(np.int32),
        "slice_mask": np.ones((bags, k), np.int32),
        "positions": np.tile(np.arange(k, dtype=np.int32), (bags, 1)),
    }


def model_name(model: registry.ModelSpec, args: Settings) -> str:
    """The registry name of the benchmarked model ('convnext_tiny', 'vit_s16', ...): --model or
    the config's model.name where the registry knows it, else the named variant of the same
    family and title, else the family's name (a model of explicit architecture)."""
    name = args.model or args.base_config.model.get("name", "")
    if name in registry.NAMES:
        return name
    fam, title = registry.family(model), registry.title(model)
    for candidate in registry.NAMES:
        spec = registry.spec_from_name(candidate)
        if registry.family(spec).name == fam.name and registry.title(spec) == title:
            return candidate
    return fam.name


def step_spec(args: Settings) -> specs.RunSpec:
    """The run spec a `step` benchmark trains with: the config's, resolved, with the settings'
    model, batch, image size and step form. Host-side Mixup/CutMix (whose groups must divide the
    batch) takes no part: the step is fed random labelled batches."""
    run = specs.resolve(args.base_config)
    pipeline = dataclasses.replace(
        run.pipeline, image_size=args.res, mix=dataclasses.replace(run.pipeline.mix, prob=0.0)
    )
    step = dataclasses.replace(run.step, impl=args.step_impl) if args.step_impl else run.step
    run = dataclasses.replace(run, batch_size=args.batch, pipeline=pipeline, step=step)
    run = run.with_model(chosen_model(args))
    k = bag_size(run, args)
    # A scan model's batch counts bags (what the devices split).
    return dataclasses.replace(run, batch_size=args.batch // k) if k else run


def _architecture(spec: registry.ModelSpec) -> dict:
    """The spec's fields other than the COMMON_FIELDS, as JSON values."""
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    return {k: _architecture(v) if dataclasses.is_dataclass(v) else  # a scan model's encoder
            list(v) if isinstance(v, tuple) else v
            for k, v in fields.items() if k not in COMMON_FIELDS}  # fmt: skip


def _time_steps(compiled, state, batch, steps: int) -> tuple[list[float], float, dict]:
    """Step times of `steps` more steps, minor page faults per step, the last metrics."""
    times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / max(steps, 1)
    return times, faults, metrics


def _model_fields(run: specs.RunSpec, args: Settings) -> dict:
    """The report's description of the benchmarked model and step."""
    spec = run.model
    return {
        "model": model_name(spec, args),
        "family": registry.family(spec).name,
        "title": registry.title(spec),
        "params": registry.count_params(spec),
        "architecture": _architecture(spec),
        "depths": list(spec.depths) if hasattr(spec, "depths") else None,
        "dims": list(spec.dims) if hasattr(spec, "dims") else None,
        "batch": args.batch,
        "res": args.res,
        "in_chans": args.in_chans,
        "dtype": spec.dtype,
        # the families that have one (a scan model: its encoder's)
        "depthwise": getattr(getattr(spec, "encoder", spec), "depthwise", None),
        "step_impl": run.step.impl,
        "aggregator": getattr(spec, "aggregator", "none"),
        "bag_size": bag_size(run, args),
        "remat": getattr(spec, "remat", False),
    }


def _flop_fields(spec: registry.ModelSpec, compiled, args: Settings, step_s: float) -> dict:
    """Model FLOPs per image (training: 3x the forward), XLA's count and the achieved rate,
    against the device's peak where known."""
    model_flops = 3.0 * registry.forward_flops_per_image(spec, args.res)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    peak = common.peak_flops(jax.devices()[0].device_kind, spec.dtype)
    achieved = model_flops * args.batch / step_s
    return {
        "model_flop_per_image": model_flops,
        "model_gflop_per_image": round(model_flops / 1e9, 2),
        "achieved_gflop_per_s": round(achieved / 1e9, 2),
        "xla_gflop_per_image": round(float(cost.get("flops", 0.0)) / args.batch / 1e9, 2),
        "achieved_tflop_per_s": round(achieved / 1e12, 4),
        "peak_tflop_per_s": round(peak / 1e12, 1) if peak else None,
        "utilisation": round(achieved / peak, 3) if peak else None,
    }


def run(args: Settings) -> dict:
    """Times the train step `main` would build for `step_spec(args)` on random batches."""
    cache = compilation_cache.enable()
    run_spec, parts = common.assemble(step_spec(args), total_steps=1000, warmup_steps=10)
    state, train_step = parts.fresh_state(run_spec.seed), parts.train_step
    k = bag_size(run_spec, args)
    batch = random_batch(args, k, run_spec.model.num_classes)
    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    first_step_s = time.perf_counter() - start
    times, faults, metrics = _time_steps(compiled, state, batch, args.steps)
    step_s = statistics.median(times)
    result = {
        "bench": "step",
        **_model_fields(run_spec, args),
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "config": args.config,
        "config_hash": common.config_hash(run_spec),
        "compile_cache": os.fspath(cache) if cache else None,
        "compile_s": round(compile_s, 2),
        "first_step_s": round(first_step_s, 2),
        "step_s": round(step_s, 6),
        "step_s_all": [round(t, 6) for t in times],
        "img_per_s": round(args.batch / step_s, 3),
        "peak_host_mib": common.peak_rss_mib(),
        **profiling.xla_memory(compiled),
        "page_faults_per_step": round(faults),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        **_flop_fields(run_spec.model, compiled, args, step_s),
        "loss": float(metrics["loss"]),
        "optional_imports": common.optional_imports(),
    }
    if args.profile:
        with tempfile.TemporaryDirectory() as trace_dir:
            with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
                state, metrics = compiled(state, batch)
                jax.block_until_ready(metrics)
            result["profile"] = profiling.op_breakdown(trace_dir, compiled.as_text())
    return result
