"""EfficientNet (Tan & Le, ICML 2019) in Flax NNX, NHWC, matching timm's `efficientnet_b0`.

This is timm's PyTorch-style EfficientNet (not `tf_efficientnet_*`): symmetric padding k // 2,
BatchNorm eps 1e-5, SiLU. Stages are written in timm's block notation
('ir_r2_k3_s2_e6_c24_se0.25': inverted residual, 2 repeats, 3x3 depthwise, stride 2, expansion
6, 24 output channels, squeeze-excitation 0.25 of the block's input channels) and scaled as
timm's builder scales them: channels by `round_channels` (divisor 8, never more than 10% down),
repeats by ceil(repeats * depth_mult), expanded widths by `make_divisible(in * exp)`, the SE
width by Python's round(mid * se / exp). Stochastic depth on the residual branches follows
timm's rule: block k of n drops with drop_path_rate * k / n.

Initialisation is timm's `_init_weight_goog` (the TF reference's): convolutions ~ N(0, 2 /
fan_out) with fan_out = kh * kw * out_channels / groups (so kh * kw for a depthwise kernel),
conv biases 0, BatchNorm scale 1 and bias 0, the classifier ~ U(-1/sqrt(classes),
1/sqrt(classes)) with bias 0.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
from flax import nnx

from alz_jax.host.errors import UserError, check_fields
from alz_jax.models import depthwise
from alz_jax.models.batchnorm import BatchNorm
from alz_jax.models.family import Family, ModelSpec
from alz_jax.models.layers import (
    attention_pool_macs,
    attention_weights,
    drop_path,
    fold_keys,
    global_pool,
    head_dropout,
    padded_conv,
    pooled_map_target,
    spatial_attention,
    uniform_init,
)

B0_STAGES: tuple[str, ...] = (
    "ds_r1_k3_s1_e1_c16_se0.25",
    "ir_r2_k3_s2_e6_c24_se0.25",
    "ir_r2_k5_s2_e6_c40_se0.25",
    "ir_r3_k3_s2_e6_c80_se0.25",
    "ir_r3_k5_s1_e6_c112_se0.25",
    "ir_r4_k5_s2_e6_c192_se0.25",
    "ir_r1_k3_s1_e6_c320_se0.25",
)

# timm's efficientnet_b0 (channel_multiplier 1.0, depth_multiplier 1.0); the other fields keep
# the spec's defaults (B0 stages, stem 32, head 1280).
VARIANTS: dict[str, dict] = {"efficientnet_b0": dict(width_mult=1.0, depth_mult=1.0)}
_VARIANT_TITLES = {"efficientnet_b0": "EfficientNet-B0"}

_STAGE_RE = re.compile(
    r"(?P<kind>ds|ir)(?:_r(?P<r>\d+)|_k(?P<k>\d+)|_s(?P<s>\d)|_e(?P<e>\d+(?:\.\d+)?)"
    r"|_c(?P<c>\d+)|_se(?P<se>\d+(?:\.\d+)?))*"
)
_STAGE_HELP = (
    "timm block notation TYPE_rR_kK_sS_eE_cC[_seSE] with TYPE ds or ir, an odd kernel K and "
    "stride S 1 or 2, e.g. 'ir_r2_k3_s2_e6_c24_se0.25'"
)


@dataclasses.dataclass(frozen=True)
class StageDef:
    """One stage in timm's notation, unscaled."""

    kind: str  # 'ds' (depthwise-separable) or 'ir' (inverted residual, MBConv)
    repeats: int
    kernel: int
    stride: int
    exp: float
    channels: int
    se: float  # SE width as a fraction of the block's input channels; 0: no SE


def parse_stage(text: str) -> StageDef | None:
    """The StageDef of a timm block string, or None if it is not one this module builds."""
    match = _STAGE_RE.fullmatch(text)
    if not match or any(match[g] is None for g in "rksc"):
        return None
    kind = match["kind"]
    if kind == "ir" and match["e"] is None:
        return None
    stage = StageDef(
        kind=kind,
        repeats=int(match["r"]),
        kernel=int(match["k"]),
        stride=int(match["s"]),
        exp=float(match["e"] or 1.0),
        channels=int(match["c"]),
        se=float(match["se"] or 0.0),
    )
    ok = (
        stage.repeats >= 1
        and stage.kernel % 2 == 1
        and stage.stride in (1, 2)
        and stage.channels >= 1
        and stage.exp > 0
        and (kind == "ir" or stage.exp == 1.0)
    )
    return stage if ok else None


def stage_string(stage: StageDef) -> str:
    """The timm block string of a StageDef (integral ratios without '.0')."""

    def num(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else repr(float(v))

    se = f"_se{num(stage.se)}" if stage.se else ""
    return (
        f"{stage.kind}_r{stage.repeats}_k{stage.kernel}_s{stage.stride}_e{num(stage.exp)}"
        f"_c{stage.channels}{se}"
    )


@dataclasses.dataclass(frozen=True)
class EfficientNetSpec(ModelSpec):
    """Everything that defines an EfficientNet's parameters and computation (the common fields
    in ModelSpec; head_dropout is timm's drop_rate, 0.2 in its B0 recipe)."""

    width_mult: float = 1.0  # timm's channel_multiplier (stem, stages and head)
    depth_mult: float = 1.0  # timm's depth_multiplier (repeats, rounded up)
    num_features: int = 1280  # head width before scaling
    stem_size: int = 32  # stem width before scaling
    stages: tuple[str, ...] = B0_STAGES
    depthwise: str = "xla"  # 'xla' or 'shift' (models/depthwise.py); same parameters either way

    def __post_init__(self):
        stages = tuple(self.stages)
        bad = [s for s in stages if not isinstance(s, str) or parse_stage(s) is None]
        # timm turns strides beyond an output stride of 32 into dilation, which isn't built here.
        downsamples = sum(parse_stage(s).stride > 1 for s in stages if s not in bad)
        check_fields("model", [
            ("width_mult", self.width_mult, 0 < self.width_mult < math.inf, "> 0 and finite"),
            ("depth_mult", self.depth_mult, 0 < self.depth_mult < math.inf, "> 0 and finite"),
            ("num_features", self.num_features, self.num_features >= 1, ">= 1 (head width)"),
            ("stem_size", self.stem_size, self.stem_size >= 1, ">= 1"),
            ("stages", self.stages, bool(stages) and not bad,
             f"a non-empty list of {_STAGE_HELP} (not {bad[:1] or 'empty'})"),
            ("stages", self.stages, downsamples <= 4,
             "at most 4 stride-2 stages (the stem's 2 times 16: output stride 32)"),
            *self.common_checks(),
            ("depthwise", self.depthwise, self.depthwise in ("xla", "shift"), "xla|shift"),
        ])  # fmt: skip
        # A list from a config becomes a tuple: the spec stays hashable and comparable.
        object.__setattr__(self, "stages", stages)


def spec_for(variant: str, **overrides) -> EfficientNetSpec:
    """The spec of a named variant ('efficientnet_b0') with fields overridden."""
    if variant not in VARIANTS:
        raise UserError(
            f"EfficientNet variant {variant!r}: expected one of {', '.join(sorted(VARIANTS))}."
        )
    return EfficientNetSpec(**(VARIANTS[variant] | overrides))


# ---- The builder's arithmetic (timm's _efficientnet_builder and layers.helpers). ----


def make_divisible(v: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """timm's make_divisible: the nearest multiple of `divisor` (at least `divisor`), one step
    up if rounding lost more than 1 - round_limit of `v`."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def round_channels(channels: int, multiplier: float) -> int:
    """timm's round_channels with divisor 8: a width scaled by the channel multiplier."""
    return make_divisible(channels * multiplier)


@dataclasses.dataclass(frozen=True)
class BlockDef:
    """One built block: its widths, kernel, stride, SE width and drop-path rate."""

    kind: str
    in_chs: int
    out_chs: int
    mid_chs: int  # the depthwise conv's width (= in_chs for 'ds')
    kernel: int
    stride: int
    se_chs: int  # 0: no squeeze-excitation
    drop_path_rate: float

    @property
    def has_skip(self) -> bool:
        """Whether the block adds its input (timm: stride 1 and as many channels out as in)."""
        return self.stride == 1 and self.in_chs == self.out_chs


def stem_width(spec: EfficientNetSpec) -> int:
    """The stem's output channels."""
    return round_channels(spec.stem_size, spec.width_mult)


def head_width(spec: EfficientNetSpec) -> int:
    """The head convolution's output channels (the pooled feature width)."""
    return round_channels(spec.num_features, spec.width_mult)


def block_defs(spec: EfficientNetSpec) -> list[list[BlockDef]]:
    """The built blocks per stage, as timm's EfficientNetBuilder makes them."""
    stages = [parse_stage(s) for s in spec.stages]
    counts = [math.ceil(s.repeats * spec.depth_mult) for s in stages]
    total, index, in_chs = sum(counts), 0, stem_width(spec)
    out: list[list[BlockDef]] = []
    for stage, count in zip(stages, counts, strict=True):
        blocks = []
        out_chs = round_channels(stage.channels, spec.width_mult)
        for j in range(count):
            mid = in_chs if stage.kind == "ds" else make_divisible(in_chs * stage.exp)
            # timm's SE width: rd_ratio = se / exp of the (expanded) width, Python's round.
            se_chs = round(mid * (stage.se / stage.exp)) if stage.se else 0
            blocks.append(BlockDef(
                kind=stage.kind, in_chs=in_chs, out_chs=out_chs, mid_chs=mid,
                kernel=stage.kernel, stride=stage.stride if j == 0 else 1, se_chs=se_chs,
                drop_path_rate=spec.drop_path_rate * index / total,
            ))  # fmt: skip
            in_chs, index = out_chs, index + 1
        out.append(blocks)
    return out


# ---- Layers. ----


def _conv_init(kernel: int, out_chs: int, groups: int = 1):
    # timm's _init_weight_goog: N(0, 2 / fan_out), fan_out = kh * kw * out / groups.
    return nnx.initializers.normal(stddev=math.sqrt(2.0 / (kernel * kernel * out_chs // groups)))


def _conv(
    in_chs: int,
    out_chs: int,
    kernel: int,
    spec: EfficientNetSpec,
    rngs: nnx.Rngs,
    *,
    stride: int = 1,
    groups: int = 1,
    bias: bool = False,
) -> nnx.Conv:
    """A PyTorch-padded (k // 2 each side) convolution with timm's EfficientNet initialisation."""
    return padded_conv(in_chs, out_chs, kernel, spec, rngs, stride=stride, groups=groups,
                       bias=bias, kernel_init=_conv_init(kernel, out_chs, groups))  # fmt: skip


def _batch_norm(num_features: int, spec: EfficientNetSpec) -> BatchNorm:
    return BatchNorm(num_features, epsilon=1e-5, dtype=spec.dtype, param_dtype=spec.param_dtype)


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, impl: str) -> jax.Array:
    """Per-channel convolution with `kernel` (kh, kw, 1, C), padding k // 2, stride 1 or 2.

    'shift' has stride 1 only: its stride-2 result is the stride-1 one subsampled, which with
    symmetric k // 2 padding and an odd kernel is exactly PyTorch's stride-2 output."""
    if stride == 1:
        return depthwise.depthwise_conv(x, kernel, impl)
    if impl == "xla":
        kh, kw, _, channels = kernel.shape
        return jax.lax.conv_general_dilated(
            x,
            kernel.astype(x.dtype),
            window_strides=(stride, stride),
            padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=channels,
        )
    return depthwise.depthwise_conv(x, kernel, impl)[:, ::stride, ::stride, :]


class SqueezeExcite(nnx.Module):
    """timm's SqueezeExcite: mean over space, 1x1 conv down (bias), SiLU, 1x1 conv up (bias),
    sigmoid gate on the input."""

    def __init__(self, chs: int, rd_chs: int, spec: EfficientNetSpec, rngs: nnx.Rngs):
        self.conv_reduce = _conv(chs, rd_chs, 1, spec, rngs, bias=True)
        self.conv_expand = _conv(rd_chs, chs, 1, spec, rngs, bias=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        # The spatial mean in float32: bf16 sums over 100+ pixels lose digits.
        s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
        s = self.conv_expand(jax.nn.silu(self.conv_reduce(s)))
        return x * jax.nn.sigmoid(s)


def _depthwise_to_output(block, x, shortcut, dw_norm, project, project_norm, sample_keys):
    """The part both block kinds share: `block`'s depthwise conv, `dw_norm`, SiLU, SE, the 1x1
    `project` and `project_norm`, and the residual with drop path when the shapes allow."""
    x = depthwise_conv(x, block.conv_dw.kernel.value, block.block.stride, block.depthwise)
    x = jax.nn.silu(dw_norm(x))
    if block.se is not None:
        x = block.se(x)
    x = project_norm(project(x))
    if block.block.has_skip:
        x = shortcut + drop_path(x, block.block.drop_path_rate, sample_keys)
    return x


class DepthwiseSeparable(nnx.Module):
    """timm's DepthwiseSeparableConv: dw conv, BN, SiLU, SE, 1x1 conv, BN (no activation),
    residual with drop path when the shapes allow."""

    def __init__(self, block: BlockDef, spec: EfficientNetSpec, rngs: nnx.Rngs):
        c = block.in_chs
        self.conv_dw = _conv(c, c, block.kernel, spec, rngs, stride=block.stride, groups=c)
        self.bn1 = _batch_norm(c, spec)
        self.se = SqueezeExcite(c, block.se_chs, spec, rngs) if block.se_chs else None
        self.conv_pw = _conv(c, block.out_chs, 1, spec, rngs)
        self.bn2 = _batch_norm(block.out_chs, spec)
        self.block = block
        self.depthwise = spec.depthwise

    def __call__(self, x: jax.Array, sample_keys: jax.Array | None) -> jax.Array:
        return _depthwise_to_output(self, x, x, self.bn1, self.conv_pw, self.bn2, sample_keys)


class InvertedResidual(nnx.Module):
    """timm's InvertedResidual (MBConv): 1x1 expand, BN, SiLU, dw conv, BN, SiLU, SE, 1x1
    project, BN, residual with drop path when the shapes allow."""

    def __init__(self, block: BlockDef, spec: EfficientNetSpec, rngs: nnx.Rngs):
        mid = block.mid_chs
        self.conv_pw = _conv(block.in_chs, mid, 1, spec, rngs)
        self.bn1 = _batch_norm(mid, spec)
        self.conv_dw = _conv(mid, mid, block.kernel, spec, rngs, stride=block.stride, groups=mid)
        self.bn2 = _batch_norm(mid, spec)
        self.se = SqueezeExcite(mid, block.se_chs, spec, rngs) if block.se_chs else None
        self.conv_pwl = _conv(mid, block.out_chs, 1, spec, rngs)
        self.bn3 = _batch_norm(block.out_chs, spec)
        self.block = block
        self.depthwise = spec.depthwise

    def __call__(self, x: jax.Array, sample_keys: jax.Array | None) -> jax.Array:
        expanded = jax.nn.silu(self.bn1(self.conv_pw(x)))
        return _depthwise_to_output(
            self, expanded, x, self.bn2, self.conv_pwl, self.bn3, sample_keys
        )


class EfficientNet(nnx.Module):
    """EfficientNet classifier over NHWC images; returns float32 logits (B, num_classes).

    Attribute names follow timm's (conv_stem, bn1, blocks.{stage}.{block}.*, conv_head, bn2,
    classifier), so a parameter path is its timm key with '/' for '.'."""

    def __init__(self, spec: EfficientNetSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        stem = stem_width(spec)
        self.conv_stem = _conv(spec.in_chans, stem, 3, spec, rngs, stride=2)
        self.bn1 = _batch_norm(stem, spec)
        kinds = {"ds": DepthwiseSeparable, "ir": InvertedResidual}
        defs = block_defs(spec)
        self.blocks = nnx.List(
            [nnx.List([kinds[b.kind](b, spec, rngs) for b in stage]) for stage in defs]
        )
        head = head_width(spec)
        self.conv_head = _conv(defs[-1][-1].out_chs, head, 1, spec, rngs)
        self.bn2 = _batch_norm(head, spec)
        self.classifier = spec.head_layer(
            head,
            rngs,
            # timm's _init_weight_goog for nn.Linear: U(-r, r) with r = 1 / sqrt(fan_out).
            kernel_init=uniform_init(spec.num_outputs),
            bias_init=nnx.initializers.zeros_init(),
            dtype=jnp.float32,
            param_dtype=spec.param_dtype,
        )
        # The spatial attention pooling (model.spatial_attention) sits beside the classifier.
        self.attention = spatial_attention(head, spec, rngs)

    def __call__(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        """Logits for images `x` (B, H, W, in_chans); stochastic depth only if per-sample keys
        (shape (B,)) are given. Block k (counted over all stages) draws with fold_in(key, k)."""
        return self.classify(self.embed(x, sample_keys=sample_keys))

    def embed(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        """The embedding (B, head width) float32 the classifier reads: the pooled feature map,
        with dropout in training."""
        features = self.feature_map(x, sample_keys=sample_keys)
        return head_dropout(self.spatial_pool(features), self.spec.head_dropout, sample_keys)

    def classify(self, embedding: jax.Array) -> jax.Array:
        """Logits (B, spec.num_outputs) float32 of embeddings: the classifier (model.head)."""
        return self.classifier(embedding)

    def spatial_pool(self, features: jax.Array) -> jax.Array:
        """The pooled features (B, C), float32: the mean, or the attention-weighted sum."""
        return global_pool(self.attention, features)

    def attention_map(self, feature_map: jax.Array) -> jax.Array:
        """The spatial attention weights (B, h, w) `spatial_pool` sums `feature_map` with."""
        return attention_weights(self.attention, feature_map)

    def feature_map(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        """The head convolution's activations (B, H/32, W/32, head width) after BN and SiLU:
        what the classifier pools, and where Grad-CAM looks."""
        x = self.conv_stem(x.astype(self.spec.dtype))
        x = jax.nn.silu(self.bn1(x))
        k = 0
        for stage in self.blocks:
            for block in stage:
                x = block(x, fold_keys(sample_keys, k))
                k += 1
        return jax.nn.silu(self.bn2(self.conv_head(x)))


# ---- What the training core asks of a family. ----


def _last_level(defs: list[list[BlockDef]]) -> int:
    """The first stage of the lowest resolution: the last stage that downsamples (0 if none)."""
    return max((s for s, stage in enumerate(defs) if stage[0].stride > 1), default=0)


def trainable_presets(spec: EfficientNetSpec) -> dict[str, str]:
    """optim.trainable presets as regexes over '/'-joined parameter paths: the classifier (with
    the spatial attention pooling, when on), or the lowest-resolution stages (from the last
    downsampling one: stages 5-6 of B0, the analogue of ResNet's layer4 and ConvNeXt's last
    stage) with the head conv and classifier."""
    defs = block_defs(spec)
    stages = "|".join(str(s) for s in range(_last_level(defs), len(defs)))
    return {
        "head": r"(attention|classifier)/.*",
        "last_stage": rf"(blocks/({stages})/|conv_head/|bn2/|attention/|classifier/).*",
    }


def layer_ids(params: dict) -> tuple[dict, int]:
    """(tree of each parameter's layer index, number of layers) as timm's
    `param_groups_layer_decay` groups an EfficientNet through its group_matcher: conv_stem and
    bn1 are 0, each block one layer in order, conv_head and bn2 share the last block's layer
    (timm's MATCH_PREV_GROUP), and the classifier is the last layer."""
    blocks = params["blocks"]
    block_id, index = {}, 1
    for s in sorted(blocks, key=int):
        for j in sorted(blocks[s], key=int):
            block_id[(int(s), int(j))], index = index, index + 1
    last_block, classifier = index - 1, index

    def layer(path, _):
        names = [getattr(k, "key", k) for k in path]
        if names[0] in ("conv_stem", "bn1"):
            return 0
        if names[0] == "blocks":
            return block_id[(int(names[1]), int(names[2]))]
        if names[0] in ("conv_head", "bn2"):
            return last_block
        return classifier

    return jax.tree_util.tree_map_with_path(layer, params), classifier + 1


def _out_side(side: int, stride: int) -> int:
    # PyTorch conv with padding k // 2 and an odd kernel: ceil(side / stride).
    return -(-side // stride)


def forward_flops_per_image(spec: EfficientNetSpec, resolution: int) -> float:
    """FLOPs (2 per multiply-add) of one image's forward pass through the convolutions (SE's
    included) and the classifier; BatchNorm, activations, gating and pooling are left out."""
    side = _out_side(resolution, 2)
    macs = side * side * 9 * spec.in_chans * stem_width(spec)
    for stage in block_defs(spec):
        for b in stage:
            out_side = _out_side(side, b.stride)
            if b.kind == "ir":
                macs += side * side * b.in_chs * b.mid_chs
            macs += out_side * out_side * b.kernel * b.kernel * b.mid_chs
            macs += 2 * b.mid_chs * b.se_chs
            macs += out_side * out_side * b.mid_chs * b.out_chs
            side = out_side
    last = block_defs(spec)[-1][-1].out_chs
    macs += side * side * last * head_width(spec) + spec.head_macs(head_width(spec))
    if spec.spatial_attention:
        macs += attention_pool_macs(head_width(spec), side * side)
    return 2.0 * macs


def title(spec: EfficientNetSpec) -> str:
    """'EfficientNet-B0' for the named variant's architecture, else a description."""
    shape = (stem_width(spec), block_defs(spec), head_width(spec))
    for variant, name in _VARIANT_TITLES.items():
        ref = spec_for(variant, drop_path_rate=spec.drop_path_rate)
        if shape == (stem_width(ref), block_defs(ref), head_width(ref)):
            return name
    if spec.stages == B0_STAGES and (spec.stem_size, spec.num_features) == (32, 1280):
        return f"EfficientNet (width {spec.width_mult:g}, depth {spec.depth_mult:g})"
    widths = "-".join(str(stage[-1].out_chs) for stage in block_defs(spec))
    depths = "-".join(str(len(stage)) for stage in block_defs(spec))
    return f"EfficientNet depths {depths}, widths {widths}, head {head_width(spec)}"


FAMILY = Family.of_module(
    __name__, name="efficientnet", spec_type=EfficientNetSpec, module=EfficientNet,
    names={name: name for name in VARIANTS},
    gradcam_target=pooled_map_target(lambda net, f: net.classifier(net.spatial_pool(f))),
    # Two of B0's stages: a depthwise-separable block, a stride-2 and a residual MBConv.
    test_config={"name": "efficientnet_b0", "arch": {
        "width_mult": 0.25, "num_features": 32,
        "stages": ("ds_r1_k3_s1_e1_c16_se0.25", "ir_r2_k5_s2_e6_c24_se0.25")}},
)  # fmt: skip
