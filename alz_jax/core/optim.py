"""Optimizer: gradient clipping, AdamW with weight decay off rank-1 parameters, warmup-cosine,
and optional layer-wise learning-rate decay for fine-tuning."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from alz_jax.host.errors import check_fields
from alz_jax.models import convnext


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    """AdamW with warmup-cosine and optional global-norm clipping and layer-wise decay."""

    learning_rate: float = 1e-3  # the peak, reached at the end of the warmup
    end_learning_rate: float = 1e-6
    weight_decay: float = 0.05
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip_norm: float = 0.0  # 0: no clipping
    layer_decay: float = 1.0  # 1.0: off

    def __post_init__(self):
        lr, end = self.learning_rate, self.end_learning_rate
        # `x < math.inf` also refuses NaN (every comparison with NaN is False).
        check_fields("optim", [
            ("learning_rate", lr, 0 < lr < math.inf, "> 0 and finite"),
            ("end_learning_rate", end, 0 <= end <= lr,
             "in [0, learning_rate]: the cosine decays from the peak down to it"),
            ("weight_decay", self.weight_decay, 0 <= self.weight_decay < math.inf,
             ">= 0 and finite"),
            ("b1", self.b1, 0 <= self.b1 < 1, "in [0, 1)"),
            ("b2", self.b2, 0 <= self.b2 < 1, "in [0, 1)"),
            ("eps", self.eps, 0 < self.eps < math.inf, "> 0 and finite"),
            ("grad_clip_norm", self.grad_clip_norm, 0 <= self.grad_clip_norm < math.inf,
             ">= 0 and finite (0: off)"),
            ("layer_decay", self.layer_decay, 0.0 < self.layer_decay <= 1.0,
             "in (0, 1] (1.0: off)"),
        ])  # fmt: skip


def learning_rate_schedule(optim: OptimSpec, total_steps: int, warmup_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then per-step cosine decay to end_learning_rate."""
    warmup_steps = min(warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.learning_rate,
        warmup_steps=warmup_steps,
        # optax counts decay_steps from step 0, warmup included; it must exceed the warmup.
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=optim.end_learning_rate,
    )


def weight_decay_mask(params):
    """True for weights that decay: kernels (rank > 1); not biases, norm params or layer scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def layer_decay_scales(params, decay: float, layer_ids=convnext.layer_ids):
    """Learning-rate multiplier per parameter: decay ** (head's index - the layer's index), so
    the head learns at the full rate and each layer closer to the input at `decay` times the
    rate of the one above it (BEiT, ConvNeXt fine-tuning)."""
    ids, num_layers = layer_ids(params)
    return jax.tree.map(lambda i: float(decay) ** (num_layers - 1 - i), ids)


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
    """Multiplies each parameter's update by its layer-decay scale. Placed after AdamW, it scales
    the whole step (learning rate times Adam direction plus weight decay): a per-layer learning
    rate."""

    def scale(updates, params):
        scales = layer_decay_scales(updates, decay)
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales)

    return optax.stateless(scale)


def make_optimizer(optim: OptimSpec, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW (betas, eps, decoupled weight decay from the config),
    then layer-wise learning-rate decay if `layer_decay` < 1."""
    parts = []
    if optim.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=weight_decay_mask,
        )
    )
    if optim.layer_decay != 1.0:
        parts.append(scale_by_layer_decay(optim.layer_decay))
    return optax.chain(*parts)
