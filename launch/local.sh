#!/usr/bin/env bash
# Runs alz_jax.main on this host with all its accelerators (one process).
#
#   launch/local.sh CONFIG WORKDIR [--config.a.b=v ...]
#   DRY_RUN=1 launch/local.sh ...   # print the command instead of running it
#
# Paths are taken relative to the directory you call it from; the repository is put on
# PYTHONPATH, so it runs from anywhere.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1
workdir=$2
shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
cmd=("$python" -m alz_jax.main "--config=$config" "--workdir=$workdir" "$@")
if [ -n "${DRY_RUN:-}" ]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${cmd[@]}"
