"""Vision Transformer (Dosovitskiy et al., ICLR 2021) in Flax NNX, NHWC, as timm's
VisionTransformer with its defaults (global_pool='token').

Patch embedding (a patch x patch, stride-patch convolution), a class token, learned absolute
position embeddings that include the class token's position, pre-norm blocks
x + drop_path(ls1(attn(norm1(x)))) and x + drop_path(ls2(mlp(norm2(x)))) with a fused qkv
linear (with bias) and an exact-erf GELU MLP, a final LayerNorm and a linear head on the class
token. LayerNorm statistics and the attention softmax are float32 whatever the compute dtype.

Initialisation is timm's default (`init_weights` mode ''): linear weights ~ N(0, 0.02) (timm's
trunc_normal_ truncates at absolute +-2, i.e. 100 sigma: effectively untruncated) with zero
biases, the head included; pos_embed ~ N(0, 0.02); cls_token ~ N(0, 1e-6); LayerNorm ones and
zeros; layer scale (when on) constant `layer_scale_init`; the patch-embedding convolution keeps
PyTorch's Conv2d default, weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alz_jax.host.errors import UserError, check_fields
from alz_jax.models.family import Family, ModelSpec
from alz_jax.models.layers import (
    drop_path,
    fold_keys,
    head_dropout,
    linear_drop_rates,
    patchify_conv,
    uniform_init,
)

# timm's vit_{tiny,small,base}_patch16_224 (head width 64 throughout).
VARIANTS: dict[str, dict] = {
    "vit_ti16": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_s16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_b16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
}
_SIZE_NAMES = {(192, 12, 3): "Ti", (384, 12, 6): "S", (768, 12, 12): "B"}

_weight_init = nnx.initializers.normal(stddev=0.02)
_zeros = nnx.initializers.zeros_init()


@dataclasses.dataclass(frozen=True)
class ViTSpec(ModelSpec):
    """Everything that defines a ViT's parameters and computation (the common fields in
    ModelSpec)."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16
    mlp_ratio: float = 4.0
    image_size: int = 224  # square input; the position grid is image_size // patch_size
    layer_scale_init: float = 0.0  # timm's init_values; 0 = no layer scale
    norm_eps: float = 1e-6  # timm's; Hugging Face ViT uses 1e-12
    # head_dropout (ModelSpec) is timm's drop_rate: dropout of the class token before the head.

    def __post_init__(self):
        check_fields("model", [
            ("embed_dim", self.embed_dim, self.embed_dim >= 1, ">= 1"),
            ("depth", self.depth, self.depth >= 1, ">= 1"),
            ("num_heads", self.num_heads,
             self.num_heads >= 1 and self.embed_dim % self.num_heads == 0,
             f">= 1 and dividing embed_dim ({self.embed_dim})"),
            ("patch_size", self.patch_size, self.patch_size >= 1, ">= 1"),
            ("mlp_ratio", self.mlp_ratio,
             0 < self.mlp_ratio < math.inf and int(self.embed_dim * self.mlp_ratio) >= 1,
             "> 0 and finite"),
            ("image_size", self.image_size,
             self.image_size >= self.patch_size and self.image_size % self.patch_size == 0,
             f"a multiple of patch_size ({self.patch_size})"),
            # `< math.inf` refuses NaN as well (comparisons with NaN are False).
            ("layer_scale_init", self.layer_scale_init, 0 <= self.layer_scale_init < math.inf,
             ">= 0 and finite (0: no layer scale)"),
            ("norm_eps", self.norm_eps, 0 < self.norm_eps < math.inf, "> 0 and finite"),
            *self.common_checks(),
            ("spatial_attention", self.spatial_attention, not self.spatial_attention,
             "False for a ViT (its head reads the class token: there is no feature map to "
             "pool); spatial attention is for the CNN families (convnext, resnet, "
             "efficientnet, simple_cnn)"),
        ])  # fmt: skip

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def mlp_dim(self) -> int:
        """The MLP's hidden width (timm: int(embed_dim * mlp_ratio))."""
        return int(self.embed_dim * self.mlp_ratio)


def spec_for(variant: str, **overrides) -> ViTSpec:
    """The spec of a named variant (vit_ti16, vit_s16, vit_b16) with fields overridden."""
    if variant not in VARIANTS:
        raise UserError(f"ViT variant {variant!r}: expected one of {', '.join(VARIANTS)}.")
    return ViTSpec(**(VARIANTS[variant] | overrides))


def _layer_norm(spec: ViTSpec, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Statistics stay in float32 whatever the compute dtype: bf16 variance is too coarse.
    return nnx.LayerNorm(
        spec.embed_dim,
        epsilon=spec.norm_eps,
        use_fast_variance=False,
        dtype=jnp.float32,
        param_dtype=spec.param_dtype,
        rngs=rngs,
    )


def _linear(in_dim: int, out_dim: int, spec: ViTSpec, rngs: nnx.Rngs, dtype=None) -> nnx.Linear:
    return nnx.Linear(
        in_dim,
        out_dim,
        kernel_init=_weight_init,
        bias_init=_zeros,
        dtype=dtype or spec.dtype,
        param_dtype=spec.param_dtype,
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection (timm's layout: the 3 * dim outputs
    are (q|k|v) x heads x head_dim) and float32 logits and softmax."""

    def __init__(self, spec: ViTSpec, rngs: nnx.Rngs):
        self.qkv = _linear(spec.embed_dim, 3 * spec.embed_dim, spec, rngs)
        self.proj = _linear(spec.embed_dim, spec.embed_dim, spec, rngs)
        self.num_heads = spec.num_heads
        self.compute_dtype = spec.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(logits * head_dim**-0.5, axis=-1).astype(self.compute_dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, tokens, dim)
        return self.proj(out)


class Mlp(nnx.Module):
    """Linear dim -> mlp_dim, exact GELU, linear back."""

    def __init__(self, spec: ViTSpec, rngs: nnx.Rngs):
        self.fc1 = _linear(spec.embed_dim, spec.mlp_dim, spec, rngs)
        self.fc2 = _linear(spec.mlp_dim, spec.embed_dim, spec, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
    """Pre-norm transformer block; layer scales ls1, ls2 only when spec.layer_scale_init > 0."""

    def __init__(self, drop_path_rate: float, spec: ViTSpec, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(spec, rngs)
        self.attn = Attention(spec, rngs)
        self.norm2 = _layer_norm(spec, rngs)
        self.mlp = Mlp(spec, rngs)
        self.ls1 = self.ls2 = None
        if spec.layer_scale_init > 0:
            shape, value = (spec.embed_dim,), spec.layer_scale_init
            self.ls1 = nnx.data(nnx.Param(jnp.full(shape, value, spec.param_dtype)))
            self.ls2 = nnx.data(nnx.Param(jnp.full(shape, value, spec.param_dtype)))
        self.drop_path_rate = drop_path_rate
        self.compute_dtype = spec.dtype

    def _scaled(self, x: jax.Array, gamma: nnx.Param | None) -> jax.Array:
        return x if gamma is None else x * gamma.value.astype(x.dtype)

    def __call__(self, x: jax.Array, sample_keys: jax.Array | None) -> jax.Array:
        return self.from_norm1(x, self.norm1(x), sample_keys)

    def from_norm1(
        self, x: jax.Array, normed: jax.Array, sample_keys: jax.Array | None = None
    ) -> jax.Array:
        """The block given its input `x` and norm1(x) apart: Grad-CAM differentiates with
        respect to the second."""
        # Two independent draws per block (timm's drop_path1 and drop_path2).
        attn_keys, mlp_keys = fold_keys(sample_keys, 0), fold_keys(sample_keys, 1)
        y = self.attn(normed.astype(self.compute_dtype))
        x = x + drop_path(self._scaled(y, self.ls1), self.drop_path_rate, attn_keys)
        y = self.mlp(self.norm2(x).astype(self.compute_dtype))
        return x + drop_path(self._scaled(y, self.ls2), self.drop_path_rate, mlp_keys)


class ViT(nnx.Module):
    """ViT classifier over NHWC images of spec.image_size; returns float32 logits (B, classes)."""

    def __init__(self, spec: ViTSpec, *, rngs: nnx.Rngs):
        self.spec = spec
        dim, patch = spec.embed_dim, spec.patch_size
        conv_init = uniform_init(spec.in_chans * patch * patch)
        self.patch_embed = patchify_conv(spec.in_chans, dim, patch, spec, rngs,
                                         kernel_init=conv_init, bias_init=conv_init)  # fmt: skip
        # Shapes as timm's (1, 1, D) and (1, 1 + grid^2, D): checkpoints load unchanged.
        self.cls_token = nnx.Param(
            nnx.initializers.normal(1e-6)(rngs.params(), (1, 1, dim), spec.param_dtype)
        )
        self.pos_embed = nnx.Param(
            _weight_init(rngs.params(), (1, 1 + spec.grid**2, dim), spec.param_dtype)
        )
        # timm: torch.linspace(0, drop_path_rate, depth).
        rates = linear_drop_rates(spec.drop_path_rate, spec.depth)
        self.blocks = nnx.List([Block(rate, spec, rngs) for rate in rates])
        self.norm = _layer_norm(spec, rngs)
        self.head = spec.head_layer(
            dim,
            rngs,
            kernel_init=_weight_init,
            bias_init=_zeros,
            dtype=jnp.float32,
            param_dtype=spec.param_dtype,
        )

    def input_tokens(self, x: jax.Array) -> jax.Array:
        """The tokens entering the first block (B, 1 + grid^2, D): the class token, then the
        patches, plus position embeddings."""
        size = self.spec.image_size
        if x.shape[1:3] != (size, size):
            raise ValueError(
                f"This ViT takes {size}x{size} images (its position embeddings are for a "
                f"{self.spec.grid}x{self.spec.grid} grid); got {x.shape[1]}x{x.shape[2]}."
            )
        patches = self.patch_embed(x.astype(self.spec.dtype))
        batch = patches.shape[0]
        patches = patches.reshape(batch, -1, self.spec.embed_dim).astype(jnp.float32)
        cls = jnp.broadcast_to(self.cls_token.value, (batch, 1, self.spec.embed_dim))
        x = jnp.concatenate([cls.astype(jnp.float32), patches], axis=1)
        return (x + self.pos_embed.value).astype(self.spec.dtype)

    def tokens(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        """All tokens after the final norm, float32 (B, 1 + grid^2, D); the class token first.
        Block k draws its drop-path masks from fold_in(sample key, k)."""
        x = self.input_tokens(x)
        for k, block in enumerate(self.blocks):
            x = block(x, fold_keys(sample_keys, k))
        return self.norm(x).astype(jnp.float32)

    def __call__(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        """Logits for images `x` (B, H, W, in_chans); stochastic depth only if per-sample keys
        (shape (B,)) are given."""
        return self.classify(self.embed(x, sample_keys=sample_keys))

    def embed(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        """The embedding (B, embed_dim) float32 the head reads: the class token after the final
        norm, with dropout in training."""
        cls = self.tokens(x, sample_keys=sample_keys)[:, 0]
        return head_dropout(cls, self.spec.head_dropout, sample_keys)

    def classify(self, embedding: jax.Array) -> jax.Array:
        """Logits (B, spec.num_outputs) float32 of embeddings: the head (model.head)."""
        return self.head(embedding)

    def gradcam_target(self, x: jax.Array) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
        """(the patch tokens of the last block's first LayerNorm as a map (B, grid, grid, D),
        float32; the function from that map to the logits). The head reads the class token, which
        only the last block's attention connects to the patches (after it a per-token norm
        separates them), so Grad-CAM weighs the attention's input, as pytorch-grad-cam's ViT
        recipe does (target layer blocks[-1].norm1, the class token dropped)."""
        h = self.input_tokens(x)
        for block in self.blocks[:-1]:
            h = block(h, None)
        last = self.blocks[-1]
        normed = last.norm1(h).astype(jnp.float32)
        batch, grid = normed.shape[0], self.spec.grid

        def to_logits(patch_map: jax.Array) -> jax.Array:
            patches = patch_map.reshape(batch, grid * grid, -1)
            out = last.from_norm1(h, jnp.concatenate([normed[:, :1], patches], axis=1))
            return self.head(self.norm(out).astype(jnp.float32)[:, 0])

        return normed[:, 1:].reshape(batch, grid, grid, -1), to_logits


def resize_position_embedding(
    pos: np.ndarray, new_grid: tuple[int, int], num_prefix_tokens: int = 1
) -> np.ndarray:
    """Position embeddings (1, prefix + h*w, D) or (prefix + h*w, D) of a square h x w grid
    resampled to `new_grid`, the prefix (class token) rows kept: timm's resample_abs_pos_embed
    (F.interpolate bicubic, align_corners=False, antialias=True) in NumPy.

    PyTorch's antialiased bicubic is PIL's separable filter: Keys' cubic with a=-0.5, widened by
    the scale when downsampling, weights over the input pixels in range normalised to sum 1."""
    pos = np.asarray(pos)
    rows = pos[0] if pos.ndim == 3 else pos
    prefix, grid = rows[:num_prefix_tokens], rows[num_prefix_tokens:]
    side = math.isqrt(grid.shape[0])
    if side * side != grid.shape[0]:
        raise ValueError(f"{grid.shape[0]} position tokens after the prefix: not a square grid")
    if (side, side) == tuple(new_grid):
        return pos
    image = grid.reshape(side, side, -1).astype(np.float64)
    resized = np.einsum(
        "ih,jw,hwc->ijc", _aa_bicubic_weights(side, new_grid[0]),
        _aa_bicubic_weights(side, new_grid[1]), image,
    )  # fmt: skip
    out = np.concatenate([prefix, resized.reshape(-1, rows.shape[-1]).astype(rows.dtype)])
    return out[None] if pos.ndim == 3 else out


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _aa_bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) interpolation matrix of PyTorch's antialiased bicubic resize."""
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        # int() truncates toward zero like PyTorch's static_cast.
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = _cubic((np.arange(lo, hi) - center + 0.5) * inv_scale)
        weights[i, lo:hi] = taps / taps.sum()
    return weights


def layer_ids(params: dict) -> tuple[dict, int]:
    """(tree of each parameter's layer index, number of layers) of a ViT parameter tree, as
    timm's `param_groups_layer_decay` numbers VisionTransformer: cls_token, pos_embed and the
    patch embedding 0, block i i + 1, the final norm with the last block, the head last."""
    depth = len(params["blocks"])

    def layer(path, _):
        name = getattr(path[0], "key", path[0])
        if name == "blocks":
            return int(getattr(path[1], "key", path[1])) + 1
        if name == "norm":
            return depth
        if name == "head":
            return depth + 1
        return 0

    return jax.tree_util.tree_map_with_path(layer, params), depth + 2


def trainable_presets(spec: ViTSpec) -> dict[str, str]:
    """optim.trainable presets as regexes over '/'-joined parameter paths: the head, or the last
    block with the final norm and the head."""
    return {"head": r"head/.*", "last_stage": rf"(blocks/{spec.depth - 1}/|norm/|head/).*"}


def forward_flops_per_image(spec: ViTSpec, resolution: int) -> float:
    """FLOPs (2 per multiply-add) of one image's forward pass: the patch embedding, the linear
    layers and the attention matmuls (q k^T and attn v); norms, softmax, GELU and adds (under
    1%) left out."""
    patches = (resolution // spec.patch_size) ** 2
    tokens, dim = patches + 1, spec.embed_dim
    macs = patches * dim * spec.in_chans * spec.patch_size**2
    per_block = tokens * dim * (3 * dim + dim + 2 * spec.mlp_dim) + 2 * tokens * tokens * dim
    macs += spec.depth * per_block + spec.head_macs(dim)
    return 2.0 * macs


def gradcam_target(net: ViT, x: jax.Array) -> tuple[jax.Array, Callable]:
    """Grad-CAM's split of a ViT: its last block's first LayerNorm output on the patch tokens
    (ViT.gradcam_target)."""
    return net.gradcam_target(x)


def spec_for_layout(spec: ViTSpec, layout: str) -> ViTSpec:
    """The spec of a named ViT for weights in `layout`: Hugging Face's ViT normalises with eps
    1e-12 (timm's 1e-6)."""
    return dataclasses.replace(spec, norm_eps=1e-12) if layout == "huggingface" else spec


def title(spec: ViTSpec) -> str:
    """'ViT-B/16' for timm's sizes (any patch size), else a description."""
    size = _SIZE_NAMES.get((spec.embed_dim, spec.depth, spec.num_heads))
    if size and spec.mlp_ratio == 4.0:
        return f"ViT-{size}/{spec.patch_size}"
    return (
        f"ViT patch {spec.patch_size}, dim {spec.embed_dim}, depth {spec.depth}, "
        f"heads {spec.num_heads}, MLP {spec.mlp_dim}"
    )


def init_params(spec: ViTSpec, seed: int) -> dict:
    """Initial parameters of a ViT as a pure dict of arrays (the checkpoint layout)."""
    return nnx.to_pure_dict(nnx.state(ViT(spec, rngs=nnx.Rngs(seed)), nnx.Param))


FAMILY = Family.of_module(
    __name__, name="vit", spec_type=ViTSpec, module=ViT,
    names={**{name: name for name in VARIANTS}, "vit_tiny_patch16_224": "vit_ti16",
           "vit_small_patch16_224": "vit_s16", "vit_base_patch16_224": "vit_b16"},
    gradcam_target=gradcam_target, spec_for_layout=spec_for_layout,
    test_config={"name": "vit_s16",
                 "arch": {"embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 8}},
)  # fmt: skip
