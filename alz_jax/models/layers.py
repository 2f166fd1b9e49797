"""Pieces the families' networks share: per-sample stochastic depth and head dropout (each
sample drawing from its own key, so a mask doesn't depend on how the batch is split over
devices or microbatches), PyTorch-style convolutions, PyTorch's uniform default initialiser,
and Grad-CAM's target of a CNN whose head pools a feature map."""

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


class FeatureMapClassifier(nnx.Module):
    """A network whose head classifies its `feature_map` (the CNNs whose head pools their last
    stage): `head.pool(map, sample_keys)` gives the embedding, `head.fc` the logits."""

    def __call__(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        """Logits for images `x` (B, H, W, in_chans); stochastic depth only if per-sample keys
        (shape (B,)) are given. Block k draws with fold_in(sample key, k)."""
        return self.classify(self.embed(x, sample_keys=sample_keys))

    def embed(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        """The embedding (B, D) float32 the classifier reads: the pooled feature map (head
        norm, and head dropout with keys, included)."""
        return self.head.pool(self.feature_map(x, sample_keys=sample_keys), sample_keys)

    def classify(self, embedding: jax.Array) -> jax.Array:
        """Logits (B, num_classes) float32 of embeddings (B, D): the final linear layer."""
        return self.head.fc(embedding)
