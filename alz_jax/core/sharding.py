"""The device mesh and the shardings of parameters (replicated) and batches (split on `data`)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D ('data',) mesh over all devices of all processes.

    Auto axes: XLA propagates the shardings, and the step may constrain intermediate ones
    (microbatches) with `with_sharding_constraint`.
    """
    # Ordered by process, so process p's devices hold rows [p*b, (p+1)*b) of a global batch,
    # the slice its input pipeline loads (jax.make_mesh may reorder TPU devices by topology).
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    # AxisType names the default explicitly; an older JAX without it has only auto axes.
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is None:
        return Mesh(np.array(devices), ("data",))
    return Mesh(np.array(devices), ("data",), axis_types=(axis_type.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of arrays copied on every device (parameters, optimizer state, scalars)."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of arrays split along their leading (batch) axis over `data`."""
    return NamedSharding(mesh, P("data"))
