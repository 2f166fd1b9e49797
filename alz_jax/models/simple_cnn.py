"""A plain CNN, the from-scratch baseline of small MRI studies, in Flax NNX, NHWC.

Blocks of `depths[s]` units (3x3 convolution without bias, padded by 1, BatchNorm, ReLU) of
`dims[s]` channels, each block closed by a 2x2 stride-2 max pool (PyTorch's nn.MaxPool2d(2):
an odd side loses its last row and column); then global average pooling, dropout of the pooled
features in training (`model.head_dropout`) and a linear classifier. No residual branches: there
is nothing for stochastic depth to drop, so `model.drop_path_rate` has no effect. BatchNorm is
`batchnorm.BatchNorm` (eps 1e-5), with the training core's global batch statistics, running
statistics, EMA and SWA handling as ResNet's.

The defaults (dims 32-64-128-256, two convolutions per block) have 1,170,720 convolution
weights, 1,920 BatchNorm parameters and a 256 x classes + classes classifier: 1,173,668
parameters for four classes, at any input size (the pooling is global); the published baseline
this stands for (a four-layer custom CNN) has 1.85M. There are no pretrained weights: the family
trains from scratch only, and `model.init_from` is refused.

Initialisation as torchvision's VGG and ResNet: convolution kernels ~ N(0, 2 / fan_out)
(kaiming_normal_, mode fan_out, ReLU gain), BatchNorm scale 1 and bias 0, the classifier as
PyTorch's nn.Linear: kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from alz_jax.host.errors import UserError, check_fields
from alz_jax.models import batchnorm
from alz_jax.models.family import Family, ModelSpec, stage_checks
from alz_jax.models.layers import (
    FeatureMapClassifier,
    attention_pool_macs,
    attention_weights,
    global_pool,
    head_dropout,
    padded_conv,
    pooled_map_target,
    spatial_attention,
    uniform_init,
)

NAME = "simple_cnn"
DEFAULT_DIMS = (32, 64, 128, 256)
DEFAULT_DEPTHS = (2, 2, 2, 2)

# kaiming_normal_(mode='fan_out', nonlinearity='relu'): std sqrt(2 / (out * kh * kw)).
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
# nn.Linear's kaiming_uniform_(a=sqrt(5)): U(-b, b) with b = 1 / sqrt(fan_in).
_fc_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class SimpleCNNSpec(ModelSpec):
    """Everything that defines a plain CNN (the common fields in ModelSpec): `dims[s]` channels
    and `depths[s]` 3x3 convolutions in block s."""

    dims: tuple[int, ...] = DEFAULT_DIMS
    depths: tuple[int, ...] = DEFAULT_DEPTHS

    def __post_init__(self):
        check_fields("model", [
            *stage_checks(self, "dims", "channels", (
                f"simple_cnn depths {self.depths} and dims {self.dims} (config.model.arch): "
                "expected non-empty and of the same length (one entry per block).")),
            *self.common_checks(),
        ])  # fmt: skip


def spec_for(variant: str, **fields) -> SimpleCNNSpec:
    """The spec of `model.name = 'simple_cnn'` (its one variant) with fields overridden."""
    del variant  # one variant: its sizes are the spec's defaults or config.model.arch's
    return SimpleCNNSpec(**fields)


def spec_from_config(model_config, **fields) -> SimpleCNNSpec:
    """The spec of a `config.model` section named 'simple_cnn': the defaults with
    `model.arch`'s dims and depths. A `model.init_from` is refused: there are no pretrained
    weights of this family (it trains from scratch)."""
    if model_config.get("init_from"):
        raise UserError(
            f"config.model.init_from = {model_config.init_from!r}: model.name = '{NAME}' trains "
            "from scratch only (no pretrained weights exist for it); expected init_from empty."
        )
    known = {f.name for f in dataclasses.fields(SimpleCNNSpec)}
    arch = dict(model_config.get("arch") or {})
    unknown = sorted(set(arch) - known)
    if unknown:
        raise UserError(
            f"config.model.arch has {unknown}, which a {NAME} spec does not have; its fields "
            f"are {sorted(known)}."
        )
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}
    return SimpleCNNSpec(**(fields | arch))


def max_pool(x: jax.Array) -> jax.Array:
    """2x2 stride-2 max pool without padding (nn.MaxPool2d(2): floor of an odd side)."""
    # A Python scalar init: JAX recognises a max pool (and differentiates it) only then.
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class ConvUnit(nnx.Module):
    """3x3 convolution without bias (BatchNorm's bias follows), BatchNorm, ReLU."""

    def __init__(self, in_dim: int, out_dim: int, spec: SimpleCNNSpec, rngs: nnx.Rngs):
        self.conv = padded_conv(in_dim, out_dim, 3, spec, rngs, kernel_init=_conv_init)
        self.bn = batchnorm.BatchNorm(out_dim, dtype=spec.dtype, param_dtype=spec.param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class Head(nnx.Module):
    """The last block's max pool, global average pool (float32; or spatial attention pooling,
    model.spatial_attention), dropout in training, and the linear classifier (float32
    logits)."""

    def __init__(self, spec: SimpleCNNSpec, rngs: nnx.Rngs):
        dim = spec.dims[-1]
        self.dropout_rate = spec.head_dropout
        self.fc = spec.head_layer(dim, rngs, kernel_init=_fc_kernel_init,
                                  bias_init=uniform_init(dim), dtype=jnp.float32,
                                  param_dtype=spec.param_dtype)  # fmt: skip
        self.attention = spatial_attention(dim, spec, rngs)

    def spatial_pool(self, x: jax.Array) -> jax.Array:
        """The last block's max pool of `x`, pooled (B, C), float32: the mean, or the
        attention-weighted sum."""
        return global_pool(self.attention, max_pool(x.astype(jnp.float32)))

    def attention_map(self, x: jax.Array) -> jax.Array:
        """The spatial attention weights (B, h/2, w/2) `spatial_pool` sums the max-pooled `x`
        with."""
        return attention_weights(self.attention, max_pool(x.astype(jnp.float32)))

    def pool(self, x: jax.Array, sample_keys: jax.Array | None = None) -> jax.Array:
        """The embedding the classifier reads: max pool, spatial mean (or the attention-weighted
        sum), dropout in training."""
        return head_dropout(self.spatial_pool(x), self.dropout_rate, sample_keys)

    def __call__(self, x: jax.Array, sample_keys: jax.Array | None = None) -> jax.Array:
        return self.fc(self.pool(x, sample_keys))


class SimpleCNN(FeatureMapClassifier):
    """Plain CNN classifier over NHWC images; float32 logits of shape (B, num_classes)."""

    def __init__(self, spec: SimpleCNNSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        stages, in_dim = [], spec.in_chans
        for depth, dim in zip(spec.depths, spec.dims, strict=True):
            units = []
            for _ in range(depth):
                units.append(ConvUnit(in_dim, dim, spec, rngs))
                in_dim = dim
            stages.append(nnx.List(units))
        self.stages = nnx.List(stages)
        self.head = Head(spec, rngs)

    def feature_map(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        """The last convolution's activations (B, H / 2^(blocks-1), ..., dims[-1]), before the
        last block's max pool: where Grad-CAM looks (the last convolutional layer, as in its
        paper); the head pools them. `sample_keys` are unused (no stochastic depth)."""
        del sample_keys
        x = x.astype(self.spec.dtype)
        for s, stage in enumerate(self.stages):
            if s > 0:
                x = max_pool(x)
            for unit in stage:
                x = unit(x)
        return x


def trainable_presets(spec: SimpleCNNSpec) -> dict[str, str]:
    """optim.trainable presets as regexes over '/'-joined parameter paths: the classifier, or
    the last block and the classifier."""
    last = len(spec.depths) - 1
    return {"head": r"head/.*", "last_stage": rf"(stages/{last}/|head/).*"}


def layer_ids(params: dict) -> tuple[dict, int]:
    """(tree of each parameter's layer index, number of layers): each convolution unit (with
    its BatchNorm) a layer, numbered from the input, the classifier last."""
    stages = params["stages"]
    units = [(int(s), int(j)) for s in sorted(stages, key=int)
             for j in sorted(stages[s], key=int)]  # fmt: skip
    index = {unit: k for k, unit in enumerate(units)}

    def layer(path, _):
        names = [getattr(k, "key", k) for k in path]
        if names[0] == "stages":
            return index[(int(names[1]), int(names[2]))]
        return len(units)

    return jax.tree_util.tree_map_with_path(layer, params), len(units) + 1


def forward_flops_per_image(spec: SimpleCNNSpec, resolution: int) -> float:
    """FLOPs (2 per multiply-add) of one image's forward pass through the convolutions and the
    classifier (BatchNorm, ReLU and pools left out)."""
    side, in_dim, macs = resolution, spec.in_chans, 0
    for s, (depth, dim) in enumerate(zip(spec.depths, spec.dims, strict=True)):
        if s > 0:
            side //= 2
        for _ in range(depth):
            macs += side * side * 9 * in_dim * dim
            in_dim = dim
    macs += spec.head_macs(in_dim)
    if spec.spatial_attention:  # over the last block's max pool
        macs += attention_pool_macs(in_dim, (side // 2) ** 2)
    return 2.0 * macs


def title(spec: SimpleCNNSpec) -> str:
    """'Simple CNN 32-64-128-256, 2-2-2-2 convs': channels and convolutions per block."""
    dims, depths = "-".join(map(str, spec.dims)), "-".join(map(str, spec.depths))
    return f"Simple CNN {dims}, {depths} convs"


FAMILY = Family.of_module(
    __name__, name=NAME, spec_type=SimpleCNNSpec, module=SimpleCNN,
    names={NAME: "default"},
    gradcam_target=pooled_map_target(lambda net, f: net.head(f)),
    test_config={"name": NAME, "arch": {"dims": (4, 8), "depths": (1, 2)}},
    spec_from_config=spec_from_config,
)  # fmt: skip
