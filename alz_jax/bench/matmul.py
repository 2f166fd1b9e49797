"""`bench matmul`: XLA's matmuls against numpy's BLAS on the MLP shapes of a ConvNeXt of
`--size` at `--batch` x `--res`."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from alz_jax.bench.settings import Settings
from alz_jax.models import convnext


def _gflop_per_s(fn: Callable[[], object], flops: float, seconds: float) -> float:
    """GFLOP/s of `fn` (`flops` per call) over a window of `seconds`, after one untimed call."""
    fn()
    start, reps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn()
        reps += 1
    return flops * reps / (time.perf_counter() - start) / 1e9


def _row(stage: int, blocks: int, n: int, k: int, m: int, seconds: float, rng) -> dict:
    """One (n, k) @ (k, m) matmul in XLA and in numpy."""
    a = rng.standard_normal((n, k), np.float32)
    b = rng.standard_normal((k, m), np.float32)
    xla, a_dev, b_dev = jax.jit(jnp.matmul), jnp.asarray(a), jnp.asarray(b)
    flops = 2 * n * k * m
    rates = {
        "xla": _gflop_per_s(lambda: xla(a_dev, b_dev).block_until_ready(), flops, seconds),
        "numpy": _gflop_per_s(lambda: a @ b, flops, seconds),
    }
    return {
        "stage": stage,
        "shape": [n, k, m],
        "blocks": blocks,
        "xla_gflop_per_s": round(rates["xla"], 1),
        "numpy_gflop_per_s": round(rates["numpy"], 1),
        "xla_over_numpy": round(rates["xla"] / rates["numpy"], 3),
    }


def blas_name() -> str:
    """numpy's BLAS library, version and architecture (threadpoolctl's report)."""
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415  (optional: a test dependency)

        return ", ".join(
            f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        )
    except ImportError:
        return "unknown (threadpoolctl not installed)"


def run(args: Settings) -> dict:
    """GFLOP/s of XLA's matmuls against numpy's BLAS, per stage of the ConvNeXt: (B*S*S, C) @
    (C, 4C) and (B*S*S, 4C) @ (4C, C)."""
    depths, dims = convnext.SIZES[args.size]
    rng = np.random.default_rng(0)
    rows = []
    for i, dim in enumerate(dims):
        side = args.res // (4 * 2**i)
        n = args.batch * side * side
        for k, m in ((dim, 4 * dim), (4 * dim, dim)):
            rows.append(_row(i + 1, depths[i], n, k, m, args.seconds, rng))
    return {"bench": "matmul", "model": args.size, "batch": args.batch, "res": args.res,
            "numpy_blas": blas_name(), "shapes": rows}  # fmt: skip
