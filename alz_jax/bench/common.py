"""What the benchmarks share: the device peaks, the report's small figures (peak host memory,
optional imports, the hash of the benchmarked spec), the run spec and assembly `main` builds,
with a benchmark's overrides applied to the resolved specs, and child benchmark processes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections

from alz_jax.core import sharding
from alz_jax.models import registry
from alz_jax.run import assembly, specs

REPO = Path(__file__).resolve().parents[2]
# Runs in its own PyTorch virtualenv, by path: not imported (alz_jax/reference/*.py).
TORCH_REFERENCE = REPO / "alz_jax" / "reference" / "torch_reference.py"

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


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def config_hash(run: specs.RunSpec) -> str:
    """Short hash of a resolved run spec: equal hashes mean the same step was benchmarked."""
    return hashlib.sha256(repr(run).encode()).hexdigest()[:12]


def model_spec(
    model_config: ml_collections.ConfigDict,
    name: str,
    dtype: str,
    image_size: int,
    backend: str | None = None,
) -> registry.ModelSpec:
    """The spec of the config's model section, or of the registry model `name` if given (with
    the section's architecture overrides only if `name` is of the section's own family),
    resolved as `main` resolves it (specs.model_spec) for `dtype`, `backend` and `image_size`."""
    own = specs.model_spec(model_config, dtype, backend, image_size)
    if not name:
        return own
    section = model_config.copy_and_resolve_references()
    with section.unlocked():
        section.name = name
        arch, section.arch = dict(section.get("arch") or {}), ml_collections.ConfigDict()
        named = specs.model_spec(section, dtype, backend, image_size)
        if not arch or registry.family(named).name != registry.family(own).name:
            return named
        section.arch = ml_collections.ConfigDict(arch)
    return specs.model_spec(section, dtype, backend, image_size)


def assemble(
    run: specs.RunSpec, total_steps: int, warmup_steps: int
) -> tuple[specs.RunSpec, assembly.Assembly]:
    """The run spec and assembly `main` would build for `run` (its batch checked against this
    runtime's devices, as `specs.resolve` checks a config's), over a schedule of `total_steps`
    (its length only sets the learning rate; a benchmark's few steps sit in the warmup)."""
    specs.check_batch(run, jax.device_count(), jax.process_count())
    run = dataclasses.replace(
        run,
        train=specs.Duration("num_train", steps=total_steps),
        warmup=specs.Duration("warmup", steps=warmup_steps),
    )
    # Class weights scale the loss only; any class counts do for timing.
    plan = run.plan(max(1, total_steps // 10), class_counts=[1] * run.model.num_classes)
    return run, assembly.assemble(run, plan, sharding.make_mesh(), {"mean": 0.2, "std": 0.25})


def config_override_args() -> list[str]:
    """The command line's --config.x.y=value overrides, for a child benchmark."""
    return [a for a in sys.argv[1:] if a.startswith(("--config.", "--noconfig."))]


def run_json(cmd: list[str]) -> dict:
    """Runs a benchmark command (an argument list, no shell) and parses its last output line."""
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[0]} ... failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
