"""ResNet with bottleneck blocks (He et al., CVPR 2016) in Flax NNX, NHWC, as torchvision and timm
build ResNet-50 ("v1.5": the stride sits in each bottleneck's 3x3 convolution).

Stem: 7x7 stride-2 convolution without bias, BatchNorm, ReLU, 3x3 stride-2 max pool padded with
-inf. Each block: 1x1 conv, BN, ReLU, 3x3 conv (stride), BN, ReLU, 1x1 conv to 4x the width, BN,
drop path on that residual branch, plus the shortcut (1x1 stride-s conv and BN where the shape
changes), ReLU. Head: global average pool and a linear classifier. Convolutions pad
symmetrically by k // 2 as PyTorch's do; BatchNorm is `batchnorm.BatchNorm` (eps 1e-5).

Initialisation is timm's `ResNet.init_weights`: convolution kernels ~ N(0, 2 / fan_out)
(kaiming_normal_, mode fan_out, ReLU gain; untruncated), BatchNorm scale 1 and bias 0, the last
BN of each block's residual branch with scale 0 (`zero_init_last`; torchvision's default
`zero_init_residual=False` is `zero_init_last=False`), and the classifier as PyTorch's
nn.Linear: kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Stochastic depth follows timm's
`make_blocks`: block k of N drops its residual branch with rate drop_path_rate * k / (N - 1).
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
    drop_path,
    fold_keys,
    global_pool,
    head_dropout,
    linear_drop_rates,
    padded_conv,
    pooled_map_target,
    spatial_attention,
    staged_layer_ids,
    uniform_init,
)

VARIANTS: dict[str, dict] = {
    "resnet50": {"depths": (3, 4, 6, 3), "widths": (64, 128, 256, 512), "stem_width": 64},
}
EXPANSION = 4  # a bottleneck's output channels over its inner width

# kaiming_normal_(mode='fan_out', nonlinearity='relu'): std sqrt(2 / (out * kh * kw)).
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
# nn.Linear's kaiming_uniform_(a=sqrt(5)): U(-b, b) with b = 1 / sqrt(fan_in) = sqrt(3 * 1/3 / n).
_fc_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class ResNetSpec(ModelSpec):
    """Everything that defines a bottleneck ResNet's parameters and computation (the common
    fields in ModelSpec). `widths` are the bottlenecks' inner widths per stage (each stage
    outputs 4x)."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    stem_width: int = 64
    zero_init_last: bool = True

    def __post_init__(self):
        check_fields("model", [
            *stage_checks(self, "widths", "bottleneck widths", (
                f"ResNet depths {self.depths} and widths {self.widths} (config.model.arch): "
                "expected non-empty and of the same length.")),
            ("stem_width", self.stem_width, self.stem_width >= 1, ">= 1"),
            *self.common_checks(),
        ])  # fmt: skip


def spec_for(variant: str, **overrides) -> ResNetSpec:
    """The spec of a named variant ('resnet50') with common fields (in_chans, ...) overridden."""
    if variant not in VARIANTS:
        raise UserError(
            f"Unknown ResNet variant {variant!r}: expected one of {', '.join(sorted(VARIANTS))}."
        )
    return ResNetSpec(**(VARIANTS[variant] | overrides))


def _conv(
    in_dim: int, out_dim: int, size: int, stride: int, spec: ResNetSpec, rngs: nnx.Rngs
) -> nnx.Conv:
    """A bias-free size x size convolution padded by size // 2 on each side (PyTorch's)."""
    return padded_conv(in_dim, out_dim, size, spec, rngs, kernel_init=_conv_init, stride=stride)


def _norm(num_features: int, spec: ResNetSpec, scale_init: float = 1.0) -> batchnorm.BatchNorm:
    return batchnorm.BatchNorm(
        num_features, scale_init=scale_init, dtype=spec.dtype, param_dtype=spec.param_dtype
    )


def max_pool(x: jax.Array) -> jax.Array:
    """3x3 stride-2 max pool padded by 1 with -inf (nn.MaxPool2d(3, 2, padding=1))."""
    # A Python scalar init: JAX recognises a max pool (and differentiates it) only then.
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        (1, 3, 3, 1),
        (1, 2, 2, 1),
        ((0, 0), (1, 1), (1, 1), (0, 0)),
    )


class Stem(nnx.Module):
    """7x7 stride-2 convolution, BatchNorm, ReLU, 3x3 stride-2 max pool."""

    def __init__(self, spec: ResNetSpec, rngs: nnx.Rngs):
        self.conv = _conv(spec.in_chans, spec.stem_width, 7, 2, spec, rngs)
        self.bn = _norm(spec.stem_width, spec)

    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool(jax.nn.relu(self.bn(self.conv(x))))


class Downsample(nnx.Module):
    """The projection shortcut: 1x1 stride-s convolution and BatchNorm."""

    def __init__(self, in_dim: int, out_dim: int, stride: int, spec: ResNetSpec, rngs: nnx.Rngs):
        self.conv = _conv(in_dim, out_dim, 1, stride, spec, rngs)
        self.bn = _norm(out_dim, spec)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class Bottleneck(nnx.Module):
    """1x1 conv, BN, ReLU, 3x3 conv (stride), BN, ReLU, 1x1 conv to 4x width, BN; drop path on
    this branch; plus the (projected) shortcut; ReLU."""

    def __init__(
        self,
        in_dim: int,
        width: int,
        stride: int,
        drop_path_rate: float,
        spec: ResNetSpec,
        rngs: nnx.Rngs,
    ):
        out_dim = EXPANSION * width
        self.conv1 = _conv(in_dim, width, 1, 1, spec, rngs)
        self.bn1 = _norm(width, spec)
        self.conv2 = _conv(width, width, 3, stride, spec, rngs)
        self.bn2 = _norm(width, spec)
        self.conv3 = _conv(width, out_dim, 1, 1, spec, rngs)
        self.bn3 = _norm(out_dim, spec, 0.0 if spec.zero_init_last else 1.0)
        needs_projection = stride != 1 or in_dim != out_dim
        self.downsample = (
            Downsample(in_dim, out_dim, stride, spec, rngs) if needs_projection else None
        )
        self.drop_path_rate = drop_path_rate

    def __call__(self, x: jax.Array, sample_keys: jax.Array | None) -> jax.Array:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return jax.nn.relu(shortcut + drop_path(y, self.drop_path_rate, sample_keys))


class Head(nnx.Module):
    """Global average pool (float32; or spatial attention pooling, model.spatial_attention),
    dropout in training, and the linear classifier (float32 logits)."""

    def __init__(self, spec: ResNetSpec, rngs: nnx.Rngs):
        dim = EXPANSION * spec.widths[-1]
        self.dropout_rate = spec.head_dropout
        self.fc = spec.head_layer(
            dim,
            rngs,
            kernel_init=_fc_kernel_init,
            bias_init=uniform_init(dim),
            dtype=jnp.float32,
            param_dtype=spec.param_dtype,
        )
        self.attention = spatial_attention(dim, spec, rngs)

    def spatial_pool(self, x: jax.Array) -> jax.Array:
        """The pooled features (B, C), float32: the mean, or the attention-weighted sum."""
        return global_pool(self.attention, x)

    def attention_map(self, x: jax.Array) -> jax.Array:
        """The spatial attention weights (B, h, w) `spatial_pool` sums the map `x` with."""
        return attention_weights(self.attention, x)

    def pool(self, x: jax.Array, sample_keys: jax.Array | None = None) -> jax.Array:
        """The embedding the classifier reads: the spatial mean (or the attention-weighted sum),
        with dropout in training."""
        return head_dropout(self.spatial_pool(x), self.dropout_rate, sample_keys)

    def __call__(self, x: jax.Array, sample_keys: jax.Array | None = None) -> jax.Array:
        return self.fc(self.pool(x, sample_keys))


def block_drop_rates(spec: ResNetSpec) -> list[float]:
    """Each block's drop-path rate in network order: timm's linear rule over all blocks."""
    return linear_drop_rates(spec.drop_path_rate, sum(spec.depths))


class ResNet(FeatureMapClassifier):
    """Bottleneck ResNet classifier over NHWC images; float32 logits of shape (B, num_classes)."""

    def __init__(self, spec: ResNetSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        self.stem = Stem(spec, rngs)
        rates = block_drop_rates(spec)
        stages, k, in_dim = [], 0, spec.stem_width
        for s, (depth, width) in enumerate(zip(spec.depths, spec.widths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = 2 if s > 0 and j == 0 else 1
                blocks.append(Bottleneck(in_dim, width, stride, rates[k], spec, rngs))
                in_dim, k = EXPANSION * width, k + 1
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.head = Head(spec, rngs)

    def feature_map(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        """The last stage's output (B, ~H/32, ~W/32, 4 * widths[-1]): what the head pools, and
        where Grad-CAM looks."""
        x = self.stem(x.astype(self.spec.dtype))
        k = 0
        for stage in self.stages:
            for block in stage:
                x = block(x, fold_keys(sample_keys, k))
                k += 1
        return x


def trainable_presets(spec: ResNetSpec) -> dict[str, str]:
    """optim.trainable presets as regexes over '/'-joined parameter paths: the classifier, or the
    last stage (its first block holds the downsampling into it) and the classifier."""
    last = len(spec.depths) - 1
    return {"head": r"head/.*", "last_stage": rf"(stages/{last}/|head/).*"}


def layer_ids(params: dict) -> tuple[dict, int]:
    """(tree of each parameter's layer index, number of layers) of a ResNet parameter tree,
    numbered from the input as timm's `param_groups_layer_decay` does with ResNet's
    `group_matcher` (stem `conv1|bn1|maxpool`, then one group per block `layer(i).(j)`, the
    downsample with its block; the classifier is the last layer)."""
    return staged_layer_ids(params)


def _out(side: int) -> int:
    """Output side of a stride-2 op padded by k // 2 (7x7 conv, 3x3 conv or pool, 1x1 conv)."""
    return (side - 1) // 2 + 1


def forward_flops_per_image(spec: ResNetSpec, resolution: int) -> float:
    """FLOPs (2 per multiply-add) of one image's forward pass through the convolutions and the
    classifier (BatchNorm, ReLU, pools and adds, about 1% more, left out)."""
    side = _out(resolution)
    macs = side * side * 49 * spec.in_chans * spec.stem_width
    side = _out(side)  # max pool
    in_dim = spec.stem_width
    for s, (depth, width) in enumerate(zip(spec.depths, spec.widths, strict=True)):
        for j in range(depth):
            out_side = _out(side) if s > 0 and j == 0 else side
            out_dim = EXPANSION * width
            macs += side * side * in_dim * width  # conv1 at the input resolution
            macs += out_side * out_side * (9 * width * width + width * out_dim)  # conv2, conv3
            if out_side != side or in_dim != out_dim:
                macs += out_side * out_side * in_dim * out_dim  # projection shortcut
            side, in_dim = out_side, out_dim
    macs += spec.head_macs(in_dim)
    if spec.spatial_attention:
        macs += attention_pool_macs(in_dim, side * side)
    return 2.0 * macs


def title(spec: ResNetSpec) -> str:
    """'ResNet-50' (the standard widths and stem: 'ResNet-N' with N weighted layers), else a
    description of the custom size."""
    if tuple(spec.widths) == (64, 128, 256, 512) and spec.stem_width == 64:
        return f"ResNet-{3 * sum(spec.depths) + 2}"
    return f"ResNet depths {spec.depths}, widths {spec.widths}, stem {spec.stem_width}"


def init_params(spec: ResNetSpec, seed: int) -> dict:
    """Initial parameters of a ResNet as a pure dict of arrays (the checkpoint layout)."""
    return nnx.to_pure_dict(nnx.state(ResNet(spec, rngs=nnx.Rngs(seed)), nnx.Param))


FAMILY = Family.of_module(
    __name__, name="resnet", spec_type=ResNetSpec, module=ResNet,
    names={name: name for name in VARIANTS},
    gradcam_target=pooled_map_target(lambda net, f: net.head(f)),
    test_config={"name": "resnet50",
                 "arch": {"depths": (1, 1), "widths": (4, 8), "stem_width": 8}},
)  # fmt: skip
