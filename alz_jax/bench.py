"""Command: benchmarks, each printing one JSON line (README, "Performance").

    python -m alz_jax.bench step [--model=NAME | --size=tiny] [--batch=16 --res=224 --in_chans=3
                                  --dtype=float32 --depthwise=auto --profile]
    python -m alz_jax.bench compare --torch_python=/tmp/torchref/bin/python [--model=NAME
                                    --rounds=3]
    python -m alz_jax.bench pipeline [--config=demo --workers=0,1,2]
    python -m alz_jax.bench e2e [--config=demo --steps=60]
    python -m alz_jax.bench matmul [--size=tiny --batch=16 --res=224]
    python -m alz_jax.bench augment [--res=224 --seconds=10]
    python -m alz_jax.bench devices
    python -m alz_jax.bench depthwise [--size=tiny --batch=8 --res=224 --steps=5]
    python -m alz_jax.bench summary --results=gpu_check_out/results.jsonl

The benchmark is the first positional argument; the flags are absl's, shared by all (a flag a
benchmark does not use is ignored), with each benchmark's own defaults where they differ.
--config takes a file or a config name and `--config.x.y=value` overrides, as `main` does.

`step`: train-step throughput of the step `main` builds (`steps.make_train_step`, from a config
file with the benchmark's overrides; random uint8 images): time to the first step (compile),
steady-state step time, peak host memory, model FLOPs per image, achieved FLOP/s and, where the
device's peak is known, utilisation; `--profile` adds a per-op time breakdown of one step.
`--model` picks any model family by its `config.model.name` (models/registry.py NAMES:
convnext_tiny, vit_s16, vit_b16, resnet50, efficientnet_b0, ...); without it `--size` picks a
ConvNeXt (tiny by default). `compare`: the PyTorch anchor alz_jax/reference/torch_reference.py
(in a separate PyTorch virtualenv) and `step` alternately, A B A B, in fresh processes with
identical settings (the same --model for both); the ratio per round and its median.
`pipeline`: training input throughput (decode, augment, Mixup/CutMix, batching) in the main
process and with N Grain workers. `e2e`: the input pipeline feeding the train step, with the
share of time spent waiting for input. `matmul`: XLA's matmuls against numpy's BLAS (on a
ConvNeXt's MLP shapes). `augment`: one core's decode + seed-report augmentation rate.
`devices`: versions, backend, devices and what `auto` resolves to here (depthwise, dtype).
`depthwise`: the two depthwise implementations against each other on this device (outputs and
gradients on a ConvNeXt's 7x7 shapes, float32 and bfloat16) and the time of each.
`summary`: reads the JSON lines of launch/gpu_check.sh, writes summary.md beside them and prints
the figures derived from them (JAX over PyTorch, host cores per device).

Only `pipeline` and `e2e` import the data set and the input pipeline (TFDS, Grain): the others
are meant for hosts without them (launch/gpu_check.sh, tests/test_light_imports.py).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from alz_jax.core import sharding
from alz_jax.data import augment, preprocess
from alz_jax.host import command, compilation_cache, profiling
from alz_jax.models import convnext, depthwise, registry
from alz_jax.run import assembly, specs

REPO = Path(__file__).resolve().parent.parent
# Runs in its own PyTorch virtualenv, by path: not imported (alz_jax/reference/*.py).
TORCH_REFERENCE = Path(__file__).resolve().parent / "reference" / "torch_reference.py"
SEED_AUGMENT_REFERENCE = Path(__file__).resolve().parent / "reference" / "seed_augment.py"

# Dense peak FLOP/s per chip for utilisation (vendor figures; bfloat16 and float32 where the
# datasheet gives them, float32 on GPUs as the TF32 tensor-core rate). None: unknown (CPUs).
PEAK_FLOPS = {
    ("NVIDIA H100 80GB HBM3", "bfloat16"): 989e12,
    ("NVIDIA H100 80GB HBM3", "float32"): 494e12,
    ("NVIDIA H200", "bfloat16"): 989e12,
    ("NVIDIA H200", "float32"): 494e12,
    ("NVIDIA A100-SXM4-80GB", "bfloat16"): 312e12,
    ("NVIDIA A100-SXM4-80GB", "float32"): 156e12,
    ("NVIDIA A100-SXM4-40GB", "bfloat16"): 312e12,
    ("NVIDIA A100-SXM4-40GB", "float32"): 156e12,
    ("NVIDIA H100 PCIe", "bfloat16"): 756e12,
    ("NVIDIA H100 PCIe", "float32"): 378e12,
    ("NVIDIA H100 NVL", "bfloat16"): 835e12,
    ("NVIDIA H100 NVL", "float32"): 418e12,
    ("NVIDIA H200 NVL", "bfloat16"): 835e12,
    ("NVIDIA H200 NVL", "float32"): 418e12,
    ("TPU v4", "bfloat16"): 275e12,
    ("TPU v5 lite", "bfloat16"): 197e12,
    ("TPU v5", "bfloat16"): 459e12,
}


# Optional heavy packages: `step` and `devices` report which of them the process imported (the
# train step needs none of them: tests/test_light_imports.py).
OPTIONAL_PACKAGES = ("tensorflow", "tensorflow_datasets", "grain", "clu", "orbax", "matplotlib",
                     "torch")  # fmt: skip


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one `device_kind` (jax.devices()[0].device_kind) in `dtype`; None
    where unknown (CPUs, and any device not in PEAK_FLOPS: no guess from a similar name)."""
    return PEAK_FLOPS.get((device_kind, dtype))


def optional_imports() -> list[str]:
    """The OPTIONAL_PACKAGES this process has imported."""
    return [name for name in OPTIONAL_PACKAGES if name in sys.modules]


def _reference_augment_config() -> ml_collections.ConfigDict:
    return command.load_config("convnext_t").augment


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def config_hash(config: ml_collections.ConfigDict) -> str:
    """Short hash of a config's JSON form: equal hashes mean the same step was benchmarked."""
    return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:12]


def step_config(args: Settings) -> ml_collections.ConfigDict:
    """The config a `step` benchmark trains with: the config file plus the benchmark's settings
    (image size, batch, model, input channels, dtype, depthwise implementation). A ConvNeXt
    named by --model is set as --size sets it (model.name 'convnext', model.size): the same
    config, and so the same hash, either way."""
    config = copy.deepcopy(args.base_config)
    with config.unlocked():
        config.batch_size = args.batch
        config.data.image_size = args.res
        # The step is fed random labelled batches: host-side Mixup/CutMix (whose groups must
        # divide the batch) takes no part in it.
        config.mix.prob = 0.0
        config.dtype = args.dtype
        if args.model:
            family_name, variant = registry.NAMES[args.model]
            if family_name != _family_name(config):  # the config's arch is for its own family
                config.model.arch = ml_collections.ConfigDict()
            config.model.name = "convnext" if family_name == "convnext" else args.model
            if family_name == "convnext":
                config.model.size = variant
        elif args.size:
            config.model.size = args.size
        if args.depthwise:
            config.model.depthwise = args.depthwise
        if args.step_impl:
            config.step_impl = args.step_impl
    return config


def _family_name(config: ml_collections.ConfigDict) -> str:
    """The model family of a config ('convnext' where model.name is 'convnext' or empty)."""
    name = config.model.get("name", "convnext") or "convnext"
    return "convnext" if name == "convnext" else registry.NAMES[name][0]


def model_name(config: ml_collections.ConfigDict) -> str:
    """The registry name of a config's model ('convnext_tiny', 'vit_s16', ...); 'convnext' for
    a ConvNeXt of explicit depths and dims (no size)."""
    name = config.model.get("name", "convnext") or "convnext"
    if name == "convnext" and config.model.size:
        return f"convnext_{config.model.size}"
    return name


def _architecture(spec: registry.ModelSpec) -> dict:
    """The spec's fields other than the ones every family shares (in_chans, num_classes,
    drop_path_rate, head_dropout, dtype, param_dtype), as JSON values."""
    common = ("in_chans", "num_classes", "drop_path_rate", "head_dropout", "dtype", "param_dtype")
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items() if k not in common}


def assemble(
    config: ml_collections.ConfigDict, in_chans: int, total_steps: int, warmup_steps: int
) -> tuple[specs.RunSpec, assembly.Assembly]:
    """The run spec and assembly `main` would build for `config` (with `in_chans` input
    channels: 3 to compare with ImageNet models), over a schedule of `total_steps` (its length
    only sets the learning rate; a benchmark's few steps sit in the warmup)."""
    run = specs.resolve(config)
    run = dataclasses.replace(
        run,
        model=dataclasses.replace(run.model, in_chans=in_chans),
        train=specs.Duration("num_train", steps=total_steps),
        warmup=specs.Duration("warmup", steps=warmup_steps),
    )
    # Class weights scale the loss only; any class counts do for timing.
    plan = run.plan(max(1, total_steps // 10), class_counts=[1] * run.model.num_classes)
    return run, assembly.assemble(run, plan, sharding.make_mesh(), {"mean": 0.2, "std": 0.25})


def bench_step(args: Settings) -> dict:
    """Times the train step `main` would build for `step_config(args)` on random batches."""
    cache = compilation_cache.enable()
    config = step_config(args)
    run, parts = assemble(config, args.in_chans, total_steps=1000, warmup_steps=10)
    spec, dtype = run.model, run.model.dtype
    state, train_step = parts.fresh_state(run.seed), parts.train_step
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (args.batch, args.res, args.res, args.in_chans), np.uint8),
        "label": rng.integers(0, 2, (args.batch,)).astype(np.int32),
    }
    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    first_step_s = time.perf_counter() - start
    times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / max(args.steps, 1)
    step_s = statistics.median(times)
    # Training: 3x the forward (the backward computes gradients for activations and weights).
    model_flops = 3.0 * registry.forward_flops_per_image(spec, args.res)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    device = jax.devices()[0]
    peak = peak_flops(device.device_kind, dtype)
    achieved = model_flops * args.batch / step_s
    result = {
        "bench": "step",
        "model": model_name(config),
        "family": registry.family(spec).name,
        "title": registry.title(spec),
        "params": registry.count_params(spec),
        "architecture": _architecture(spec),
        "depths": list(spec.depths) if hasattr(spec, "depths") else None,
        "dims": list(spec.dims) if hasattr(spec, "dims") else None,
        "batch": args.batch,
        "res": args.res,
        "in_chans": args.in_chans,
        "dtype": dtype,
        "depthwise": getattr(spec, "depthwise", None),  # ConvNeXt, EfficientNet
        "step_impl": run.step.impl,
        "devices": jax.device_count(),
        "device_kind": device.device_kind,
        "config": args.config,
        "config_hash": config_hash(config),
        "compile_cache": os.fspath(cache) if cache else None,
        "compile_s": round(compile_s, 2),
        "first_step_s": round(first_step_s, 2),
        "step_s": round(step_s, 6),
        "step_s_all": [round(t, 6) for t in times],
        "img_per_s": round(args.batch / step_s, 3),
        "peak_host_mib": _peak_rss_mib(),
        "page_faults_per_step": round(faults),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "model_flop_per_image": model_flops,
        "model_gflop_per_image": round(model_flops / 1e9, 2),
        "achieved_gflop_per_s": round(achieved / 1e9, 2),
        "xla_gflop_per_image": round(float(cost.get("flops", 0.0)) / args.batch / 1e9, 2),
        "achieved_tflop_per_s": round(achieved / 1e12, 4),
        "peak_tflop_per_s": round(peak / 1e12, 1) if peak else None,
        "utilisation": round(achieved / peak, 3) if peak else None,
        "loss": float(metrics["loss"]),
        "optional_imports": optional_imports(),
    }
    if args.profile:
        with tempfile.TemporaryDirectory() as trace_dir:
            with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
                state, metrics = compiled(state, batch)
                jax.block_until_ready(metrics)
            result["profile"] = profiling.op_breakdown(trace_dir, compiled.as_text())
    return result


def _config_override_args() -> list[str]:
    """The command line's --config.x.y=value overrides, for a child benchmark."""
    return [a for a in sys.argv[1:] if a.startswith(("--config.", "--noconfig."))]


def bench_compare(args: Settings) -> dict:
    """Runs the PyTorch anchor and `step` alternately in fresh processes; ratio per round."""
    if not Path(args.torch_python).exists():
        raise SystemExit(
            f"--torch_python={args.torch_python} does not exist: make a virtualenv with "
            "torch==2.14.1 torchvision==0.29.1 timm==1.0.31 (see "
            "alz_jax/reference/torch_reference.py) and pass its python."
        )
    if not Path(args.reference).exists():
        raise SystemExit(f"--reference={args.reference}: no such file (the PyTorch anchor).")
    name, torch_cmd, jax_cmd = compare_commands(args)
    rounds = []
    for _ in range(args.rounds):
        anchor = _run_json(torch_cmd)
        ours = _run_json(jax_cmd)
        rounds.append(
            {
                "torch_img_per_s": anchor["img_per_s"],
                "jax_img_per_s": ours["img_per_s"],
                "ratio": round(ours["img_per_s"] / anchor["img_per_s"], 3),
                "jax_achieved_gflop_per_s": ours["achieved_gflop_per_s"],
                "jax_first_step_s": ours["first_step_s"],
                "torch_first_step_s": anchor["first_step_s"],
            }
        )
        print(json.dumps({"round": len(rounds), **rounds[-1]}), file=sys.stderr, flush=True)
    return {
        "bench": "compare",
        "anchor": os.fspath(args.reference),
        "settings": {
            "model": name,
            "batch": args.batch,
            "res": args.res,
            "in_chans": args.in_chans,
            "dtype": args.dtype,
            "steps": args.steps,
        },
        "anchor_model": anchor.get("builder"),
        "jax_model": ours["title"],
        "model_gflop_per_image": ours["model_gflop_per_image"],
        "jax_depthwise": ours["depthwise"],
        "config_hash": ours["config_hash"],
        "rounds": rounds,
        "median_ratio": round(statistics.median(r["ratio"] for r in rounds), 3),
        "glibc_tunables_both": os.environ.get("GLIBC_TUNABLES", ""),
    }


def compare_commands(args: Settings) -> tuple[str, list[str], list[str]]:
    """The model's registry name, and the anchor's and `step`'s command lines for it with the
    same settings (batch, size, channels, dtype, steps; the config's classes and stochastic
    depth for the anchor); `step` gets the config file and its --config overrides as well."""
    config = step_config(args)
    name = model_name(config)
    if name not in registry.NAMES:
        raise SystemExit(
            f"compare: the config's model ({name}) is not a named model the PyTorch anchor "
            f"builds; give --model (one of {', '.join(sorted(registry.NAMES))})."
        )
    common = [f"--batch={args.batch}", f"--res={args.res}", f"--in_chans={args.in_chans}",
              f"--dtype={args.dtype}", f"--steps={args.steps}"]  # fmt: skip
    torch_cmd = [args.torch_python, os.fspath(args.reference), f"--model={name}", *common,
                 f"--classes={config.model.num_classes}",
                 f"--drop_path_rate={config.model.drop_path_rate}"]  # fmt: skip
    jax_cmd = [sys.executable, "-m", "alz_jax.bench", "step", f"--config={args.config}",
               *_config_override_args(), f"--model={name}", *common]  # fmt: skip
    if args.depthwise:
        jax_cmd.append(f"--depthwise={args.depthwise}")
    return name, torch_cmd, jax_cmd


def _run_json(cmd: list[str]) -> dict:
    """Runs a benchmark command (an argument list, no shell) and parses its last output line."""
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[0]} ... failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _training_input(args: Settings, num_workers: int, prefetch: int):
    """The config (with the benchmark's settings), the data and its train iterator."""
    # TFDS and Grain only here, for the benchmarks that read data: `step` needs neither.
    from alz_jax.data import dataset, input_pipeline  # noqa: PLC0415

    config = copy.deepcopy(args.base_config)
    with config.unlocked():
        config.data.num_workers = num_workers
        config.data.prefetch_buffer_size = prefetch
        if args.res:
            config.data.image_size = args.res
        if args.batch:
            config.batch_size = args.batch
    run = specs.resolve(config)
    data = dataset.prepare(run.data)
    # Mixing (if the config mixes) at full strength: the schedule of a 10,000-step run.
    mix = dataclasses.replace(run.pipeline.mix, total_steps=10_000)
    pipeline = dataclasses.replace(run.pipeline, mix=mix)
    batches = input_pipeline.train_dataset(data.source("train"), pipeline, run.batch_size, seed=0)
    return config, data, iter(batches)


def bench_pipeline(args: Settings) -> dict:
    """Training batches per second from the input pipeline alone, per worker count."""
    results = []
    for workers in args.workers:
        config, _, iterator = _training_input(args, workers, args.prefetch)
        with contextlib.closing(iterator):
            for _ in range(args.warmup_batches):
                next(iterator)
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                next(iterator)
                n += 1
            elapsed = time.perf_counter() - start
        img_per_s = n * config.batch_size / elapsed
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
        "image_size": config.data.image_size,
        "batch": config.batch_size,
        "prefetch": args.prefetch,
        "augment_and_mix": "the config's (decode, augmentation, Mixup/CutMix, batching)",
        "per_worker_count": results,
    }


def bench_e2e(args: Settings) -> dict:
    """The input pipeline feeding the config's train step, timed as the training loop times
    it: the share of wall time spent waiting for the next batch."""
    from alz_jax.data import input_pipeline  # noqa: PLC0415  (Grain: as in _training_input)

    config, _, iterator = _training_input(args, args.num_workers, args.prefetch)
    run, parts = assemble(config, 1, total_steps=10_000, warmup_steps=100)
    state, train_step = parts.fresh_state(run.seed), parts.train_step
    batch_sharding = sharding.batch_sharded(parts.mesh)
    with contextlib.closing(iterator):
        for _ in range(args.warmup_steps):  # compile, fill the workers' buffers
            state, metrics = train_step(
                state, input_pipeline.to_global(next(iterator), batch_sharding)
            )
        jax.block_until_ready(metrics)
        wait = 0.0
        start = time.perf_counter()
        for _ in range(args.steps):
            t = time.perf_counter()
            batch = next(iterator)
            wait += time.perf_counter() - t
            state, metrics = train_step(state, input_pipeline.to_global(batch, batch_sharding))
        jax.block_until_ready(metrics)
        elapsed = time.perf_counter() - start
    return {
        "bench": "e2e",
        "config": args.config,
        "config_hash": config_hash(config),
        "num_workers": args.num_workers,
        "prefetch": args.prefetch,
        "batch": config.batch_size,
        "image_size": config.data.image_size,
        "depthwise": run.model.depthwise,
        "steps": args.steps,
        "step_s": round(elapsed / args.steps, 6),
        "img_per_s": round(args.steps * config.batch_size / elapsed, 1),
        "input_wait_share": round(wait / elapsed, 4),
    }


def bench_matmul(args: Settings) -> dict:
    """GFLOP/s of XLA's matmuls against numpy's BLAS on the MLP shapes of a ConvNeXt at
    `--batch` x `--res` (per stage: (B*S*S, C) @ (C, 4C) and (B*S*S, 4C) @ (4C, C))."""
    depths, dims = convnext.SIZES[args.size]
    rng = np.random.default_rng(0)
    rows = []
    for i, dim in enumerate(dims):
        side = args.res // (4 * 2**i)
        n = args.batch * side * side
        for k, m in ((dim, 4 * dim), (4 * dim, dim)):
            a = rng.standard_normal((n, k), np.float32)
            b = rng.standard_normal((k, m), np.float32)
            xla, a_dev, b_dev = jax.jit(jnp.matmul), jnp.asarray(a), jnp.asarray(b)
            rates = {}
            for name, fn in (
                ("xla", lambda xla=xla, a=a_dev, b=b_dev: xla(a, b).block_until_ready()),
                ("numpy", lambda a=a, b=b: a @ b),
            ):
                fn()
                start, reps = time.perf_counter(), 0
                while time.perf_counter() - start < args.seconds:
                    fn()
                    reps += 1
                rates[name] = 2 * n * k * m * reps / (time.perf_counter() - start) / 1e9
            rows.append(
                {
                    "stage": i + 1,
                    "shape": [n, k, m],
                    "blocks": depths[i],
                    "xla_gflop_per_s": round(rates["xla"], 1),
                    "numpy_gflop_per_s": round(rates["numpy"], 1),
                    "xla_over_numpy": round(rates["xla"] / rates["numpy"], 3),
                }
            )
    return {"bench": "matmul", "model": args.size, "batch": args.batch, "res": args.res,
            "numpy_blas": _blas_name(), "shapes": rows}  # fmt: skip


def _blas_name() -> str:
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415  (optional: a test dependency)

        return ", ".join(
            f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        )
    except ImportError:
        return "unknown (threadpoolctl not installed)"


def bench_augment(size: int, seconds: float) -> dict:
    """Images per second of decode + the seed augmentation pipeline on one core (OpenCV's own
    threads off), on the input of alz_jax/reference/seed_augment.py (the torchvision anchor):
    64 random 256x240 grayscale JPEGs, quality 90. Gaussian noise is not in this figure: it runs
    on the device."""
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(64):
        image = (rng.random((240, 256)) * 255).astype(np.uint8)
        _, buf = cv2.imencode(".jpeg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        jpegs.append(buf.tobytes())
    spec = specs.augment_spec(_reference_augment_config())
    aug_rng = np.random.default_rng(1)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for data in jpegs:
            square = preprocess.pad_to_square(preprocess.decode_image(data))
            out = augment.augment(aug_rng, square, size, spec)
            n += 1
    elapsed = time.perf_counter() - start
    return {
        "bench": "augment",
        "size": size,
        "threads": 1,
        "pipeline": "seed report (configs/convnext_t.py augment), noise on device",
        "img_per_s": round(n / elapsed, 1),
        "bytes_per_image_to_device": int(out.nbytes),
        "bytes_per_image_float32_3ch": size * size * 3 * 4,
    }


def _versions() -> dict[str, str | None]:
    """Installed versions of the packages the train step runs on (None: not installed)."""
    names = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
             "orbax-checkpoint", "numpy", "ml_collections", "opencv-python-headless")  # fmt: skip
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _nvidia_smi() -> list[str] | None:
    """nvidia-smi's name, driver, memory, clock and power limit per GPU; None without it."""
    if not shutil.which("nvidia-smi"):
        return None
    query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
    done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                          capture_output=True, text=True, check=False, timeout=30)  # fmt: skip
    return done.stdout.strip().splitlines() if done.returncode == 0 else None


def bench_devices(args: Settings) -> dict:
    """What this process runs on: versions, backend, devices, the peak FLOP/s known for them
    and what `model.depthwise=auto` and `dtype=auto` resolve to here."""
    del args  # no settings: it describes the machine
    devices = jax.devices()
    kind = devices[0].device_kind
    peaks = {dtype: peak_flops(kind, dtype) for dtype in ("bfloat16", "float32")}
    memory = (devices[0].memory_stats() or {}).get("bytes_limit")
    return {
        "bench": "devices",
        "python": platform.python_version(),
        "versions": _versions(),
        "backend": jax.default_backend(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "device_kind": kind,
        "devices": [{"id": d.id, "kind": d.device_kind, "platform": d.platform} for d in devices],
        "device_memory_gib": round(memory / 2**30, 1) if memory else None,
        "nvidia_smi": _nvidia_smi(),
        "depthwise_auto": depthwise.resolve("auto"),
        "dtype_auto": specs.compute_dtype("auto"),
        "peak_tflop_per_s": {k: round(v / 1e12, 1) if v else None for k, v in peaks.items()},
        "optional_imports": optional_imports(),
    }


# Depthwise parity: float32 at full matmul/convolution precision (no TF32), and bfloat16 inputs
# at the default precision; the largest difference over the largest magnitude.
DEPTHWISE_TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}


def _depthwise_outputs(impl: str, x: jax.Array, kernel: jax.Array, weights: jax.Array):
    """The depthwise conv's output and the gradients of a scalar loss of it (input, kernel)."""

    def loss(x, kernel):
        out = depthwise.depthwise_conv(x, kernel, impl).astype(jnp.float32)
        return jnp.sum(jnp.sin(out) * weights)

    return (depthwise.depthwise_conv(x, kernel, impl), *jax.grad(loss, argnums=(0, 1))(x, kernel))


def _max_rel(reference: jax.Array, other: jax.Array) -> float:
    a, b = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-30))


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(max(reps, 1)):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


def _depthwise_row(shape: tuple, dtype: str, reps: int, rng: np.random.Generator) -> dict:
    """Both implementations on one NHWC shape in one dtype: differences and times."""
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    kernel = jnp.asarray(rng.standard_normal((7, 7, 1, shape[-1])) / 7, jnp.float32)
    weights = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    precision = "highest" if dtype == "float32" else "default"
    outputs, ms = {}, {}
    # The precision is read when the function is traced: at its first call, inside the context.
    with jax.default_matmul_precision(precision):
        for impl in ("xla", "shift"):
            fn = jax.jit(functools.partial(_depthwise_outputs, impl))
            outputs[impl] = jax.block_until_ready(fn(x, kernel, weights))
            ms[impl] = _median_ms(lambda fn=fn: fn(x, kernel, weights), reps)
    names = ("output", "d_input", "d_kernel")
    pairs = zip(names, outputs["xla"], outputs["shift"], strict=True)
    errors = {name: _max_rel(ref, got) for name, ref, got in pairs}
    return {
        "shape": list(shape),
        "dtype": dtype,
        "precision": precision,
        "max_rel_diff": {k: float(f"{v:.3g}") for k, v in errors.items()},
        "ok": max(errors.values()) < DEPTHWISE_TOLERANCE[dtype],
        "fwd_bwd_ms": ms,
    }


def bench_depthwise(args: Settings) -> dict:
    """'shift' against XLA's grouped convolution ('xla') on this device, on the 7x7 depthwise
    shapes of ConvNeXt `--size` at `--res` and `--batch` (one per stage): output, input and
    kernel gradients within DEPTHWISE_TOLERANCE, and each one's forward + backward time."""
    _, dims = convnext.SIZES[args.size]
    rng = np.random.default_rng(0)
    rows = []
    for dtype in DEPTHWISE_TOLERANCE:
        for stage, dim in enumerate(dims):
            side = max(1, args.res // (4 * 2**stage))
            rows.append(_depthwise_row((args.batch, side, side, dim), dtype, args.steps, rng))
    return {
        "bench": "depthwise",
        "model": args.size,
        "batch": args.batch,
        "res": args.res,
        "device_kind": jax.devices()[0].device_kind,
        "auto": depthwise.resolve("auto"),
        "tolerance": DEPTHWISE_TOLERANCE,
        "ok": all(r["ok"] for r in rows),
        "rows": rows,
    }


# ---- launch/gpu_check.sh's summary: its JSON lines as a short Markdown page. ----


def _cell(value: object) -> str:
    """A Markdown table cell: one line, pipes escaped, None empty."""
    return "" if value is None else " ".join(str(value).split()).replace("|", "\\|")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = [header, ["---"] * len(header), *rows]
    return ["| " + " | ".join(_cell(c) for c in row) + " |" for row in lines]


def _ok(records: list[dict], bench: str) -> list[dict]:
    """The records of benchmark `bench` whose command succeeded."""
    return [r for r in records if r.get("bench") == bench and r.get("status") == "ok"]


def _anchors(records: list[dict]) -> list[dict]:
    """The PyTorch anchor's successful records (torch_reference.py's lines carry `anchor`)."""
    return [r for r in records if r.get("anchor") and r.get("status") == "ok"]


def _anchor_model(anchor: dict) -> str:
    """The model an anchor record timed (records from before --model name a ConvNeXt
    variant only)."""
    return anchor.get("model") or f"convnext_{anchor.get('variant')}"


def derived_figures(records: list[dict]) -> dict:
    """From gpu_check's records: JAX's step over PyTorch's (same model, batch and dtype), and
    how many host cores of augmentation the fastest step (of any model) needs."""
    steps = {(r["model"], r["batch"], r["dtype"]): r for r in _ok(records, "step")}
    ratios = {}
    for anchor in _anchors(records):
        ours = steps.get((_anchor_model(anchor), anchor["batch"], anchor["dtype"]))
        if ours:
            ratios[anchor["check"]] = round(ours["img_per_s"] / anchor["img_per_s"], 3)
    fastest = max((r["img_per_s"] for r in steps.values()), default=None)
    augment_rates = [r["img_per_s"] for r in _ok(records, "augment")]
    per_core = augment_rates[0] if augment_rates else None
    parity = _ok(records, "depthwise")
    return {
        "bench": "summary",
        "failed": [r["check"] for r in records if r.get("status") not in ("ok", "skipped")],
        "depthwise_parity_ok": parity[0]["ok"] if parity else None,
        "jax_over_torch": ratios,
        "fastest_step_img_per_s": fastest,
        "augment_img_per_s_per_core": per_core,
        "augment_cores_needed": round(fastest / per_core, 1) if fastest and per_core else None,
    }


def _summary_head(records: list[dict]) -> list[str]:
    """The devices, what `auto` chose, and every check's status."""
    lines = ["# GPU check", ""]
    for d in _ok(records, "devices"):
        versions = d["versions"]
        lines += [
            f"- Devices: {d['device_count']} x {d['device_kind']} (backend {d['backend']}); "
            f"JAX {versions['jax']}, Flax {versions['flax']}, Python {d['python']}.",
            f"- `model.depthwise=auto` -> `{d['depthwise_auto']}`; `dtype=auto` -> "
            f"`{d['dtype_auto']}`.",
            "- Peak dense TFLOP/s (for MFU): "
            + ", ".join(f"{k} {v or 'unknown'}" for k, v in d["peak_tflop_per_s"].items())
            + ".",
        ]
    rows = [[r["check"], r["status"], r["seconds"], r.get("reason") or r.get("error", "")[-160:]]
            for r in records]  # fmt: skip
    return [*lines, "", *_table(["check", "status", "s", "note"], rows)]


def _summary_measurements(records: list[dict], derived: dict) -> list[str]:
    """Tables of the parity check, the train steps and the anchor; the host cores needed."""
    lines = []
    for p in _ok(records, "depthwise"):
        rows = [[r["shape"], r["dtype"], *r["max_rel_diff"].values(), r["fwd_bwd_ms"]["xla"],
                 r["fwd_bwd_ms"]["shift"]] for r in p["rows"]]  # fmt: skip
        header = ["shape", "dtype", "output", "d input", "d kernel", "xla ms", "shift ms"]
        verdict = "within tolerance" if p["ok"] else "**OUT OF TOLERANCE**"
        lines += ["", f"## Depthwise: shift against xla, {verdict}", "", *_table(header, rows)]
    if steps := _ok(records, "step"):
        rows = [[r["model"], r["batch"], r["res"], r["dtype"], r["depthwise"], r["img_per_s"],
                 round(r["step_s"] * 1e3, 2), r["compile_s"], r["achieved_tflop_per_s"],
                 r["utilisation"]] for r in steps]  # fmt: skip
        header = ["model", "batch", "res", "dtype", "depthwise", "img/s", "step ms", "compile s",
                  "TFLOP/s", "MFU"]  # fmt: skip
        lines += ["", "## Train step (bench step)", "", *_table(header, rows)]
    if anchors := _anchors(records):
        rows = [[r["check"], _anchor_model(r), r["device"],
                 r["batch"], r["dtype"], r["img_per_s"], r["first_step_s"],
                 derived["jax_over_torch"].get(r["check"])] for r in anchors]  # fmt: skip
        header = ["anchor", "model", "device", "batch", "dtype", "img/s", "first step s",
                  "JAX / it"]  # fmt: skip
        lines += ["", "## PyTorch anchor (alz_jax/reference/torch_reference.py, channels-last)",
                  "", *_table(header, rows)]  # fmt: skip
    if derived["augment_cores_needed"]:
        lines += ["", "## Host augmentation", "",
                  f"One core decodes and augments {derived['augment_img_per_s_per_core']} img/s; "
                  f"the fastest step ({derived['fastest_step_img_per_s']} img/s) needs "
                  f"{derived['augment_cores_needed']} such cores."]  # fmt: skip
    return lines


def bench_summary(args: Settings) -> dict:
    """Writes summary.md beside `--results` (gpu_check's JSON lines); returns the derived
    figures."""
    path = Path(args.results)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    derived = derived_figures(records)
    markdown = [*_summary_head(records), *_summary_measurements(records, derived)]
    (path.parent / "summary.md").write_text("\n".join(markdown) + "\n")
    return derived


# ---- The command line: one set of absl flags; each benchmark's defaults fill the unset ones. ----

BENCHMARKS = {
    "step": bench_step,
    "compare": bench_compare,
    "pipeline": bench_pipeline,
    "e2e": bench_e2e,
    "matmul": bench_matmul,
    "augment": lambda args: bench_augment(args.res, args.seconds),
    "devices": bench_devices,
    "depthwise": bench_depthwise,
    "summary": bench_summary,
}
# Benchmarks that compute with JAX in this process (and so start its runtime); `compare` runs
# `step` in child processes and must leave the accelerator to them.
IN_PROCESS_JAX = ("step", "e2e", "matmul", "devices", "depthwise")
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
_PROFILE = flags.DEFINE_bool("profile", False, "step: add a per-op time breakdown.")
_TORCH_PYTHON = flags.DEFINE_string(
    "torch_python", "/tmp/torchref/bin/python", "compare: python of a PyTorch virtualenv."
)
_REFERENCE = flags.DEFINE_string("reference", os.fspath(TORCH_REFERENCE), "compare: the anchor.")
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
    model: str  # a registry name; "": a ConvNeXt of `size`
    size: str
    batch: int
    res: int
    in_chans: int
    dtype: str
    depthwise: str  # "": the config's
    step_impl: str  # "": the config's
    steps: int
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
    if model and _SIZE.present and _SIZE.value and model != f"convnext_{_SIZE.value}":
        raise app.UsageError(f"--model={model} and --size={_SIZE.value}: give one of them.")
    return Settings(
        config=config_file, base_config=base_config, model=model, size=_SIZE.value,
        batch=_value(_BATCH, defaults, 0), res=_value(_RES, defaults, 0),
        in_chans=_IN_CHANS.value, dtype=_DTYPE.value, depthwise=_DEPTHWISE.value or "",
        step_impl=_STEP_IMPL.value or "", steps=_value(_STEPS, defaults, 5),
        profile=_PROFILE.value, torch_python=_TORCH_PYTHON.value, reference=_REFERENCE.value,
        rounds=_ROUNDS.value, workers=tuple(int(w) for w in _WORKERS.value),
        seconds=_value(_SECONDS, defaults, 10.0), warmup_batches=_WARMUP_BATCHES.value,
        num_workers=_NUM_WORKERS.value, warmup_steps=_WARMUP_STEPS.value,
        prefetch=_PREFETCH.value, results=_RESULTS.value,
    )  # fmt: skip


def main(argv: list[str]) -> None:
    """Runs the benchmark named by the first positional argument and prints its JSON line."""
    if len(argv) != 2 or argv[1] not in BENCHMARKS:
        raise app.UsageError(f"Give one benchmark first: {' | '.join(BENCHMARKS)}.")
    benchmark = argv[1]
    if benchmark in IN_PROCESS_JAX:
        command.start_jax_runtime()
    print(json.dumps(BENCHMARKS[benchmark](settings(benchmark))))


if __name__ == "__main__":
    # Huge pages as `main` has them (the same memory behaviour as training); JAX's runtime only
    # for the benchmarks that compute in this process.
    command.run(main, jax_runtime=False, huge_pages=True)
