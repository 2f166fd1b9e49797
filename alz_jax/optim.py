"""Optimizer: gradient clipping, AdamW with weight decay off rank-1 parameters, warmup-cosine."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(
    optim_config: ml_collections.ConfigDict, total_steps: int, warmup_steps: int
) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then per-step cosine decay to end_learning_rate."""
    warmup_steps = min(warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim_config.learning_rate,
        warmup_steps=warmup_steps,
        # optax counts decay_steps from step 0, warmup included; it must exceed the warmup.
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=optim_config.end_learning_rate,
    )


def weight_decay_mask(params):
    """True for weights that decay: kernels (rank > 1); not biases, norm params or layer scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    optim_config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW (betas, eps, decoupled weight decay from the config)."""
    parts = []
    if optim_config.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(optim_config.grad_clip_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=optim_config.b1,
            b2=optim_config.b2,
            eps=optim_config.eps,
            weight_decay=optim_config.weight_decay,
            mask=weight_decay_mask,
        )
    )
    return optax.chain(*parts)
