"""Benchmarks, each printing one JSON line (README, "Performance").

    python -m alz_jax.bench step [--size tiny --batch 16 --res 224 --in_chans 3
                                  --dtype float32 --depthwise auto --profile]
    python -m alz_jax.bench compare --torch_python /tmp/torchref/bin/python [--rounds 3]
    python -m alz_jax.bench pipeline [--config configs/demo.py --workers 0,1,2]
    python -m alz_jax.bench e2e [--config configs/demo.py --steps 60]
    python -m alz_jax.bench augment [--size 224 --seconds 10]

`step`: train-step throughput of the step `main` builds (`steps.make_train_step`, from a config
file with the benchmark's overrides; random uint8 images): time to the first step (compile),
steady-state step time, peak host memory, model FLOPs per image, achieved FLOP/s and, where the
device's peak is known, utilisation; `--profile` adds a per-op time breakdown of one step.
`compare`: ../shared/bench/torch_reference.py and `step` alternately, A B A B, in fresh
processes with identical settings; the ratio per round and its median. `pipeline`: training
input throughput (decode, augment, Mixup/CutMix, batching) in the main process and with N Grain
workers. `e2e`: the input pipeline feeding the train step, with the share of time spent waiting
for input. `augment`: one core's decode + seed-report augmentation rate.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from alz_jax.data import augment, preprocess

REPO = Path(__file__).resolve().parent.parent
TORCH_REFERENCE = REPO.parent / "shared" / "bench" / "torch_reference.py"

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
    ("TPU v4", "bfloat16"): 275e12,
    ("TPU v5 lite", "bfloat16"): 197e12,
    ("TPU v5", "bfloat16"): 459e12,
}


def load_config(path: str | Path):
    """`get_config()` of a config file."""
    spec = importlib.util.spec_from_file_location("bench_config", os.fspath(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _reference_augment_config():
    return load_config(REPO / "configs" / "convnext_t.py").augment


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def config_hash(config) -> str:
    """Short hash of a config's JSON form: equal hashes mean the same step was benchmarked."""
    return hashlib.sha256(config.to_json(sort_keys=True).encode()).hexdigest()[:12]


def step_config(args: argparse.Namespace):
    """The config a `step` benchmark trains with: the config file plus the benchmark's settings
    (image size, batch, model size, input channels, dtype, depthwise implementation)."""
    config = load_config(args.config)
    with config.unlocked():
        config.batch_size = args.batch
        config.data.image_size = args.res
        config.model.in_chans = args.in_chans
        config.dtype = args.dtype
        if args.size:
            config.model.size = args.size
        if args.depthwise:
            config.model.depthwise = args.depthwise
        if args.step_impl:
            config.step_impl = args.step_impl
    return config


def bench_step(args: argparse.Namespace) -> dict:
    """Times the train step `main` would build for `step_config(args)` on random batches."""
    import jax

    from alz_jax.core import sharding, steps
    from alz_jax.host import compilation_cache, profiling
    from alz_jax.models import convnext
    from alz_jax.run import config_lib

    cache = compilation_cache.enable()
    config = step_config(args)
    mesh = sharding.make_mesh()
    dtype = config_lib.compute_dtype(config)
    spec = convnext.spec_from_config(config.model, dtype)
    total_steps = 1000  # schedule length only: the benchmark's few steps sit in the warmup
    averages = config_lib.averaging_spec(config, total_steps, 100)
    tx, schedule = steps.make_optimizer(config, total_steps, 10)
    model = steps.make_model(spec)
    state = steps.create_train_state(spec, tx, mesh, config.seed, averages)
    train_step = steps.make_train_step(
        model, tx, schedule, config, {"mean": 0.2, "std": 0.25}, mesh, averages
    )
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
    model_flops = convnext.train_flops_per_image(spec, args.res)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    device = jax.devices()[0]
    peak = PEAK_FLOPS.get((device.device_kind, dtype))
    achieved = model_flops * args.batch / step_s
    result = {
        "bench": "step",
        "model": args.size or "config",
        "depths": list(spec.depths),
        "dims": list(spec.dims),
        "batch": args.batch,
        "res": args.res,
        "in_chans": args.in_chans,
        "dtype": dtype,
        "depthwise": spec.depthwise,
        "step_impl": config.get("step_impl", "jit"),
        "devices": jax.device_count(),
        "device_kind": device.device_kind,
        "config": os.fspath(args.config),
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
        "model_gflop_per_image": round(model_flops / 1e9, 2),
        "xla_gflop_per_image": round(float(cost.get("flops", 0.0)) / args.batch / 1e9, 2),
        "achieved_tflop_per_s": round(achieved / 1e12, 4),
        "utilisation": round(achieved / peak, 3) if peak else None,
        "loss": float(metrics["loss"]),
    }
    if args.profile:
        with tempfile.TemporaryDirectory() as trace_dir:
            with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
                state, metrics = compiled(state, batch)
                jax.block_until_ready(metrics)
            result["profile"] = profiling.op_breakdown(trace_dir, compiled.as_text())
    return result


def bench_compare(args: argparse.Namespace) -> dict:
    """Runs the PyTorch anchor and `step` alternately in fresh processes; ratio per round."""
    if not Path(args.torch_python).exists():
        raise SystemExit(
            f"--torch_python {args.torch_python} does not exist: make a virtualenv with "
            "torch==2.14.1 torchvision==0.29.1 (../shared/bench/README.md) and pass its python."
        )
    if not Path(args.reference).exists():
        raise SystemExit(f"--reference {args.reference}: no such file (the PyTorch anchor).")
    torch_cmd = [
        args.torch_python, os.fspath(args.reference), "--variant", args.size,
        "--batch", str(args.batch), "--res", str(args.res), "--in-chans", str(args.in_chans),
        "--dtype", args.dtype, "--steps", str(args.steps),
    ]  # fmt: skip
    jax_cmd = [
        sys.executable, "-m", "alz_jax.bench", "step", "--config", os.fspath(args.config),
        "--size", args.size, "--batch", str(args.batch), "--res", str(args.res),
        "--in_chans", str(args.in_chans), "--dtype", args.dtype, "--steps", str(args.steps),
    ]  # fmt: skip
    if args.depthwise:
        jax_cmd += ["--depthwise", args.depthwise]
    rounds = []
    for _ in range(args.rounds):
        anchor = _run_json(torch_cmd)
        ours = _run_json(jax_cmd)
        rounds.append(
            {
                "torch_img_per_s": anchor["img_per_s"],
                "jax_img_per_s": ours["img_per_s"],
                "ratio": round(ours["img_per_s"] / anchor["img_per_s"], 3),
                "jax_first_step_s": ours["first_step_s"],
                "torch_first_step_s": anchor["first_step_s"],
            }
        )
        print(json.dumps({"round": len(rounds), **rounds[-1]}), file=sys.stderr, flush=True)
    return {
        "bench": "compare",
        "anchor": os.fspath(args.reference),
        "settings": {
            "model": args.size,
            "batch": args.batch,
            "res": args.res,
            "in_chans": args.in_chans,
            "dtype": args.dtype,
            "steps": args.steps,
        },
        "jax_depthwise": ours["depthwise"],
        "config_hash": ours["config_hash"],
        "rounds": rounds,
        "median_ratio": round(statistics.median(r["ratio"] for r in rounds), 3),
        "glibc_tunables_both": os.environ.get("GLIBC_TUNABLES", ""),
    }


def _run_json(cmd: list[str]) -> dict:
    """Runs a benchmark command (an argument list, no shell) and parses its last output line."""
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[0]} ... failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _training_input(args: argparse.Namespace, num_workers: int, prefetch: int):
    """The config (with the benchmark's settings), the data and its train iterator."""
    from alz_jax.data import dataset, input_pipeline

    config = load_config(args.config)
    with config.unlocked():
        config.data.num_workers = num_workers
        config.data.prefetch_buffer_size = prefetch
        if args.res:
            config.data.image_size = args.res
        if args.batch:
            config.batch_size = args.batch
    data = dataset.prepare(config.data)
    iterator = iter(
        input_pipeline.train_dataset(
            data.source("train"), config, config.batch_size, seed=0, total_steps=10_000
        )
    )
    return config, data, iterator


def bench_pipeline(args: argparse.Namespace) -> dict:
    """Training batches per second from the input pipeline alone, per worker count."""
    results = []
    for workers in [int(w) for w in args.workers.split(",")]:
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
        "config": os.fspath(args.config),
        "image_size": config.data.image_size,
        "batch": config.batch_size,
        "prefetch": args.prefetch,
        "augment_and_mix": "the config's (decode, augmentation, Mixup/CutMix, batching)",
        "per_worker_count": results,
    }


def bench_e2e(args: argparse.Namespace) -> dict:
    """The input pipeline feeding the config's train step, timed as the training loop times
    it: the share of wall time spent waiting for the next batch."""
    import jax

    from alz_jax.core import sharding, steps
    from alz_jax.data import input_pipeline
    from alz_jax.models import convnext
    from alz_jax.run import config_lib

    config, _, iterator = _training_input(args, args.num_workers, args.prefetch)
    mesh = sharding.make_mesh()
    spec = convnext.spec_from_config(config.model, config_lib.compute_dtype(config))
    averages = config_lib.averaging_spec(config, 10_000, 100)
    tx, schedule = steps.make_optimizer(config, 10_000, 100)
    state = steps.create_train_state(spec, tx, mesh, config.seed, averages)
    train_step = steps.make_train_step(
        steps.make_model(spec), tx, schedule, config, {"mean": 0.2, "std": 0.25}, mesh, averages
    )
    batch_sharding = sharding.batch_sharded(mesh)
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
        "config": os.fspath(args.config),
        "config_hash": config_hash(config),
        "num_workers": args.num_workers,
        "prefetch": args.prefetch,
        "batch": config.batch_size,
        "image_size": config.data.image_size,
        "depthwise": spec.depthwise,
        "steps": args.steps,
        "step_s": round(elapsed / args.steps, 6),
        "img_per_s": round(args.steps * config.batch_size / elapsed, 1),
        "input_wait_share": round(wait / elapsed, 4),
    }


def bench_matmul(args: argparse.Namespace) -> dict:
    """GFLOP/s of XLA's matmuls against numpy's BLAS on the MLP shapes of a ConvNeXt at
    `--batch` x `--res` (per stage: (B*S*S, C) @ (C, 4C) and (B*S*S, 4C) @ (4C, C))."""
    import jax
    import jax.numpy as jnp

    from alz_jax.models import convnext

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
        from threadpoolctl import threadpool_info

        return ", ".join(
            f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        )
    except ImportError:
        return "unknown (threadpoolctl not installed)"


def bench_augment(size: int, seconds: float) -> dict:
    """Images per second of decode + the seed augmentation pipeline on one core (OpenCV's own
    threads off), on the input of ../shared/bench/seed_augment.py: 64 random 256x240 grayscale
    JPEGs, quality 90. Gaussian noise is not in this figure: it runs on the device."""
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(64):
        image = (rng.random((240, 256)) * 255).astype(np.uint8)
        _, buf = cv2.imencode(".jpeg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        jpegs.append(buf.tobytes())
    spec = augment.AugmentSpec.from_config(_reference_augment_config())
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


def _step_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.fspath(REPO / "configs" / "convnext_t.py"))
    parser.add_argument("--size", default="tiny", help="ConvNeXt size (atto .. large)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--in_chans", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"])
    parser.add_argument("--depthwise", default="", help="auto|xla|shift (default: the config's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")


def _input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.fspath(REPO / "configs" / "demo.py"))
    parser.add_argument("--res", type=int, default=0, help="image size (default: the config's)")
    parser.add_argument("--batch", type=int, default=0, help="batch (default: the config's)")
    parser.add_argument("--prefetch", type=int, default=2, help="Grain prefetch buffer size")


def main() -> None:
    """Parses the subcommand and prints its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step", help="train-step throughput, compile time, FLOPs, memory")
    _step_arguments(step)
    step.add_argument("--step_impl", default="", help="jit|shard_map (default: the config's)")
    step.add_argument("--profile", action="store_true", help="add a per-op time breakdown")
    compare = sub.add_parser("compare", help="PyTorch anchor and `step`, alternately")
    _step_arguments(compare)
    compare.add_argument("--torch_python", default="/tmp/torchref/bin/python")
    compare.add_argument("--reference", default=os.fspath(TORCH_REFERENCE))
    compare.add_argument("--rounds", type=int, default=3)
    pipeline = sub.add_parser("pipeline", help="input-pipeline throughput per worker count")
    _input_arguments(pipeline)
    pipeline.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    pipeline.add_argument("--seconds", type=float, default=10.0)
    pipeline.add_argument("--warmup_batches", type=int, default=3)
    e2e = sub.add_parser("e2e", help="pipeline plus step: the share of time waiting for input")
    _input_arguments(e2e)
    e2e.add_argument("--num_workers", type=int, default=1)
    e2e.add_argument("--steps", type=int, default=40)
    e2e.add_argument("--warmup_steps", type=int, default=3)
    matmul = sub.add_parser("matmul", help="XLA matmul GFLOP/s against numpy's BLAS")
    matmul.add_argument("--size", default="tiny")
    matmul.add_argument("--batch", type=int, default=16)
    matmul.add_argument("--res", type=int, default=224)
    matmul.add_argument("--seconds", type=float, default=2.0)
    aug = sub.add_parser("augment", help="host augmentation throughput on one core")
    aug.add_argument("--size", type=int, default=224)
    aug.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    from alz_jax.host import hostenv

    hostenv.reexec_with_huge_pages()  # as main does: same memory behaviour as training
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags (defaults here)
    if args.command == "augment":
        result = bench_augment(args.size, args.seconds)
    else:
        result = {"step": bench_step, "compare": bench_compare, "pipeline": bench_pipeline,
                  "e2e": bench_e2e, "matmul": bench_matmul}[args.command](args)  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
