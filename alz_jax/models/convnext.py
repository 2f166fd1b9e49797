"""ConvNeXt (Liu et al., CVPR 2022) in Flax NNX, NHWC, matching the reference implementations.

Architecture and initialisation follow facebookresearch/ConvNeXt and timm exactly: exact-erf
GELU, two-pass LayerNorm with eps 1e-6 over channels, layer scale initialised to 1e-6, per-sample
stochastic depth with a linear schedule over all blocks, weights ~ N(0, 0.02) untruncated.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from alz_jax.host.errors import UserError, check_fields
from alz_jax.models import depthwise
from alz_jax.models.family import Family, ModelSpec, stage_checks
from alz_jax.models.layers import (  # noqa: F401  (HEAD_KEY_INDEX: convnext's name of old)
    HEAD_KEY_INDEX,
    FeatureMapClassifier,
    attention_pool_macs,
    attention_weights,
    drop_path,
    fold_keys,
    global_pool,
    head_dropout,
    linear_drop_rates,
    patchify_conv,
    pooled_map_target,
    spatial_attention,
    staged_layer_ids,
)

SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
}

# timm's trunc_normal_(std=.02) truncates at absolute +-2, i.e. 100 sigma: effectively untruncated.
_weight_init = nnx.initializers.normal(stddev=0.02)
_zeros = nnx.initializers.zeros_init()


@dataclasses.dataclass(frozen=True)
class ConvNeXtSpec(ModelSpec):
    """Everything that defines a ConvNeXt's parameters and computation (the common fields in
    ModelSpec)."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    layer_scale_init: float = 1e-6
    head_init_scale: float = 1.0
    depthwise: str = "xla"  # 'xla' or 'shift' (models/depthwise.py); same parameters either way

    def __post_init__(self):
        check_fields("model", [
            *stage_checks(self, "dims", "channels", (
                f"config.model.depths {self.depths} and config.model.dims {self.dims}: expected "
                "non-empty and of the same length (or a model.size).")),
            # `< math.inf` refuses NaN as well (comparisons with NaN are False).
            ("layer_scale_init", self.layer_scale_init, 0 < self.layer_scale_init < math.inf,
             "> 0 and finite"),
            ("head_init_scale", self.head_init_scale, 0 < self.head_init_scale < math.inf,
             "> 0 and finite"),
            ("depthwise", self.depthwise, self.depthwise in ("xla", "shift"), "xla|shift"),
            *self.common_checks(),
        ])  # fmt: skip


def _layer_norm(num_features: int, spec: ConvNeXtSpec, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Statistics stay in float32 whatever the compute dtype: bf16 variance is too coarse.
    return nnx.LayerNorm(
        num_features,
        epsilon=1e-6,
        use_fast_variance=False,
        dtype=jnp.float32,
        param_dtype=spec.param_dtype,
        rngs=rngs,
    )


def _patchify_conv(
    in_dim: int, out_dim: int, size: int, spec: ConvNeXtSpec, rngs: nnx.Rngs
) -> nnx.Conv:
    """The stem's and downsamples' patchify convolution, N(0, 0.02) with a zero bias."""
    return patchify_conv(in_dim, out_dim, size, spec, rngs, kernel_init=_weight_init,
                         bias_init=_zeros)  # fmt: skip


class Block(nnx.Module):
    """dwconv 7x7, LN, Linear C->4C, GELU, Linear 4C->C, layer scale, drop path, residual."""

    def __init__(self, dim: int, drop_path_rate: float, spec: ConvNeXtSpec, rngs: nnx.Rngs):
        common = dict(dtype=spec.dtype, param_dtype=spec.param_dtype, rngs=rngs)
        self.dwconv = nnx.Conv(
            dim,
            dim,
            (7, 7),
            padding=((3, 3), (3, 3)),
            feature_group_count=dim,
            kernel_init=_weight_init,
            bias_init=_zeros,
            **common,
        )
        self.norm = _layer_norm(dim, spec, rngs)
        self.pwconv1 = nnx.Linear(
            dim, 4 * dim, kernel_init=_weight_init, bias_init=_zeros, **common
        )
        self.pwconv2 = nnx.Linear(
            4 * dim, dim, kernel_init=_weight_init, bias_init=_zeros, **common
        )
        self.gamma = nnx.Param(jnp.full((dim,), spec.layer_scale_init, spec.param_dtype))
        self.drop_path_rate = drop_path_rate
        self.compute_dtype = spec.dtype
        self.depthwise = spec.depthwise

    def __call__(self, x: jax.Array, sample_keys: jax.Array | None) -> jax.Array:
        shortcut = x
        # The dwconv module holds the parameters (one layout for every implementation).
        x = depthwise.depthwise_conv(x, self.dwconv.kernel.value, self.depthwise)
        x = x + self.dwconv.bias.value.astype(x.dtype)
        x = self.norm(x).astype(self.compute_dtype)
        x = self.pwconv1(x)
        x = jax.nn.gelu(x, approximate=False)
        x = self.pwconv2(x)
        x = x * self.gamma.value.astype(x.dtype)
        return shortcut + drop_path(x, self.drop_path_rate, sample_keys)


class Downsample(nnx.Module):
    """LayerNorm then a 2x2 stride-2 convolution, between stages."""

    def __init__(self, in_dim: int, out_dim: int, spec: ConvNeXtSpec, rngs: nnx.Rngs):
        self.norm = _layer_norm(in_dim, spec, rngs)
        self.conv = _patchify_conv(in_dim, out_dim, 2, spec, rngs)
        self.compute_dtype = spec.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(self.norm(x).astype(self.compute_dtype))


class Stem(nnx.Module):
    """4x4 stride-4 patchify convolution then LayerNorm."""

    def __init__(self, spec: ConvNeXtSpec, rngs: nnx.Rngs):
        self.conv = _patchify_conv(spec.in_chans, spec.dims[0], 4, spec, rngs)
        self.norm = _layer_norm(spec.dims[0], spec, rngs)
        self.compute_dtype = spec.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.conv(x)).astype(self.compute_dtype)


class Head(nnx.Module):
    """Global average pool (or spatial attention pooling, model.spatial_attention), LayerNorm,
    dropout in training, Linear to class logits (float32)."""

    def __init__(self, spec: ConvNeXtSpec, rngs: nnx.Rngs):
        dim = spec.dims[-1]
        self.dropout_rate = spec.head_dropout
        self.norm = _layer_norm(dim, spec, rngs)
        scale = spec.head_init_scale

        def scaled(init):
            return lambda *a, **k: init(*a, **k) * scale

        self.fc = spec.head_layer(
            dim,
            rngs,
            kernel_init=scaled(_weight_init),
            bias_init=scaled(_zeros),
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

    def features(self, x: jax.Array) -> jax.Array:
        """Pooled, normalised features before the classifier."""
        return self.norm(self.spatial_pool(x))

    def pool(self, x: jax.Array, sample_keys: jax.Array | None = None) -> jax.Array:
        """The embedding the classifier reads: `features`, with dropout in training."""
        return head_dropout(self.features(x), self.dropout_rate, sample_keys)

    def __call__(self, x: jax.Array, sample_keys: jax.Array | None = None) -> jax.Array:
        return self.fc(self.pool(x, sample_keys))


class ConvNeXt(FeatureMapClassifier):
    """ConvNeXt classifier over NHWC images; returns float32 logits of shape (B, num_classes)."""

    def __init__(self, spec: ConvNeXtSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        self.stem = Stem(spec, rngs)
        self.downsamples = nnx.List(
            [
                Downsample(spec.dims[i - 1], spec.dims[i], spec, rngs)
                for i in range(1, len(spec.dims))
            ]
        )
        rates = linear_drop_rates(spec.drop_path_rate, sum(spec.depths))
        stages, k = [], 0
        for depth, dim in zip(spec.depths, spec.dims, strict=True):
            stages.append(nnx.List([Block(dim, rates[k + j], spec, rngs) for j in range(depth)]))
            k += depth
        self.stages = nnx.List(stages)
        self.head = Head(spec, rngs)

    def feature_map(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        """The last stage's output (B, H/32, W/32, dims[-1]): what the head pools, and where
        Grad-CAM looks."""
        x = self.stem(x.astype(self.spec.dtype))
        k = 0
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsamples[i - 1](x)
            for block in stage:
                x = block(x, fold_keys(sample_keys, k))
                k += 1
        return x


def trainable_presets(spec: ConvNeXtSpec) -> dict[str, str]:
    """optim.trainable presets as regexes over '/'-joined parameter paths: the head, or the last
    stage (with the downsample into it) and the head."""
    last = len(spec.depths) - 1
    stage = rf"stages/{last}/" + (rf"|downsamples/{last - 1}/" if last else "")
    return {"head": r"head/.*", "last_stage": rf"({stage}|head/).*"}


def layer_ids(params: dict) -> tuple[dict, int]:
    """(tree of each parameter's layer index, number of layers) of a ConvNeXt parameter tree,
    numbered from the input as timm's `param_groups_layer_decay` does for ConvNeXt: the stem is
    0, then each stage's downsample and each block in order; the head is the last layer."""
    return staged_layer_ids(params, downsamples=True)


def count_params(model: nnx.Module) -> int:
    """Number of scalar parameters of an NNX model."""
    params = nnx.state(model, nnx.Param)
    return sum(int(p.size) for p in jax.tree.leaves(params))


def forward_flops_per_image(spec: ConvNeXtSpec, resolution: int) -> float:
    """FLOPs (2 per multiply-add) of one image's forward pass through the convolutions and
    linear layers, which are all but ~1% of the work (norms, GELU and adds left out)."""
    side = resolution // 4
    macs = side * side * spec.dims[0] * 16 * spec.in_chans  # 4x4 stride-4 stem
    for i, (depth, dim) in enumerate(zip(spec.depths, spec.dims, strict=True)):
        if i > 0:
            side //= 2
            macs += side * side * dim * 4 * spec.dims[i - 1]  # 2x2 stride-2 downsample
        macs += depth * side * side * (49 * dim + 8 * dim * dim)  # dwconv 7x7, MLP C-4C-C
    macs += spec.head_macs(spec.dims[-1])
    if spec.spatial_attention:
        macs += attention_pool_macs(spec.dims[-1], side * side)
    return 2.0 * macs


def train_flops_per_image(spec: ConvNeXtSpec, resolution: int) -> float:
    """Forward plus backward FLOPs per training image: 3x the forward (the usual convention:
    the backward pass computes gradients for activations and for weights)."""
    return 3.0 * forward_flops_per_image(spec, resolution)


def init_params(spec: ConvNeXtSpec, seed: int) -> dict:
    """Initial parameters of a ConvNeXt as a pure dict of arrays (the checkpoint layout)."""
    return nnx.to_pure_dict(nnx.state(ConvNeXt(spec, rngs=nnx.Rngs(seed)), nnx.Param))


def size_name(depths: tuple, dims: tuple) -> str | None:
    """The timm size name (atto ... large) of (depths, dims), or None."""
    return next((n for n, v in SIZES.items() if v == (tuple(depths), tuple(dims))), None)


def title(spec: ConvNeXtSpec) -> str:
    """'ConvNeXt tiny' for timm's sizes, else the depths and dims."""
    size = size_name(spec.depths, spec.dims)
    return f"ConvNeXt {size}" if size else f"ConvNeXt depths {spec.depths}, dims {spec.dims}"


def spec_for(size: str, **fields) -> ConvNeXtSpec:
    """The spec of a named size (atto ... large) with fields overridden."""
    depths, dims = SIZES[size]
    return ConvNeXtSpec(**{"depths": depths, "dims": dims, **fields})


def spec_from_config(model_config, **fields) -> ConvNeXtSpec:
    """The ConvNeXt of `config.model` named 'convnext' (or nothing): of model.size, or of
    explicit model.depths and model.dims, with model.arch's overrides of the other
    architecture fields (e.g. layer_scale_init)."""
    m = model_config
    if m.size:
        if m.size not in SIZES:
            raise UserError(
                f"config.model.size = {m.size!r} is not a ConvNeXt size; expected one of "
                f"{sorted(SIZES)} (or set model.depths and model.dims)."
            )
        depths, dims = SIZES[m.size]
    else:
        depths, dims = tuple(m.depths), tuple(m.dims)
    arch = dict(m.get("arch", {}))
    # Only ConvNeXt's own fields that no other config field sets (num_classes, depthwise, ...).
    own = (
        {f.name for f in dataclasses.fields(ConvNeXtSpec)}
        - {f.name for f in dataclasses.fields(ModelSpec)}
        - {"depths", "dims", *fields}
    )
    unknown = sorted(set(arch) - own)
    if unknown:
        raise UserError(
            f"config.model.arch has {unknown}: a ConvNeXt takes its depths and dims from "
            "model.size or model.depths and model.dims, and only "
            f"{', '.join(sorted(own))} from model.arch."
        )
    return ConvNeXtSpec(depths=tuple(depths), dims=tuple(dims), **fields, **arch)


def hparams_label(spec: ConvNeXtSpec) -> str:
    """TensorBoard's HParams model column: the title with, for a named size, its dims and
    depths ('ConvNeXt tiny (96x192x384x768 / 3-3-9-3)'); other sizes' titles hold them."""
    shape = "x".join(map(str, spec.dims)) + " / " + "-".join(map(str, spec.depths))
    return f"{title(spec)} ({shape})" if size_name(spec.depths, spec.dims) else title(spec)


def export_fields(spec: ConvNeXtSpec) -> dict:
    """The export metadata's keys of exports from before other families (readers of those)."""
    return {"architecture": "ConvNeXt", "depths": list(spec.depths), "dims": list(spec.dims)}


FAMILY = Family.of_module(
    __name__, name="convnext", spec_type=ConvNeXtSpec, module=ConvNeXt,
    names={f"convnext_{size}": size for size in SIZES},
    gradcam_target=pooled_map_target(lambda net, f: net.head(f)),
    # The tiny test config's own model (tests/tiny_config.py).
    test_config={"name": "convnext", "depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)},
    spec_from_config=spec_from_config, default=True, hparams_label=hparams_label,
    export_fields=export_fields, aliases={size: f"convnext_{size}" for size in SIZES},
    aliases_are="a ConvNeXt size",
)  # fmt: skip
