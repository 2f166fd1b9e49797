"""Optimizer: gradient clipping, AdamW with weight decay off rank-1 parameters, warmup-cosine,
and optional layer-wise learning-rate decay for fine-tuning."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from alz_jax.host.errors import UserError, check_fields


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
    # Parameters that train: 'all', a preset ('head', 'last_stage') or a regex over '/'-joined
    # parameter paths; the rest are frozen and have no optimizer state.
    trainable: str = "all"
    # Frozen layers' BatchNorm in training: 'running' normalises with the running statistics
    # and keeps them (timm's `freeze`, Keras); 'batch' uses batch statistics and updates the
    # running ones (PyTorch's requires_grad=False alone).
    frozen_batchnorm: str = "running"

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
            ("frozen_batchnorm", self.frozen_batchnorm,
             self.frozen_batchnorm in ("running", "batch"), "running|batch"),
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


def layer_decay_scales(params, decay: float, layer_ids: Callable):
    """Learning-rate multiplier per parameter: decay ** (head's index - the layer's index), so
    the head learns at the full rate and each layer closer to the input at `decay` times the
    rate of the one above it (BEiT, ConvNeXt fine-tuning); `layer_ids` is the model family's
    numbering (models/registry.py)."""
    ids, num_layers = layer_ids(params)
    return jax.tree.map(lambda i: float(decay) ** (num_layers - 1 - i), ids)


def scale_by_layer_decay(decay: float, layer_ids: Callable) -> optax.GradientTransformation:
    """Multiplies each parameter's update by its layer-decay scale. Placed after AdamW, it scales
    the whole step (learning rate times Adam direction plus weight decay): a per-layer learning
    rate."""

    def scale(updates, params):
        scales = layer_decay_scales(updates, decay, layer_ids)
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales)

    return optax.stateless(scale)


def path_name(path) -> str:
    """A parameter's '/'-joined path ('stages/3/0/pwconv1/kernel'), what optim.trainable
    matches."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def trainable_mask(params, pattern: str):
    """True for the parameters whose path fully matches `pattern` (a regex)."""
    regex = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(regex.fullmatch(path_name(path))), params
    )


def check_trainable(params, pattern: str, value: str) -> tuple[int, int]:
    """(trainable, total) scalar counts under `pattern`; refuses a pattern that matches no
    parameter, listing some paths."""
    mask = trainable_mask(params, pattern)
    sizes = [(m, int(p.size)) for m, p in zip(jax.tree.leaves(mask), jax.tree.leaves(params),
                                                strict=True)]  # fmt: skip
    trainable = sum(n for m, n in sizes if m)
    if trainable == 0:
        paths = [path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        raise UserError(
            f"config.optim.trainable = {value!r} (regex {pattern!r}) matches no parameter; "
            f"parameter paths look like: {', '.join(paths[:3])} ... {', '.join(paths[-3:])}"
        )
    return trainable, sum(n for _, n in sizes)


def make_optimizer(
    optim: OptimSpec,
    schedule: optax.Schedule,
    layer_ids: Callable | None = None,
    trainable_pattern: str = ".*",
) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW (betas, eps, decoupled weight decay from the config),
    then layer-wise learning-rate decay if `layer_decay` < 1 (layers numbered by the model
    family's `layer_ids`). With a `trainable_pattern` other than '.*', only the parameters whose
    paths match it are updated: the others get zero updates and no optimizer state (optax's
    multi_transform keeps Adam's moments for the trainable ones only), and clipping measures
    the trainable gradients only."""
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
        if layer_ids is None:
            raise ValueError("layer_decay < 1 needs the model family's layer_ids")
        parts.append(scale_by_layer_decay(optim.layer_decay, layer_ids))
    tx = optax.chain(*parts)
    if trainable_pattern == ".*":
        return tx

    def labels(params):
        return jax.tree.map(
            lambda m: "trainable" if m else "frozen", trainable_mask(params, trainable_pattern)
        )

    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
