#!/usr/bin/env bash
# Benchmarks on a GPU host: the train step of ConvNeXt-T (bfloat16 and float32, XLA's grouped
# depthwise conv, chosen automatically off CPU) and the side-by-side ratio to PyTorch eager.
#
#   launch/bench_gpu.sh [OUT_DIR]            # JSON lines go to OUT_DIR (default bench_gpu_out)
#   DRY_RUN=1 launch/bench_gpu.sh            # print the commands instead of running them
#   TORCH_PYTHON=/path/to/python BATCH=128 launch/bench_gpu.sh
#
# Needs the GPU install of JAX in the project's virtualenv (README.md, "Install"):
#   .venv/bin/pip install "jax[cuda13]==0.10.1"
# and, for `compare` (alz_jax/reference/torch_reference.py), a separate virtualenv with PyTorch:
#   python3 -m venv /tmp/torchref && /tmp/torchref/bin/pip install torch==2.14.1 torchvision==0.29.1
# The anchor script runs on CPU as shipped; for a GPU anchor use timm's or torchvision's own
# benchmark on the GPU (docs/performance.md).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
torch_python=${TORCH_PYTHON:-/tmp/torchref/bin/python}
out=${1:-bench_gpu_out}
batch=${BATCH:-128}
res=${RES:-224}
steps=${STEPS:-20}

commands=(
  "$python -m alz_jax.bench step --batch=$batch --res=$res --in_chans=3 --dtype=bfloat16 --steps=$steps --profile"
  "$python -m alz_jax.bench step --batch=$batch --res=$res --in_chans=3 --dtype=float32 --steps=$steps"
  "$python -m alz_jax.bench step --batch=$batch --res=$res --in_chans=1 --dtype=bfloat16 --steps=$steps"
  "$python -m alz_jax.bench pipeline --config=$repo/configs/convnext_t.py --res=$res --batch=$batch --workers=1,4,8"
  "$python -m alz_jax.bench compare --torch_python=$torch_python --batch=16 --res=$res --in_chans=3 --dtype=float32 --rounds=3"
)
if [ -n "${DRY_RUN:-}" ]; then
  printf '%s\n' "${commands[@]}"
  exit 0
fi
mkdir -p "$out"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.csv" || true
for i in "${!commands[@]}"; do
  echo "+ ${commands[$i]}" >&2
  # Each command is a fixed string built above from numbers and paths; word splitting is the
  # intent (paths with spaces are not supported here).
  # shellcheck disable=SC2086
  ${commands[$i]} | tee "$out/bench_$i.json"
done
