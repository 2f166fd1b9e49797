#!/usr/bin/env bash
# Cloud TPU VM pod slice: the same command on every worker, over `gcloud ... ssh --worker=all`.
#
#   TPU_NAME=my-v5p-32 ZONE=us-east5-a launch/tpu_vm.sh setup
#   TPU_NAME=my-v5p-32 ZONE=us-east5-a launch/tpu_vm.sh run CONFIG WORKDIR [--config.key=value ...]
#   DRY_RUN=1 TPU_NAME=... ZONE=... launch/tpu_vm.sh run ...   # print the gcloud commands
#
# setup: copies this repository to ~/alz_jax on every worker and installs it with TPU JAX.
# run:   starts training on every worker at once. JAX detects the pod slice (coordinator,
#        process IDs, local chips) by itself; WORKDIR and data.data_dir must be storage every
#        worker sees: gs:// paths (docs/training.md, "Shared storage") or a mounted file system.
# Optional: PROJECT (gcloud --project), REMOTE_DIR (default alz_jax, under the worker's home),
#           JAX_VERSION (default: the version pinned in requirements.txt).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 setup | run CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME to the name of the TPU VM}"
: "${ZONE:?set ZONE to the zone of the TPU VM}"
action=$1
shift
repo=$(cd "$(dirname "$0")/.." && pwd)
remote_dir=${REMOTE_DIR:-alz_jax}
jax_version=${JAX_VERSION:-$(sed -n 's/^jax==//p' "$repo/requirements.txt")}
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
if [ -n "${PROJECT:-}" ]; then
  where+=(--project="$PROJECT")
fi

# Each argument is quoted for the remote shell, so values with spaces or ; stay one argument.
remote() {
  local quoted
  quoted=$(printf '%q ' "$@")
  if [ -n "${DRY_RUN:-}" ]; then
    echo "# on every worker of $TPU_NAME: $quoted"
  fi
  run_local "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$quoted"
}

run_local() {
  if [ -n "${DRY_RUN:-}" ]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

case "$action" in
  setup)
    archive=$(mktemp --suffix=.tar.gz)
    run_local git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
    run_local "${gcloud_tpu[@]}" scp "$archive" "$TPU_NAME:alz_jax.tar.gz" "${where[@]}" --worker=all
    # shellcheck disable=SC2016  # expanded by the remote shell, from its own arguments
    remote bash -c 'mkdir -p "$1" && tar -xzf ~/alz_jax.tar.gz -C "$1" && cd "$1" &&
      python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt &&
      .venv/bin/pip install -q "jax[tpu]==$2"' setup "$remote_dir" "$jax_version"
    rm -f "$archive"
    ;;
  run)
    if [ $# -lt 2 ]; then
      echo "usage: $0 run CONFIG WORKDIR [--config.key=value ...]" >&2
      exit 2
    fi
    config=$1
    workdir=$2
    shift 2
    # shellcheck disable=SC2016  # expanded by the remote shell, from its own arguments
    remote bash -c 'cd "$1" && shift && exec .venv/bin/python "$@"' run "$remote_dir" \
      -m alz_jax.main "--config=$config" "--workdir=$workdir" "$@"
    ;;
  *)
    echo "unknown action $action: expected setup or run" >&2
    exit 2
    ;;
esac
