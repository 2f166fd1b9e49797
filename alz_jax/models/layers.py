"""Pieces the families' networks share: per-sample stochastic depth and head dropout (each
sample drawing from its own key, so a mask doesn't depend on how the batch is split over
devices or microbatches), PyTorch-style convolutions, PyTorch's uniform default initialiser,
Grad-CAM's target of a CNN whose head pools a feature map, and the spatial attention pooling a
CNN head uses instead of the mean when `model.spatial_attention` is on."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def drop_path(x: jax.Array, rate: float, sample_keys: jax.Array | None) -> jax.Array:
    """Per-sample stochastic depth: zero whole samples with probability `rate`, rescale the rest.

    `sample_keys` holds one key per sample, so a sample's mask doesn't depend on how the batch
    is split over devices or microbatches.
    """
    if sample_keys is None or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.vmap(lambda k: jax.random.bernoulli(k, keep))(sample_keys)
    mask = mask.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def linear_drop_rates(rate: float, blocks: int) -> list[float]:
    """Each block's drop-path rate in network order, rising linearly from 0 to `rate` over all
    blocks (timm's rule, torch.linspace(0, rate, blocks))."""
    return [rate * k / max(blocks - 1, 1) for k in range(blocks)]


# Block k draws its stochastic depth with fold_in(sample key, k); the classifier's dropout draws
# with this index, which no block reaches.
HEAD_KEY_INDEX = 2**31 - 1


def head_dropout(x: jax.Array, rate: float, sample_keys: jax.Array | None) -> jax.Array:
    """Dropout of pooled features (B, D) before the classifier (timm's drop_rate): each element
    dropped with probability `rate`, the rest rescaled, each sample from its own key (so, as with
    drop_path, independent of how the batch is split). Identity without keys (evaluation)."""
    if sample_keys is None or rate == 0.0:
        return x
    keep = 1.0 - rate
    keys = fold_keys(sample_keys, HEAD_KEY_INDEX)
    mask = jax.vmap(lambda k: jax.random.bernoulli(k, keep, x.shape[1:]))(keys)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def fold_keys(sample_keys: jax.Array | None, index: int) -> jax.Array | None:
    """Each sample's key folded with `index` (a block's number), or None without keys: how every
    family draws a block's stochastic depth."""
    if sample_keys is None:
        return None
    return jax.vmap(jax.random.fold_in, (0, None))(sample_keys, index)


def uniform_init(fan: int) -> Callable:
    """U(-1/sqrt(fan), 1/sqrt(fan)): PyTorch's default of a Linear's bias and of a Conv2d's
    weight and bias with `fan` their fan-in (kaiming_uniform with a=sqrt(5) gives that bound for
    the weight); timm's EfficientNet classifier with `fan` its fan-out."""
    bound = 1.0 / math.sqrt(fan)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def pooled_map_target(head: Callable) -> Callable:
    """Grad-CAM's target of a CNN: the feature map its head pools, and `head(net, map)`."""

    def target(net, x):
        return net.feature_map(x).astype(jnp.float32), lambda f: head(net, f)

    return target


def padded_conv(
    in_dim: int, out_dim: int, size: int, spec, rngs: nnx.Rngs, *, kernel_init: Callable,
    stride: int = 1, groups: int = 1, bias: bool = False,
) -> nnx.Conv:  # fmt: skip
    """A size x size convolution padded by size // 2 on each side (PyTorch's), computing in
    `spec.dtype`, with a zero-initialised bias when `bias`."""
    pad = size // 2
    return nnx.Conv(in_dim, out_dim, (size, size), strides=stride,
                    padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=bias,
                    kernel_init=kernel_init, bias_init=nnx.initializers.zeros_init(),
                    dtype=spec.dtype, param_dtype=spec.param_dtype, rngs=rngs)  # fmt: skip


def patchify_conv(
    in_dim: int, out_dim: int, size: int, spec, rngs: nnx.Rngs, *, kernel_init: Callable,
    bias_init: Callable,
) -> nnx.Conv:  # fmt: skip
    """A size x size, stride-size convolution with bias and VALID padding (a ConvNeXt's stem
    and downsamples, a ViT's patch embedding)."""
    return nnx.Conv(in_dim, out_dim, (size, size), strides=size, padding="VALID",
                    kernel_init=kernel_init, bias_init=bias_init, dtype=spec.dtype,
                    param_dtype=spec.param_dtype, rngs=rngs)  # fmt: skip


def staged_layer_ids(params: dict, downsamples: bool = False) -> tuple[dict, int]:
    """(tree of each parameter's layer index, number of layers) of a staged CNN's parameters,
    numbered from the input: 'stem' 0, then in order each stage's downsample
    ('downsamples/<s - 1>', before stage s > 0, when `downsamples`) and each of its blocks
    ('stages/<s>/<j>'); everything else (the head) is the last layer."""
    stages = params["stages"]
    index, block_id, downsample_id = 1, {}, {}
    for s in sorted(stages, key=int):
        if downsamples and int(s) > 0:
            downsample_id[int(s) - 1], index = index, index + 1
        for j in sorted(stages[s], key=int):
            block_id[(int(s), int(j))], index = index, index + 1
    head = index

    def layer(path, _):
        names = [getattr(k, "key", k) for k in path]
        if names[0] == "stem":
            return 0
        if names[0] == "downsamples":
            return downsample_id[int(names[1])]
        if names[0] == "stages":
            return block_id[(int(names[1]), int(names[2]))]
        return head

    return jax.tree_util.tree_map_with_path(layer, params), head + 1


def attention_width(dim: int) -> int:
    """The hidden width of the spatial attention scorer over a `dim`-channel map."""
    return max(dim // 8, 8)


def attention_pool_macs(dim: int, positions: int) -> int:
    """Multiply-adds of the spatial attention scorer over `positions` cells of a `dim`-channel
    map (its two 1x1 convolutions) and of the weighted sum."""
    hidden = attention_width(dim)
    return positions * (dim * hidden + hidden + dim)


# nn.Linear's (and a 1x1 nn.Conv2d's) kaiming_uniform_(a=sqrt(5)): U(-b, b), b = 1/sqrt(fan_in).
_scorer_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class SpatialAttentionPool(nnx.Module):
    """Global pooling of a feature map f (B, h, w, C) weighted by a learned map: a scorer (1x1
    convolution C -> attention_width(C), tanh, 1x1 convolution to one score per cell) gives
    scores s, a = softmax of s over the h x w cells of each image, pooled = sum a * f. In
    float32 (the heads' dtype). The last convolution starts at zero: a fresh pool is the plain
    mean, so a head with imported weights starts as the file's model does."""

    def __init__(self, dim: int, rngs: nnx.Rngs, param_dtype: str = "float32"):
        hidden = attention_width(dim)
        self.proj = nnx.Linear(dim, hidden, kernel_init=_scorer_kernel_init,
                               bias_init=uniform_init(dim), dtype=jnp.float32,
                               param_dtype=param_dtype, rngs=rngs)  # fmt: skip
        zeros = nnx.initializers.zeros_init()
        self.score = nnx.Linear(hidden, 1, kernel_init=zeros, bias_init=zeros, dtype=jnp.float32,
                                param_dtype=param_dtype, rngs=rngs)  # fmt: skip

    def weights(self, f: jax.Array) -> jax.Array:
        """The map a (B, h, w), float32, summing to 1 over each image's cells."""
        # A 1x1 convolution is a linear map of each cell's channels.
        scores = self.score(jnp.tanh(self.proj(f.astype(jnp.float32))))[..., 0]
        flat = jax.nn.softmax(scores.reshape(scores.shape[0], -1), axis=-1)
        return flat.reshape(scores.shape)

    def __call__(self, f: jax.Array) -> jax.Array:
        """The pooled features (B, C), float32."""
        return jnp.einsum("bhw,bhwc->bc", self.weights(f), f.astype(jnp.float32))


def spatial_attention(dim: int, spec, rngs: nnx.Rngs) -> SpatialAttentionPool | None:
    """A head's SpatialAttentionPool over `dim` channels when `spec.spatial_attention`, else
    None (the head takes the mean)."""
    if not spec.spatial_attention:
        return None
    return SpatialAttentionPool(dim, rngs, spec.param_dtype)


def global_pool(attention: SpatialAttentionPool | None, f: jax.Array) -> jax.Array:
    """A head's pooled features (B, C), float32: `attention`'s weighted sum, or the mean."""
    if attention is None:
        return jnp.mean(f.astype(jnp.float32), axis=(1, 2))
    return attention(f)


def attention_weights(attention: SpatialAttentionPool | None, f: jax.Array) -> jax.Array:
    """`attention`'s map (B, h, w) of the map it pools; an error for a head without one."""
    if attention is None:
        raise ValueError("this model pools with the mean (model.spatial_attention is off)")
    return attention.weights(f)


class FeatureMapClassifier(nnx.Module):
    """A network whose head classifies its `feature_map` (the CNNs whose head pools their last
    stage): `head.pool(map, sample_keys)` gives the embedding, `head.fc` the logits."""

    def __call__(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        """Logits for images `x` (B, H, W, in_chans); stochastic depth only if per-sample keys
        (shape (B,)) are given. Block k draws with fold_in(sample key, k)."""
        return self.classify(self.embed(x, sample_keys=sample_keys))

    def attention_map(self, feature_map: jax.Array) -> jax.Array:
        """The spatial attention weights (B, h, w), float32, the head pools `feature_map` with
        (model.spatial_attention)."""
        return self.head.attention_map(feature_map)

    def embed(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        """The embedding (B, D) float32 the classifier reads: the pooled feature map (head
        norm, and head dropout with keys, included)."""
        return self.head.pool(self.feature_map(x, sample_keys=sample_keys), sample_keys)

    def classify(self, embedding: jax.Array) -> jax.Array:
        """Logits (B, num_classes) float32 of embeddings (B, D): the final linear layer."""
        return self.head.fc(embedding)
