"""Command: benchmarks, each printing one JSON line (docs/performance.md), one module each.

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

The benchmark is the first positional argument; the flags are absl's, shared by all
(`settings.py`: a flag a benchmark does not use is ignored), with each benchmark's own defaults
where they differ. --config takes a file or a config name and `--config.x.y=value` overrides, as
`main` does; the benchmarks resolve it once (`specs.resolve`) and apply their settings to the
resolved specs.

`step` (step.py): train-step throughput of the step `main` builds, on random uint8 images.
`--model` picks any model by its `config.model.name` (models/registry.py NAMES: convnext_tiny,
vit_s16, resnet50, efficientnet_b0, ...); without it the config's model, with `--size` as its
ConvNeXt size (tiny by default). `compare` (compare.py): the PyTorch anchor
alz_jax/reference/torch_reference.py (in a separate PyTorch virtualenv) and `step` alternately,
A B A B, in fresh processes with identical settings. `pipeline` (pipeline.py): training input
throughput with N Grain workers. `e2e` (e2e.py): the input pipeline feeding the train step.
`matmul` (matmul.py): XLA's matmuls against numpy's BLAS. `augment` (augment.py): one core's
decode + seed-report augmentation rate. `devices` (devices.py): versions, devices and what
`auto` resolves to. `depthwise` (depthwise.py): the two depthwise implementations against each
other. `summary` (summary.py): launch/gpu_check.sh's JSON lines as summary.md and derived figures.

Only `pipeline` and `e2e` import the data set and the input pipeline (TFDS, Grain); this package
imports the other benchmarks only, which are meant for hosts without them (launch/gpu_check.sh,
tests/test_light_imports.py).
"""

from alz_jax.bench import augment, common, compare, depthwise, devices, matmul, step, summary
from alz_jax.bench.common import PEAK_FLOPS, config_hash, optional_imports, peak_flops
from alz_jax.bench.compare import compare_commands
from alz_jax.bench.settings import Settings

# The names the single-module `alz_jax/bench.py` had (tests, launch/gpu_check.sh).
bench_augment = augment.bench_augment
bench_summary = summary.run
step_config = step.step_spec  # the step's resolved run spec (it was the edited config)

__all__ = [
    "PEAK_FLOPS",
    "Settings",
    "augment",
    "bench_augment",
    "bench_summary",
    "common",
    "compare",
    "compare_commands",
    "config_hash",
    "depthwise",
    "devices",
    "matmul",
    "optional_imports",
    "peak_flops",
    "step",
    "step_config",
    "summary",
]
