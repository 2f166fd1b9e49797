"""Scan models: any registered family's model encodes each slice of a bag (a scan's K slices)
with shared weights, an aggregator pools the slice embeddings, and the encoder's own
classifier reads the pooled embedding.

The encoder is used through the split every family's model has: `embed(x, sample_keys=...)`
(B, D) float32, everything before the final linear layer, and `classify(e)`, that layer. An
aggregator is one registration (`register_aggregator`): `mean` (mean-pooling MIL), `attention`
(Ilse et al. 2018, gated attention) and `transformer` (a small pre-norm transformer over the
slice embeddings with a learned slice-position embedding, read out by gated attention). Every
aggregator gives each slice a weight (0 on masked slices, summing to 1 over the valid ones)
and pools z = sum_k w_k h_k, so a bag of one slice under `mean` or `attention` is the slice
model itself, and under `mean` the bag's logits are the mean of its slices' logits.

Parameter paths: the encoder's under 'encoder/' (its family's own paths), the aggregator's
under 'aggregator/'. This module does not know the registry (which registers the scan family
from `family_record`): the registry hands it its lookup of a spec's family.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alz_jax.host.errors import UserError, check_fields
from alz_jax.models.family import Family, ModelSpec
from alz_jax.models.import_helpers import ConversionError

# The common fields a scan model shares with its encoder (ModelSpec's).
MIRRORED = ("in_chans", "num_classes", "drop_path_rate", "head_dropout", "dtype", "param_dtype",
            "spatial_attention", "head")  # fmt: skip

# name -> the aggregator class: cls(width D, ScanSpec, rngs); its __call__(h (B, K, D),
# mask (B, K) bool, positions (B, K) int32) -> (pooled (B, D), weights (B, K)), both float32.
AGGREGATORS: dict[str, type[nnx.Module]] = {}

FamilyOf = Callable[[ModelSpec], Family]


def register_aggregator(name: str, cls: type[nnx.Module]) -> type[nnx.Module]:
    """Makes an aggregator known to `ScanSpec.aggregator` (a name taken is an error)."""
    if name in AGGREGATORS:
        raise ValueError(f"aggregator {name!r}: already registered")
    AGGREGATORS[name] = cls
    return cls


@dataclasses.dataclass(frozen=True)
class ScanSpec(ModelSpec):
    """A scan (bag-of-slices) model: `encoder` is any registered family's spec; the common
    fields mirror the encoder's (`scan_spec` fills them). `attention_dim` is the width of the
    gated attention's hidden layer (and of the transformer's attention and, x4, its MLP)."""

    encoder: ModelSpec
    aggregator: str
    attention_dim: int = 128
    transformer_depth: int = 1
    transformer_heads: int = 4
    max_positions: int = 512  # rows of the transformer's slice-position embedding
    remat: bool = False  # gradient checkpointing of the encoder (nnx.remat)

    def __post_init__(self):
        if not isinstance(self.encoder, ModelSpec) or isinstance(self.encoder, ScanSpec):
            raise UserError(
                f"A scan model's encoder must be a slice model's spec (a registered family's); "
                f"got {type(self.encoder).__name__}."
            )
        mirror = [(f, getattr(self, f), getattr(self, f) == getattr(self.encoder, f),
                   f"the encoder's {f} ({getattr(self.encoder, f)!r}): a scan model's common "
                   "fields are its encoder's") for f in MIRRORED]  # fmt: skip
        heads, dim = self.transformer_heads, self.attention_dim
        check_fields("model", [
            ("aggregator", self.aggregator, self.aggregator in AGGREGATORS,
             "|".join(sorted(AGGREGATORS))),
            ("attention_dim", dim, dim >= 1, ">= 1"),
            ("transformer_depth", self.transformer_depth, self.transformer_depth >= 1, ">= 1"),
            ("transformer_heads", heads, heads >= 1 and dim % heads == 0,
             f">= 1 and dividing attention_dim ({dim})"),
            ("max_positions", self.max_positions, self.max_positions >= 1, ">= 1"),
            *mirror,
            *self.common_checks(),
        ])  # fmt: skip


def scan_spec(encoder: ModelSpec, aggregator: str, **fields) -> ScanSpec:
    """The scan model of `encoder` pooled by `aggregator`; `fields` are ScanSpec's own
    (attention_dim, ..., remat) and common ones (dtype, ...), which apply to the encoder too."""
    common = {k: fields.pop(k) for k in MIRRORED if k in fields}
    if common:
        encoder = dataclasses.replace(encoder, **common)
    mirrored = {k: getattr(encoder, k) for k in MIRRORED}
    return ScanSpec(encoder=encoder, aggregator=aggregator, **mirrored, **fields)


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis among the entries where `mask` is True: masked entries get
    exactly 0 (an all-masked row all 0), without NaN in values or gradients."""
    scores = jnp.where(mask, scores.astype(jnp.float32), -jnp.inf)
    top = jnp.max(scores, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # an all-masked row
    e = jnp.where(mask, jnp.exp(scores - jax.lax.stop_gradient(top)), 0.0)
    return e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)


def weighted_sum(h: jax.Array, weights: jax.Array, mask: jax.Array) -> jax.Array:
    """sum_k weights_k h_k (B, D); masked slices' embeddings are zeroed first, so even a
    non-finite one (an empty padding slice) cannot reach the result."""
    h = jnp.where(mask[..., None], h, 0.0)
    return jnp.einsum("bk,bkd->bd", weights, h)


def _linear(d_in: int, d_out: int, spec: ScanSpec, rngs: nnx.Rngs, **init) -> nnx.Linear:
    # The aggregator computes in float32: it sees K vectors per bag, a negligible cost.
    return nnx.Linear(d_in, d_out, dtype=jnp.float32, param_dtype=spec.param_dtype, rngs=rngs,
                      **init)  # fmt: skip


class MeanPooling(nnx.Module):
    """Mean-pooling MIL: the masked mean of the slice embeddings (weights 1/n on the n valid
    slices). The classifier is linear, so the bag's logits are the mean of its slices'."""

    title = "mean pooling"

    def __init__(self, width: int, spec: ScanSpec, rngs: nnx.Rngs):
        del width, spec, rngs  # no parameters

    def __call__(self, h: jax.Array, mask: jax.Array, positions: jax.Array):
        del positions
        valid = mask.astype(jnp.float32)
        weights = valid / jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1.0)
        return weighted_sum(h, weights, mask), weights


class GatedAttention(nnx.Module):
    """Ilse et al. 2018's gated attention: a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))
    over the valid slices, z = sum_k a_k h_k (parameters 'v', 'u', 'w')."""

    title = "attention pooling"

    def __init__(self, width: int, spec: ScanSpec, rngs: nnx.Rngs):
        self.v = _linear(width, spec.attention_dim, spec, rngs)
        self.u = _linear(width, spec.attention_dim, spec, rngs)
        self.w = _linear(spec.attention_dim, 1, spec, rngs)

    def __call__(self, h: jax.Array, mask: jax.Array, positions: jax.Array):
        del positions
        scores = self.w(jnp.tanh(self.v(h)) * jax.nn.sigmoid(self.u(h)))[..., 0]
        weights = masked_softmax(scores, mask)
        return weighted_sum(h, weights, mask), weights


class TransformerBlock(nnx.Module):
    """Pre-norm block on the slice tokens (B, K, D): x + attn(LN(x)) with the masked slices
    left out as keys, then x + MLP(LN(x)); attention width attention_dim, MLP 4x that. The
    output projections start at zero, so a fresh block passes its input through."""

    def __init__(self, width: int, spec: ScanSpec, rngs: nnx.Rngs):
        dim, zeros = spec.attention_dim, nnx.initializers.zeros_init()
        self.norm1 = nnx.LayerNorm(width, epsilon=1e-6, param_dtype=spec.param_dtype, rngs=rngs)
        self.qkv = _linear(width, 3 * dim, spec, rngs)
        self.proj = _linear(dim, width, spec, rngs, kernel_init=zeros)
        self.norm2 = nnx.LayerNorm(width, epsilon=1e-6, param_dtype=spec.param_dtype, rngs=rngs)
        self.fc1 = _linear(width, 4 * dim, spec, rngs)
        self.fc2 = _linear(4 * dim, width, spec, rngs, kernel_init=zeros)
        self.heads = spec.transformer_heads

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        batch, slices, _ = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, slices, 3, self.heads, -1)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
        probs = masked_softmax(logits, mask[:, None, None, :])
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, slices, -1)
        x = x + self.proj(out)
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))


class SliceTransformer(nnx.Module):
    """A small transformer over the slice embeddings: a learned slice-position embedding
    ('positions', row = the slice's position index) added to each, `transformer_depth` blocks,
    then gated attention ('readout') pooling the tokens, which stay in the encoder's embedding
    space (no final norm) for the encoder's classifier to read."""

    title = "transformer pooling"

    def __init__(self, width: int, spec: ScanSpec, rngs: nnx.Rngs):
        init = nnx.initializers.normal(stddev=0.02)
        self.positions = nnx.Param(
            init(rngs.params(), (spec.max_positions, width), spec.param_dtype)
        )
        self.blocks = nnx.List(
            [TransformerBlock(width, spec, rngs) for _ in range(spec.transformer_depth)]
        )
        self.readout = GatedAttention(width, spec, rngs)

    def __call__(self, h: jax.Array, mask: jax.Array, positions: jax.Array):
        # Positions past the table clip to its last row; the data side checks them first.
        x = h + jnp.take(self.positions.value, positions, axis=0, mode="clip")
        for block in self.blocks:
            x = block(x, mask)
        return self.readout(x, mask, positions)


register_aggregator("mean", MeanPooling)
register_aggregator("attention", GatedAttention)
register_aggregator("transformer", SliceTransformer)


def embedding_width(encoder: nnx.Module, spec: ModelSpec) -> int:
    """D, the width of `encoder.embed`'s output, from its shapes alone (no computation); the
    probe image is spec.image_size pixels square where the spec has one (ViT), else 64."""
    side = getattr(spec, "image_size", 64)
    image = jax.ShapeDtypeStruct((1, side, side, spec.in_chans), jnp.float32)
    return int(jax.eval_shape(encoder.embed, image).shape[-1])


def _embed(encoder: nnx.Module, images: jax.Array, keys: jax.Array | None) -> jax.Array:
    return encoder.embed(images, sample_keys=keys)


def slice_keys(sample_keys: jax.Array, slices: int) -> jax.Array:
    """(B * K,) keys of the slices of B bags from their (B,) keys: slice k's is
    fold_in(bag key, k), so each slice draws its own stochastic depth and head dropout."""
    per_bag = jax.vmap(lambda key: jax.vmap(lambda k: jax.random.fold_in(key, k))(
        jnp.arange(slices)))(sample_keys)  # fmt: skip
    return per_bag.reshape((-1, *per_bag.shape[2:]))


class ScanModel(nnx.Module):
    """A bag-of-slices classifier: images (B, K, H, W, in_chans) -> float32 logits (B, C)."""

    def __init__(self, spec: ScanSpec, *, rngs: nnx.Rngs, family_of: FamilyOf):
        self.spec = spec
        self.encoder = family_of(spec.encoder).module(spec.encoder, rngs=rngs)
        width = embedding_width(self.encoder, spec.encoder)
        self.aggregator = AGGREGATORS[spec.aggregator](width, spec, rngs)

    def slice_embeddings(self, x: jax.Array, sample_keys: jax.Array | None = None) -> jax.Array:
        """Every slice's embedding (B, K, D) float32, the encoder running once over the B * K
        slices (under nnx.remat with spec.remat: recomputed in the backward pass)."""
        bags, slices = x.shape[:2]
        flat = x.reshape((bags * slices, *x.shape[2:]))
        keys = None if sample_keys is None else slice_keys(sample_keys, slices)
        embed = nnx.remat(_embed) if self.spec.remat else _embed
        return embed(self.encoder, flat, keys).reshape(bags, slices, -1)

    def pooled(self, h: jax.Array, slice_mask: jax.Array | None = None,
               positions: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:  # fmt: skip
        """(the bag embedding (B, D), the slices' weights (B, K)) of slice embeddings (B, K, D);
        `slice_mask` (B, K) (None: all valid), `positions` (B, K) (None: 0..K-1)."""
        bags, slices = h.shape[:2]
        if slice_mask is None:
            slice_mask = jnp.ones((bags, slices), bool)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(slices, dtype=jnp.int32), (bags, slices))
        return self.aggregator(h, slice_mask.astype(bool), positions)

    def __call__(
        self, x: jax.Array, *, sample_keys: jax.Array | None = None,
        slice_mask: jax.Array | None = None, positions: jax.Array | None = None,
    ) -> jax.Array:  # fmt: skip
        """The bags' logits (B, num_classes); `sample_keys` (B,), one per bag, turn on
        stochastic depth and head dropout (training). Single slices (B, H, W, C) are bags of
        one (what SWA's BatchNorm statistics pass feeds the encoder)."""
        if x.ndim == 4:
            x = x[:, None]
        z, _ = self.pooled(self.slice_embeddings(x, sample_keys), slice_mask, positions)
        return self.encoder.classify(z)

    def outputs(
        self, x: jax.Array, *, sample_keys: jax.Array | None = None,
        slice_mask: jax.Array | None = None, positions: jax.Array | None = None,
    ) -> dict[str, jax.Array]:  # fmt: skip
        """{'logits' (B, C), 'weights' (B, K): each slice's weight in the pooling (0 where
        masked, summing to 1 over the valid slices; `mean`: 1/n, so weight x slice logits is a
        slice's contribution), 'slice_logits' (B, K, C): the encoder's classifier on each
        slice's embedding (for `mean` and `attention` the slice alone as a bag of one; for
        `transformer` the embedding before its blocks)}, from one encoder pass."""
        h = self.slice_embeddings(x, sample_keys)
        z, weights = self.pooled(h, slice_mask, positions)
        return {"logits": self.encoder.classify(z), "weights": weights,
                "slice_logits": self.encoder.classify(h)}  # fmt: skip


def check_positions(spec, longest_scan: int) -> None:
    """A transformer over slices places each slice by its position in its scan: refuses scans
    longer than its position embedding (model.max_positions), which the device would clip. Any
    other model takes scans of any length."""
    transformer = isinstance(spec, ScanSpec) and spec.aggregator == "transformer"
    if transformer and longest_scan > spec.max_positions:
        raise UserError(
            f"A scan of {longest_scan} slices is longer than config.model.max_positions = "
            f"{spec.max_positions}: set it to at least {longest_scan}, or cut fewer slices "
            "per scan."
        )


def load_slice_weights(scan_params: dict, slice_params: dict) -> dict:
    """`scan_params` with its encoder's tree replaced by a trained slice model's (same encoder
    spec): how a scan run starts from a slice run. Works as well for BatchNorm statistics
    trees. A different tree or shape is refused, naming the first differing path."""
    encoder = scan_params["encoder"]
    mine = {jax.tree_util.keystr(p): np.shape(v)
            for p, v in jax.tree_util.tree_leaves_with_path(encoder)}  # fmt: skip
    theirs = {jax.tree_util.keystr(p): np.shape(v)
              for p, v in jax.tree_util.tree_leaves_with_path(slice_params)}  # fmt: skip
    for path in sorted(set(mine) | set(theirs)):
        if mine.get(path) != theirs.get(path):
            found = theirs.get(path, "nothing")
            raise UserError(
                f"The slice model's weights do not fit this scan model's encoder: at {path} "
                f"the slice model has {found}, the encoder expects {mine.get(path, 'nothing')}. "
                "Expected a slice run of the same model (family, sizes, in_chans, num_classes, "
                "model.head)."
            )
    return {**scan_params, "encoder": slice_params}


# ---- The scan family's record (registry.py registers it with its lookup of a family). ----


def _prefixed(pattern: str, prefix: str) -> str:
    return rf"{prefix}(?:{pattern})"


def trainable_presets(spec: ScanSpec, family_of: FamilyOf) -> dict[str, str]:
    """optim.trainable presets: 'head' the aggregator and the encoder's classifier (its own
    'head' preset), 'last_stage' those and the encoder's last stage."""
    enc = family_of(spec.encoder).presets(spec.encoder)
    return {name: rf"aggregator/.*|{_prefixed(enc[name], 'encoder/')}"
            for name in ("head", "last_stage")}  # fmt: skip


def layer_ids(spec: ScanSpec, params: dict, family_of: FamilyOf) -> tuple[dict, int]:
    """The encoder's layer ids (its family's numbering), the aggregator in the head's layer
    (the last, with the classifier)."""
    ids, count = family_of(spec.encoder).layer_ids(params["encoder"])
    out = {"encoder": ids}
    if "aggregator" in params:
        out["aggregator"] = jax.tree.map(lambda _: count - 1, params["aggregator"])
    return out, count


def title(spec: ScanSpec, family_of: FamilyOf) -> str:
    """'ConvNeXt atto + attention pooling'."""
    return f"{family_of(spec.encoder).title(spec.encoder)} + {AGGREGATORS[spec.aggregator].title}"


def forward_flops_per_image(spec: ScanSpec, resolution: int, family_of: FamilyOf) -> float:
    """FLOPs per slice image: the encoder's (the aggregator's, on one vector per slice, is
    negligible)."""
    return family_of(spec.encoder).forward_flops(spec.encoder, resolution)


def gradcam_target(net: ScanModel, x: jax.Array, family_of: FamilyOf):
    """Grad-CAM of slices (B, H, W, C): the encoder's, on the slice model classify(embed(x))."""
    return family_of(net.spec.encoder).gradcam_target(net.encoder, x)


def import_weights(
    state_dict: Mapping[str, Any], spec: ScanSpec, layout: str | None, seed: int,
    family_of: FamilyOf,
) -> tuple[dict, dict, list]:  # fmt: skip
    """(params, batch_stats, notes) from a PyTorch state dict of the ENCODER's family: the
    encoder's weights imported by its family, the aggregator freshly initialised with `seed`."""
    fam = family_of(spec.encoder)
    if fam.import_weights is None or (layout is not None and layout not in fam.layouts):
        raise ConversionError(
            f"{fam.title(spec.encoder)} weights (the scan model's encoder) are read from the "
            f"{'|'.join(fam.layouts) or 'no'} layouts, not {layout!r}."
        )
    params, stats, notes = fam.import_weights(state_dict, spec.encoder, layout, seed)
    model = ScanModel(spec, rngs=nnx.Rngs(seed), family_of=family_of)
    fresh = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    out = {**fresh, "encoder": params}
    notes = [*notes, f"the {spec.aggregator} aggregator is freshly initialised"]
    return out, ({"encoder": stats} if stats else {}), notes


def _not_by_name(variant: str, **fields) -> ScanSpec:
    raise UserError(f"A scan model has no model.name of its own (got variant {variant!r}).")


def family_record(family_of: FamilyOf, layouts: tuple[str, ...]) -> Family:
    """The scan models' Family: every hook delegates to the encoder's family (`family_of`);
    no model.name selects it and it is not the default. `layouts`: every family's, so that any
    encoder's weights pass the generic check (the importer checks the encoder's own)."""

    def bind(fn: Callable) -> Callable:
        return functools.partial(fn, family_of=family_of)

    return Family(
        name="scan", spec_type=ScanSpec, module=bind(ScanModel), names={},
        spec_for=_not_by_name, layer_ids=lambda params: _needs_spec("layer ids"),
        spec_layer_ids=bind(layer_ids), presets=bind(trainable_presets),
        forward_flops=bind(forward_flops_per_image), title=bind(title),
        gradcam_target=bind(gradcam_target), test_config={}, layouts=layouts,
        import_weights=bind(import_weights),
    )  # fmt: skip


def _needs_spec(what: str):
    raise TypeError(f"a scan model's {what} depend on its spec: use registry.layer_ids(spec, ...)")
