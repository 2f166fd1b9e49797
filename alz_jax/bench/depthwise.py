"""`bench depthwise`: the two depthwise implementations against each other on this device
(outputs and gradients on a ConvNeXt's 7x7 shapes, float32 and bfloat16) and the time of each."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from alz_jax.bench.settings import Settings
from alz_jax.models import convnext, depthwise

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


def run(args: Settings) -> dict:
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
