"""`python -m alz_jax.bench BENCHMARK [flags]`: runs one benchmark and prints its JSON line."""

import importlib
import json

from absl import app

from alz_jax.bench import settings
from alz_jax.host import command

# Benchmark -> its module (imported when asked for: `pipeline` and `e2e` bring TFDS and Grain).
_NAMES = "step compare pipeline e2e matmul augment devices depthwise summary"
BENCHMARKS = {name: f"alz_jax.bench.{name}" for name in _NAMES.split()}
# Benchmarks that compute with JAX in this process (and so start its runtime); `compare` runs
# `step` in child processes and must leave the accelerator to them.
IN_PROCESS_JAX = ("step", "e2e", "matmul", "devices", "depthwise")


def main(argv: list[str]) -> None:
    """Runs the benchmark named by the first positional argument and prints its JSON line."""
    if len(argv) != 2 or argv[1] not in BENCHMARKS:
        raise app.UsageError(f"Give one benchmark first: {' | '.join(BENCHMARKS)}.")
    benchmark = argv[1]
    module = importlib.import_module(BENCHMARKS[benchmark])
    if benchmark in IN_PROCESS_JAX:
        command.start_jax_runtime()
    print(json.dumps(module.run(settings.settings(benchmark))))


if __name__ == "__main__":
    # Huge pages as `main` has them (the same memory behaviour as training); JAX's runtime only
    # for the benchmarks that compute in this process.
    command.run(main, jax_runtime=False, huge_pages=True)
