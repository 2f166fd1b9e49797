"""`bench devices`: versions, backend, devices and what `auto` resolves to here (depthwise,
dtype)."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess

import jax

from alz_jax.bench import common
from alz_jax.bench.settings import Settings
from alz_jax.models import depthwise
from alz_jax.run import specs


def versions() -> dict[str, str | None]:
    """Installed versions of the packages the train step runs on (None: not installed)."""
    names = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax",
             "orbax-checkpoint", "numpy", "ml_collections", "opencv-python-headless")  # fmt: skip
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def nvidia_smi() -> list[str] | None:
    """nvidia-smi's name, driver, memory, clock and power limit per GPU; None without it."""
    if not shutil.which("nvidia-smi"):
        return None
    query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
    done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                          capture_output=True, text=True, check=False, timeout=30)  # fmt: skip
    return done.stdout.strip().splitlines() if done.returncode == 0 else None


def run(args: Settings) -> dict:
    """What this process runs on: versions, backend, devices, the peak FLOP/s known for them
    and what `model.depthwise=auto` and `dtype=auto` resolve to here."""
    del args  # no settings: it describes the machine
    devices = jax.devices()
    kind = devices[0].device_kind
    peaks = {dtype: common.peak_flops(kind, dtype) for dtype in ("bfloat16", "float32")}
    memory = (devices[0].memory_stats() or {}).get("bytes_limit")
    return {
        "bench": "devices",
        "python": platform.python_version(),
        "versions": versions(),
        "backend": jax.default_backend(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "device_kind": kind,
        "devices": [{"id": d.id, "kind": d.device_kind, "platform": d.platform} for d in devices],
        "device_memory_gib": round(memory / 2**30, 1) if memory else None,
        "nvidia_smi": nvidia_smi(),
        "depthwise_auto": depthwise.resolve("auto"),
        "dtype_auto": specs.compute_dtype("auto"),
        "peak_tflop_per_s": {k: round(v / 1e12, 1) if v else None for k, v in peaks.items()},
        "optional_imports": common.optional_imports(),
    }
