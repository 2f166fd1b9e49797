"""Weight averages kept beside the parameters: EMA (every step) and SWA (a running mean).

EMA follows timm's ModelEmaV3: ema = d * ema + (1 - d) * w after every optimizer step, with the
optional warmup d_t = 1 - (1 + t / gamma)^(-power) clipped to [min_decay, decay] (t counts the
updates after the first; the first update copies). SWA follows torch's AveragedModel: from
`swa_start` on, every `every` steps, avg += (w - avg) / (n + 1), the first update copying.

Either average may be stored in bfloat16 at 2 bytes per parameter. A plain round-to-nearest
bfloat16 EMA at decay 0.9999 stops moving (an increment of 1e-4 of the difference is far below
bfloat16's 2^-8 relative spacing), so the update is computed in float32 and stochastically
rounded: the float32 bits below bfloat16's mantissa are compared with fresh random bits, so the
stored value is unbiased (its expectation is the float32 result).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from alz_jax.host.errors import UserError, check_fields

DTYPES = ("float32", "bfloat16")
_EMA_STREAM, _SWA_STREAM = 0x656D61, 0x737761


@dataclasses.dataclass(frozen=True)
class AveragingSpec:
    """EMA and SWA settings resolved for a run of `total_steps` (steps, not fractions)."""

    ema: bool = False
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    ema_warmup_gamma: float = 1.0
    ema_warmup_power: float = 2 / 3
    ema_min_decay: float = 0.0
    ema_dtype: str = "float32"
    swa: bool = False
    swa_start_step: int = 0  # first optimizer step (1-based count) whose weights enter SWA
    swa_every_steps: int = 1
    swa_dtype: str = "float32"

    def __post_init__(self):
        # specs.averaging_spec checks the config's fields; these hold for any spec built
        # directly (tests, tools), named by the config fields they come from.
        dtypes = "|".join(DTYPES)
        check_fields("ema", [
            ("decay", self.ema_decay, 0.0 <= self.ema_decay < 1.0, "in [0, 1)"),
            ("min_decay", self.ema_min_decay, 0.0 <= self.ema_min_decay <= self.ema_decay,
             "in [0, ema.decay]"),
            ("warmup_gamma", self.ema_warmup_gamma, 0 < self.ema_warmup_gamma < math.inf,
             "> 0 and finite"),
            ("warmup_power", self.ema_warmup_power, 0 < self.ema_warmup_power < math.inf,
             "> 0 and finite"),
            ("dtype", self.ema_dtype, self.ema_dtype in DTYPES, dtypes),
        ])  # fmt: skip
        check_fields("swa", [
            ("start_step", self.swa_start_step, self.swa_start_step >= 0, ">= 0"),
            ("every_steps", self.swa_every_steps, self.swa_every_steps >= 1, ">= 1"),
            ("dtype", self.swa_dtype, self.swa_dtype in DTYPES, dtypes),
        ])  # fmt: skip


NO_AVERAGES = AveragingSpec()


def ema_decay(spec: AveragingSpec, count: jax.Array) -> jax.Array:
    """The decay of the `count`-th EMA update (1-based): 0 for the first (a copy), then the
    configured decay, or the warmup decay clipped to [min_decay, decay]."""
    t = jnp.asarray(count, jnp.float32) - 1.0
    if spec.ema_warmup:
        warm = 1.0 - (1.0 + t / spec.ema_warmup_gamma) ** (-spec.ema_warmup_power)
        decay = jnp.clip(warm, spec.ema_min_decay, spec.ema_decay)
    else:
        decay = jnp.asarray(spec.ema_decay, jnp.float32)
    return jnp.where(t <= 0, 0.0, decay)


def stochastic_round(key: jax.Array, x: jax.Array, dtype) -> jax.Array:
    """Rounds float32 `x` to `dtype` (bfloat16: unbiased stochastic rounding; float32: as is)."""
    if jnp.dtype(dtype) == jnp.float32:
        return x.astype(jnp.float32)
    if jnp.dtype(dtype) != jnp.bfloat16:
        raise ValueError(f"stochastic rounding to {dtype} is not supported")
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    # Adding uniform noise below the kept mantissa then truncating rounds the magnitude up with
    # probability equal to the dropped fraction (float32 is sign-magnitude, so this is symmetric).
    noise = jax.random.bits(key, x.shape, jnp.uint32) & jnp.uint32(0xFFFF)
    rounded = (bits + noise) & jnp.uint32(0xFFFF0000)
    finite = jnp.isfinite(x)
    out = jax.lax.bitcast_convert_type(rounded, jnp.float32)
    return jnp.where(finite, out, x).astype(jnp.bfloat16)


def _rounded_tree(key: jax.Array, tree, dtype):
    leaves, treedef = jax.tree.flatten(tree)
    keys = [jax.random.fold_in(key, i) for i in range(len(leaves))]
    return jax.tree.unflatten(
        treedef, [stochastic_round(k, x, dtype) for k, x in zip(keys, leaves, strict=True)]
    )


def init_state(spec: AveragingSpec, params) -> dict:
    """The averages' part of the train state: copies of the parameters in their storage dtype
    (EMA), zeros (SWA, with its update count)."""
    out = {}
    if spec.ema:
        out["ema"] = jax.tree.map(lambda p: p.astype(spec.ema_dtype), params)
    if spec.swa:
        out["swa"] = jax.tree.map(lambda p: jnp.zeros(p.shape, spec.swa_dtype), params)
        out["swa_count"] = jnp.zeros((), jnp.int32)
    return out


def update(spec: AveragingSpec, averages: dict, params, step: jax.Array, key: jax.Array) -> dict:
    """The averages after optimizer step `step` (1-based count of updates) produced `params`."""
    out = dict(averages)
    if spec.ema:
        decay = ema_decay(spec, step)
        blended = jax.tree.map(
            lambda e, p: decay * e.astype(jnp.float32) + (1.0 - decay) * p.astype(jnp.float32),
            averages["ema"],
            params,
        )
        out["ema"] = _rounded_tree(jax.random.fold_in(key, _EMA_STREAM), blended, spec.ema_dtype)
    if spec.swa:
        count = averages["swa_count"]
        due = (step >= spec.swa_start_step) & (
            (step - spec.swa_start_step) % spec.swa_every_steps == 0
        )

        def add(swa):
            weight = 1.0 / (count.astype(jnp.float32) + 1.0)  # first update (count 0) copies
            mean = jax.tree.map(
                lambda a, p: (
                    a.astype(jnp.float32) + (p.astype(jnp.float32) - a.astype(jnp.float32)) * weight
                ),
                swa,
                params,
            )
            return _rounded_tree(jax.random.fold_in(key, _SWA_STREAM), mean, spec.swa_dtype)

        out["swa"] = jax.lax.cond(due, add, lambda swa: swa, averages["swa"])
        out["swa_count"] = count + due.astype(jnp.int32)
    return out


def swa_exists_after(spec: AveragingSpec, step: int) -> bool:
    """Whether the SWA average holds at least one update after `step` optimizer steps."""
    return spec.swa and step >= spec.swa_start_step


def available(spec: AveragingSpec, step: int) -> tuple[str, ...]:
    """The weights that exist after `step` optimizer steps: raw, then ema and swa if any."""
    names = ["raw"]
    if spec.ema:
        names.append("ema")
    if swa_exists_after(spec, step):
        names.append("swa")
    return tuple(names)


def check_weights_name(name: str, spec: AveragingSpec) -> None:
    """A clear error for weights a run doesn't have."""
    if name not in ("raw", "ema", "swa"):
        raise UserError(f"--weights={name!r}: expected raw, ema or swa.")
    if name != "raw" and not getattr(spec, name):
        raise UserError(f"This run keeps no {name.upper()} weights (config.{name}.enabled).")
