#!/usr/bin/env bash
# The GPU check: what alz_jax's train step does on the GPU of this host, in at most ~8 minutes
# (one H100/H200). Writes one JSON line per check to OUT/results.jsonl, each with `check`,
# `status` (ok, failed, timeout, skipped), `seconds` and `rc`, and the check's own fields (or
# `error`: the end of its stderr; `reason` for a skip); then OUT/summary.md; logs in OUT/logs/.
#
#   python_env     the Python; what alz_jax.bench needs and lacks; what --wheels installed
#   devices        versions, devices, peak FLOP/s, what depthwise=auto and dtype=auto pick
#   depthwise      'shift' against XLA's grouped conv (outputs, gradients) on ConvNeXt-T's shapes
#   step_bB_DTYPE  `bench step`, ConvNeXt-T at 224 px, 3 channels: img/s, TFLOP/s, MFU
#   augment        one host core's decode + augmentation rate at 224 px (`bench augment`)
#   step_NAME, torch_NAME
#                  the other families (FAMILIES: ViT-S/16, ResNet-50, EfficientNet-B0): `bench
#                  step --model=NAME` at the first batch and dtype, and the same step in PyTorch
#                  eager (timm's or torchvision's model; skipped without torch)
#   torch_eager, torch_compile
#                  the same train step in PyTorch (alz_jax/reference/torch_reference.py:
#                  torchvision convnext_tiny, channels-last, bfloat16 autocast), eager and
#                  torch.compile; skipped where TORCH_PYTHON can't import torch and torchvision
#   summary        JAX over PyTorch, and the host cores the fastest step needs (`bench summary`)
#
# Usage:
#   launch/gpu_check.sh [--wheels DIR] [--tiny] [--profile] [OUT]      (OUT: gpu_check_out)
#
# --wheels DIR  installs what alz_jax.bench imports and the host lacks (ml_collections, OpenCV,
#               ...) from DIR with `pip install --no-index --find-links DIR`: never the network.
# --tiny        a tiny model (2 stages), 32 px, one step per check: for CPU (JAX_PLATFORMS=cpu)
#               and CI (tests/test_launch.py); XLA's grouped conv, which compiles fastest on CPU.
# --profile     adds `bench step --profile` (a per-op breakdown) to the first step check.
# Environment: PYTHON (default .venv/bin/python, else python3), TORCH_PYTHON (default PYTHON),
# BUDGET_S (checks are skipped once this many seconds have passed; default 450, tiny 300),
# BATCHES (default "128 256"), DTYPES (default "bfloat16 float32"), STEPS (timed steps, 10),
# FAMILIES (default "vit_s16 resnet50 efficientnet_b0"; --tiny: none).
# A check that fails or runs out of time is recorded and the next one runs; the exit status is
# 1 if any check failed or timed out.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
tiny=0 profile=0 wheels="" out=""
while [ $# -gt 0 ]; do
  case $1 in
    --tiny) tiny=1 ;;
    --profile) profile=1 ;;
    --wheels) wheels=${2:?"--wheels needs a folder"}; shift ;;
    --wheels=*) wheels=${1#--wheels=} ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) out=$1 ;;
  esac
  shift
done
if [ -n "$wheels" ] && [ ! -d "$wheels" ]; then
  echo "gpu_check.sh: --wheels $wheels is not a folder" >&2
  exit 2
fi
out=${out:-gpu_check_out}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
[ -z "$wheels" ] || wheels=$(cd "$wheels" && pwd)

if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
elif [ -x "$repo/.venv/bin/python" ]; then
  python=$repo/.venv/bin/python
else
  python=$(command -v python3)
fi
torch_python=${TORCH_PYTHON:-$python}
# The repository as it is, without installing it (a GPU host has only its own Python).
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo"

if [ "$tiny" = 1 ]; then
  model=(--config=convnext_t --size= --config.model.size= "--config.model.depths=(1,1)"
         "--config.model.dims=(8,16)" --depthwise=xla)
  res=32 batches=${BATCHES:-8} steps=${STEPS:-1} budget=${BUDGET_S:-300}
  depthwise_shapes=(--size=atto --res=32 --batch=2 --steps=1)
  torch_model=(--variant=tiny --res=32) augment_seconds=0.5 families=${FAMILIES-}
else
  model=(--config=convnext_t --size=tiny)
  res=224 batches=${BATCHES:-128 256} steps=${STEPS:-10} budget=${BUDGET_S:-450}
  depthwise_shapes=(--size=tiny --res=224 --batch=8 --steps=5)
  torch_model=(--variant=tiny --res=224) augment_seconds=5
  families=${FAMILIES-vit_s16 resnet50 efficientnet_b0}
fi
dtypes=${DTYPES:-bfloat16 float32}
results=$out/results.jsonl
: > "$results"
start=$SECONDS
failures=0

# One JSON line from a check's exit status and output: its last JSON stdout line, plus check,
# status, seconds, rc, and the end of stderr (error) or why it was skipped (reason). Exits 3 for
# a check that failed (also one that exited 0 without a JSON line).
record_py='
import json, sys
name, status, seconds, rc, detail, out_path, err_path = sys.argv[1:8]
record = {}
if status == "ok":
    lines = [s for s in open(out_path, errors="replace").read().splitlines() if s.startswith("{")]
    try:
        record = json.loads(lines[-1])
    except (IndexError, ValueError):
        status, detail = "failed", "no JSON line on stdout"
if status in ("failed", "timeout") and not detail:
    tail = open(err_path, errors="replace").read().strip().splitlines()[-20:]
    detail = "\n".join(tail) or f"exit status {rc}"
record.update(check=name, status=status, seconds=float(seconds), rc=int(rc))
if detail:
    record["reason" if status == "skipped" else "error"] = detail
print(json.dumps(record))
sys.exit(3 if status in ("failed", "timeout") else 0)
'

# record NAME STATUS SECONDS RC [DETAIL]: appends the check's line to results.jsonl.
record() {
  "$python" -c "$record_py" "$1" "$2" "$3" "$4" "${5:-}" "$out/logs/$1.out" "$out/logs/$1.err" \
    >> "$results" || failures=$((failures + 1))
  echo "[gpu_check] $1: $2 ($3 s)" >&2
}

# check NAME LIMIT_S COMMAND...: runs COMMAND within LIMIT_S seconds and what is left of the
# budget (skipped when under 15 s are left), stdout and stderr to OUT/logs/NAME.{out,err}.
check() {
  local name=$1 limit=$2 left rc=0 status=ok t0
  shift 2
  left=$((budget - (SECONDS - start)))
  : > "$out/logs/$name.out"
  : > "$out/logs/$name.err"
  if [ "$left" -lt 15 ]; then
    record "$name" skipped 0 0 "the time budget (BUDGET_S=$budget) was spent"
    return 0
  fi
  [ "$limit" -le "$left" ] || limit=$left
  local words="$*"
  echo "[gpu_check] $name: ${words:0:300}" | tr '\n' ' ' >&2
  echo >&2
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$out/logs/$name.out" 2> "$out/logs/$name.err" || rc=$?
  case $rc in
    0) ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  record "$name" "$status" "$(echo "$(date +%s.%N) $t0" | awk '{printf "%.1f", $1 - $2}')" "$rc"
}

# What `alz_jax.bench` imports and this Python lacks: installed from --wheels one missing
# distribution at a time (pip resolves its dependencies from the same folder), then reported.
env_py='
import importlib, json, platform, subprocess, sys
wheels = sys.argv[1]
# Import names whose distribution is named otherwise.
DIST = {"cv2": "opencv-python-headless", "absl": "absl-py", "yaml": "PyYAML", "PIL": "pillow",
        "tensorflow_datasets": "tensorflow-datasets", "google": "protobuf"}

def first_missing():
    try:
        importlib.import_module("alz_jax.bench")
    except ModuleNotFoundError as e:
        top = (e.name or "?").split(".")[0]
        return DIST.get(top, top)
    return None

installed, failed = [], None
missing = first_missing()
while wheels and missing and missing not in installed and not failed:
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links",
                           wheels, "--quiet", missing], capture_output=True, text=True)
    if done.returncode:
        failed = f"pip install {missing}: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    else:
        installed.append(missing)
        for name in list(sys.modules):
            if name.startswith("alz_jax"):
                del sys.modules[name]
        importlib.invalidate_caches()
        missing = first_missing()
print(json.dumps({"python": platform.python_version(), "executable": sys.executable,
                  "wheels": wheels or None, "installed": installed, "missing": missing,
                  "install_error": failed}))
'

# step BATCH DTYPE: `bench step` of the model (ConvNeXt-T; --tiny: the tiny one), 3 channels.
profile_flag=()
[ "$profile" = 0 ] || profile_flag=(--profile)
step() {
  check "step_b$1_$2" 180 "$python" -m alz_jax.bench step "${model[@]}" --batch="$1" \
    --res="$res" --in_chans=3 --dtype="$2" --steps="$steps" "${profile_flag[@]}"
  profile_flag=()
}

# The PyTorch anchor at the first batch, bfloat16 autocast: torch_reference.py as shipped for
# eager mode; for torch.compile the model it builds is wrapped before its main() runs.
torch_py='
import importlib.util, sys
mode, path, *args = sys.argv[1:]
spec = importlib.util.spec_from_file_location("torch_reference", path)
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)
if mode == "compile":
    import torch
    build = reference.build_model
    reference.build_model = lambda *a, **k: torch.compile(build(*a, **k))
sys.argv = [path, *args]
reference.main()
'
torch_device_py='import torch, torchvision; print("cuda" if torch.cuda.is_available() else "cpu")'
read -r anchor_batch _ <<< "$batches"
read -r first_dtype other_dtypes <<< "$dtypes"

# anchor MODE LIMIT_S: the anchor in eager or compile mode (skipped without torch).
anchor() {
  if [ -z "${torch_device:-}" ]; then
    record "torch_$1" skipped 0 0 "$torch_python can't import torch and torchvision"
    return 0
  fi
  check "torch_$1" "$2" "$torch_python" -c "$torch_py" "$1" \
    "$repo/alz_jax/reference/torch_reference.py" --device="$torch_device" "${torch_model[@]}" \
    --batch="$anchor_batch" --in_chans=3 --dtype=bfloat16 --steps="$steps"
}

# family NAME: `bench step --model=NAME` at the first batch and dtype, then its PyTorch anchor in
# eager mode. torchvision's ResNet-50 has no drop path, so neither has ours here.
family() {
  local drop=0.1
  [ "$1" != resnet50 ] || drop=0.0
  check "step_$1" 240 "$python" -m alz_jax.bench step --config=convnext_t --model="$1" \
    --config.model.drop_path_rate="$drop" --batch="$anchor_batch" --res="$res" --in_chans=3 \
    --dtype="$first_dtype" --steps="$steps"
  if [ -z "${torch_device:-}" ]; then
    record "torch_$1" skipped 0 0 "$torch_python can't import torch and torchvision"
  else
    check "torch_$1" 150 "$torch_python" "$repo/alz_jax/reference/torch_reference.py" \
      --model="$1" --device="$torch_device" --batch="$anchor_batch" --res="$res" --in_chans=3 \
      --drop_path_rate="$drop" --dtype=bfloat16 --steps="$steps"
  fi
}

# In order of what matters most should the budget run out: the set-up, parity, the first step
# and its anchor, then the other batches, the other families, torch.compile, the other dtypes.
check python_env 180 "$python" -c "$env_py" "$wheels"
check devices 90 "$python" -m alz_jax.bench devices
check depthwise 150 "$python" -m alz_jax.bench depthwise "${depthwise_shapes[@]}"
torch_device=$("$torch_python" -c "$torch_device_py" 2> "$out/logs/torch_import.err") || torch_device=""
step "$anchor_batch" "$first_dtype"
anchor eager 120
check augment 60 "$python" -m alz_jax.bench augment --res=224 --seconds="$augment_seconds"
for batch in $batches; do
  [ "$batch" = "$anchor_batch" ] || step "$batch" "$first_dtype"
done
for name in $families; do
  family "$name"
done
anchor compile 240  # torch.compile compiles in its first step
for dtype in $other_dtypes; do
  for batch in $batches; do
    step "$batch" "$dtype"
  done
done

# Derived figures and summary.md; it reads the lines above, so it runs whatever the budget.
budget=$((SECONDS - start + 60))
check summary 60 "$python" -m alz_jax.bench summary --results="$results"
if [ ! -s "$out/summary.md" ]; then
  # No alz_jax here (a Python that can't import it): the checks' table alone, by the stdlib.
  "$python" - "$results" "$out/summary.md" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
rows = [f"| {r['check']} | {r['status']} | {r['seconds']} |" for r in records]
text = ["# GPU check", "", "`bench summary` failed (see logs/summary.err); the checks:", "",
        "| check | status | s |", "| --- | --- | --- |", *rows]
open(sys.argv[2], "w").write("\n".join(text) + "\n")
PY
fi
cat "$out/summary.md"
echo "[gpu_check] $((SECONDS - start)) s; JSON lines: $results" >&2
[ "$failures" = 0 ]
