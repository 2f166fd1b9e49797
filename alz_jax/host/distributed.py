"""JAX's multi-controller runtime, initialised the same way for one process or many.

Multi-process data parallelism runs on `jax.distributed`: every process runs the same command,
sees all devices of all processes in one mesh, and reads its own share of each batch. The
runtime is initialised for a single process too, because Orbax's preemption check
(`CheckpointManager.reached_preemption`) only fires through JAX's preemption sync manager, which
catches SIGTERM once the runtime is up: one code path for 1 and N processes.

Where the processes come from:
- explicit `coordinator_address`, `num_processes`, `process_id` (flags of `main`, or the
  JAX_COORDINATOR_ADDRESS environment variable);
- else JAX's auto-detection: SLURM, Cloud TPU VMs, Kubernetes (needs the `kubernetes` package
  and permission to read pods), Open MPI;
- else one process, with a coordinator on a free localhost port.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

import jax
from absl import flags

from alz_jax.host.errors import UserError


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """Starts JAX's distributed runtime; must run before any JAX computation."""
    if jax.distributed.is_initialized():
        return
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit) and None in explicit:
        raise UserError(
            "Give all of --coordinator_address, --num_processes and --process_id, or none of "
            f"them (got {coordinator_address!r}, {num_processes!r}, {process_id!r})."
        )
    ids = list(local_device_ids) if local_device_ids else None
    try:
        jax.distributed.initialize(
            coordinator_address, num_processes, process_id, local_device_ids=ids
        )
    except ValueError as e:
        if "coordinator_address should be defined" not in str(e):
            raise UserError(f"Could not start JAX's distributed runtime: {e}") from e
        # No cluster detected and nothing given: a single process on this host.
        jax.distributed.initialize(
            f"localhost:{_free_port()}", num_processes=1, process_id=0, local_device_ids=ids
        )
    logging.info(
        "JAX distributed runtime: process %d of %d, %d local of %d devices (%s)",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
        jax.default_backend(),
    )  # fmt: skip


def define_flags() -> None:
    """--coordinator_address, --num_processes, --process_id, --local_device_ids for a command
    (idempotent)."""
    if "coordinator_address" in flags.FLAGS:
        return
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0's coordinator (multi-process runs)."
    )
    flags.DEFINE_integer("num_processes", None, "Number of processes in the run.")
    flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
    flags.DEFINE_list(
        "local_device_ids", None, "Accelerators this process drives, e.g. 0,1,2,3 (default: all)."
    )


def initialize_from_flags() -> None:
    """`initialize` with the values of the flags from `define_flags`."""
    f = flags.FLAGS
    ids = [int(i) for i in f.local_device_ids] if f.local_device_ids else None
    initialize(f.coordinator_address, f.num_processes, f.process_id, ids)
