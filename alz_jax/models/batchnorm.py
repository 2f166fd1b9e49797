"""BatchNorm for the families that use it (ResNet, EfficientNet), with PyTorch's semantics and
statistics that are the whole global batch's under data parallelism.

The module normalises NHWC activations over (N, H, W) in float32 whatever the compute dtype.
In evaluation (the default) it uses its running statistics; `Model.train_apply` switches it to
training mode, where it normalises with the batch's mean and biased variance and records in its
`BatchStat` variables what it observed: the batch mean and the *unbiased* variance, the two
quantities PyTorch folds into its running statistics. The running update itself,
running += momentum * (observed - running), is applied by the caller over the whole tree
(`update_running`), so one formula serves training (momentum 0.1, PyTorch's default) and the
cumulative average of SWA's statistics pass (momentum 1 / (k + 1) for the k-th batch, as
`torch.optim.swa_utils.update_bn`).

Under `jit` the batch axis of a batch-sharded array is the global batch, so its mean is the
global mean (XLA adds the all-reduce). Under `shard_map` each device sees its shard; with
`axis_name` set the per-device moments are averaged over that mesh axis (equal shards), giving
the same global statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

DEFAULT_MOMENTUM = 0.1  # PyTorch's: running = 0.9 running + 0.1 observed


class BatchNorm(nnx.Module):
    """Per-channel BatchNorm over NHWC (scale, bias; running mean and var), eps as PyTorch's."""

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-5,
        scale_init: float = 1.0,
        dtype: str = "float32",
        param_dtype: str = "float32",
        rngs: nnx.Rngs | None = None,
    ):
        del rngs  # deterministic initialisation; the argument keeps nnx's constructor shape
        self.scale = nnx.Param(jnp.full((num_features,), scale_init, param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.epsilon = epsilon
        self.compute_dtype = dtype
        self.training = False
        self.axis_name: str | None = None

    def _batch_moments(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(mean, biased variance, element count per channel) over the global batch."""
        axes = tuple(range(x.ndim - 1))
        count = jnp.asarray(x.size // x.shape[-1], jnp.float32)
        mean = jnp.mean(x, axis=axes)
        if self.axis_name is not None:
            mean = jax.lax.pmean(mean, self.axis_name)
            count = jax.lax.psum(count, self.axis_name)
        # Two passes (the variance around the global mean): E[x^2] - E[x]^2 loses digits.
        var = jnp.mean(jnp.square(x - mean), axis=axes)
        if self.axis_name is not None:
            var = jax.lax.pmean(var, self.axis_name)
        return mean, var, count

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        if self.training:
            mean, var, count = self._batch_moments(x32)
            self.mean.value = mean
            self.var.value = var * count / jnp.maximum(count - 1.0, 1.0)
        else:
            mean, var = self.mean.value, self.var.value
        inv = jax.lax.rsqrt(var + self.epsilon) * self.scale.value.astype(jnp.float32)
        y = (x32 - mean) * inv + self.bias.value.astype(jnp.float32)
        return y.astype(self.compute_dtype)


def named_batch_norms(module: nnx.Module) -> list[tuple[str, BatchNorm]]:
    """Every BatchNorm inside `module` with its '/'-joined path ('layer1/0/bn1'), in graph
    order; its parameters' paths are that path and '/scale', '/bias'."""
    return [("/".join(str(p) for p in path), m) for path, m in nnx.iter_modules(module)
            if isinstance(m, BatchNorm)]  # fmt: skip


def set_training(
    module: nnx.Module, training: bool, axis_name: str | None = None, frozen: tuple[str, ...] = ()
) -> None:
    """Switches every BatchNorm of `module` to batch statistics (training) or running ones, and
    names the mesh axis to average batch moments over (under shard_map; None under jit). The
    norms named in `frozen` stay on their running statistics, which they then leave as they
    are (a frozen layer's, as timm's `freeze` and Keras treat it)."""
    for path, norm in named_batch_norms(module):
        norm.training = training and path not in frozen
        norm.axis_name = axis_name


def update_running(running, observed, momentum):
    """running + momentum * (observed - running), leaf by leaf, in float32 (`momentum` may be a
    traced scalar: 1 / (k + 1) makes the k-th update a cumulative average)."""
    return jax.tree.map(
        lambda r, o: r + jnp.asarray(momentum, jnp.float32) * (o - r), running, observed
    )


def observed(
    module: nnx.Module,
    images: jax.Array,
    axis_name: str | None = None,
    frozen: tuple[str, ...] = (),
    **kwargs,
):
    """(logits, observed statistics) of one training-mode forward pass of `module` over
    `images`: the batch mean and unbiased variance each BatchNorm saw, as a pure dict (a
    `frozen` norm's: its running statistics, so a running update leaves them exactly). The
    module is left in evaluation mode with its BatchStats holding those observations."""
    set_training(module, True, axis_name, frozen)
    try:
        logits = module(images, **kwargs)
    finally:
        set_training(module, False)
    return logits, nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))


def cumulative_statistics(module: nnx.Module, batches) -> dict:
    """The running statistics of `torch.optim.swa_utils.update_bn` (momentum None): the mean,
    over `batches`, of each BatchNorm's batch mean and unbiased variance in training mode (each
    layer seeing the previous layers normalised by their batch statistics). Eager reference
    form; the training loop runs the same arithmetic jitted (steps.make_statistics_pass)."""
    running = None
    for k, images in enumerate(batches):
        _, seen = observed(module, images)
        running = seen if running is None else update_running(running, seen, 1.0 / (k + 1))
    if running is None:
        raise ValueError("the statistics pass needs at least one batch")
    return running
