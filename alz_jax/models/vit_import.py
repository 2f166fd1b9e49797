"""ViT weights from PyTorch (timm's VisionTransformer, Hugging Face transformers' ViT) into NNX.

Layouts:
- 'timm': cls_token, pos_embed, patch_embed.proj, blocks.{i}.{norm1, attn.qkv, attn.proj, norm2,
  mlp.fc1, mlp.fc2, ls1.gamma, ls2.gamma}, norm, head (files saved with num_classes=0 have no
  head: it is initialised).
- 'huggingface': ViTForImageClassification as `save_pretrained` writes it and the Hub holds it
  (vit.embeddings.{cls_token, position_embeddings, patch_embeddings.projection},
  vit.encoder.layer.{i}.{layernorm_before, attention.attention.{query,key,value},
  attention.output.dense, layernorm_after, intermediate.dense, output.dense}, vit.layernorm,
  classifier), the ViTModel form without the 'vit.' prefix and without a classifier (its
  pooler.dense, unused by classification, is dropped with a note), and both under transformers
  5's in-memory module names (layers.{i}.attention.{q,k,v,o}_proj, mlp.fc1/fc2). The separate
  query, key and value projections are concatenated into the fused qkv in timm's order.

Hugging Face's ViT normalises with layer_norm_eps 1e-12, timm's with 1e-6: spec_from_state_dict
with the huggingface layout sets norm_eps=1e-12, and a spec built by hand for an HF file should
too: with 1e-6 the tiny test fixture's logits move by 9e-6 (2e-6 from transformers' with 1e-12),
too close to the 1e-5 parity bound to leave to chance.

A position table for another grid than the spec's (image_size // patch_size) is resampled like
timm's resample_abs_pos_embed (vit.resize_position_embedding), the class token's row kept.
The number of attention heads is not recorded in a state dict: spec_from_state_dict assumes
timm's and Google's head width 64 unless num_heads is given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import numpy as np

from alz_jax.models import vit
from alz_jax.models.import_helpers import ConversionError, StateDictReader, to_project_layout

LAYOUTS: tuple[str, ...] = ("timm", "huggingface")
_POOLER = (
    "pooler.dense.weight",
    "pooler.dense.bias",
    "vit.pooler.dense.weight",
    "vit.pooler.dense.bias",
)
# Per naming: the block prefix, then each block module's name.
_BLOCK_NAMES = {
    "timm": ("blocks.{i}", {
        "norm1": "norm1", "attn/proj": "attn.proj", "norm2": "norm2", "mlp/fc1": "mlp.fc1",
        "mlp/fc2": "mlp.fc2", "ls1": "ls1.gamma", "ls2": "ls2.gamma",
    }),
    "hub": ("{p}encoder.layer.{i}", {
        "norm1": "layernorm_before", "attn/proj": "attention.output.dense",
        "norm2": "layernorm_after", "mlp/fc1": "intermediate.dense", "mlp/fc2": "output.dense",
    }),
    "v5": ("{p}layers.{i}", {
        "norm1": "layernorm_before", "attn/proj": "attention.o_proj",
        "norm2": "layernorm_after", "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2",
    }),
}  # fmt: skip
# The separate q, k, v projections of each Hugging Face naming, in timm's fused order.
_QKV_NAMES = {
    "hub": ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
    "v5": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
}
_TOP_NAMES = {
    "timm": {"cls_token": "cls_token", "pos_embed": "pos_embed",
             "patch_embed": "patch_embed.proj", "norm": "norm", "head": "head"},
    "huggingface": {"cls_token": "{p}embeddings.cls_token",
                    "pos_embed": "{p}embeddings.position_embeddings",
                    "patch_embed": "{p}embeddings.patch_embeddings.projection",
                    "norm": "{p}layernorm", "head": "classifier"},
}  # fmt: skip
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def detect_layout(state_dict: Mapping[str, np.ndarray]) -> str:
    """'timm' or 'huggingface', from the class token's key."""
    if "cls_token" in state_dict or "patch_embed.proj.weight" in state_dict:
        return "timm"
    if "vit.embeddings.cls_token" in state_dict or "embeddings.cls_token" in state_dict:
        return "huggingface"
    raise ConversionError(
        "Not a ViT state dict in timm or Hugging Face layout: none of cls_token, "
        "vit.embeddings.cls_token, embeddings.cls_token is present (first keys: "
        f"{sorted(state_dict)[:5]})."
    )


def _naming(state_dict: Mapping[str, np.ndarray], layout: str) -> tuple[str, str]:
    """(naming, prefix): 'timm', or the HF naming ('hub' or 'v5') and its 'vit.' prefix."""
    if layout == "timm":
        return "timm", ""
    prefix = "vit." if "vit.embeddings.cls_token" in state_dict else ""
    v5 = any(k.startswith(f"{prefix}layers.") for k in state_dict)
    return ("v5" if v5 else "hub"), prefix


def _key_function(naming: str, prefix: str) -> Callable[[tuple], str]:
    """Project parameter path -> file key (for qkv in HF files: the query's key)."""
    layout = "timm" if naming == "timm" else "huggingface"
    block, parts = _BLOCK_NAMES[naming]

    def key_for(names: tuple) -> str:
        leaf = _LEAVES.get(names[-1], names[-1])
        if names[0] == "blocks":
            start = block.format(p=prefix, i=names[1])
            module = "/".join(map(str, names[2:-1]))
            if names[-1] in ("ls1", "ls2"):
                return f"{start}.{parts[names[-1]]}"
            if module == "attn/qkv":
                sub = "attn.qkv" if naming == "timm" else _QKV_NAMES[naming][0]
                return f"{start}.{sub}.{leaf}"
            return f"{start}.{parts[module]}.{leaf}"
        top = _TOP_NAMES[layout][names[0]].format(p=prefix)
        return top if len(names) == 1 else f"{top}.{leaf}"

    return key_for


def architecture(state_dict: Mapping[str, np.ndarray], layout: str) -> dict:
    """What a state dict's shapes say: patch_size, embed_dim, in_chans, depth, mlp_dim,
    layer_scale and has_pos (bools), grid (None when there is no position table of a class
    token plus a square grid)."""
    naming, prefix = _naming(state_dict, layout)
    key_for = _key_function(naming, prefix)
    kernel = state_dict.get(key_for(("patch_embed", "kernel")))
    if kernel is None or np.ndim(kernel) != 4:
        raise ConversionError(
            f"No ViT patch embedding ({key_for(('patch_embed', 'kernel'))}) in this {layout}-"
            "layout state dict."
        )
    dim, in_chans, patch = np.shape(kernel)[:3]
    pattern = re.escape(_BLOCK_NAMES[naming][0].format(p=prefix, i="@")).replace("@", r"(\d+)")
    blocks = {int(m[1]) for k in state_dict if (m := re.match(pattern + r"\.", k))}
    fc1 = state_dict.get(key_for(("blocks", 0, "mlp", "fc1", "kernel")))
    if not blocks or fc1 is None:
        raise ConversionError(f"No ViT blocks found in this {layout}-layout state dict.")
    pos = state_dict.get(key_for(("pos_embed",)))
    tokens = np.shape(pos)[1] - 1 if pos is not None and np.ndim(pos) == 3 else 0
    side = math.isqrt(max(tokens, 0))
    return dict(
        patch_size=int(patch), embed_dim=int(dim), in_chans=int(in_chans),
        depth=max(blocks) + 1, mlp_dim=int(np.shape(fc1)[0]),
        layer_scale=naming == "timm" and key_for(("blocks", 0, "ls1")) in state_dict,
        has_pos=pos is not None,
        grid=side if side >= 1 and side * side == tokens else None,
    )  # fmt: skip


def _describe(arch: dict) -> str:
    """'ViT-S/16' for timm's sizes, else a description; ' with layer scale' when it has one."""
    dim, depth, patch, mlp = (arch[k] for k in ("embed_dim", "depth", "patch_size", "mlp_dim"))
    name = f"ViT patch {patch}, dim {dim}, depth {depth}, MLP {mlp}"
    if dim % 64 == 0 and mlp == 4 * dim:  # timm's sizes have head width 64 and MLP ratio 4
        named = vit.title(vit.ViTSpec(dim, depth, dim // 64, patch_size=patch, image_size=patch))
        name = named if named.startswith("ViT-") else name
    return name + (" with layer scale" if arch["layer_scale"] else "")


def _mlp_ratio(mlp_dim: int, dim: int) -> float:
    """A ratio whose int(dim * ratio) is mlp_dim (timm's hidden width rule)."""
    ratio = mlp_dim / dim
    return ratio if int(dim * ratio) == mlp_dim else (mlp_dim + 0.5) / dim


def spec_from_state_dict(
    state_dict: Mapping[str, np.ndarray], layout: str | None = None, **common
) -> vit.ViTSpec:
    """The ViTSpec of a state dict's architecture (patch, width, depth, MLP width, layer scale,
    image size from its position grid; norm_eps 1e-12 for Hugging Face files), with `common`
    (in_chans, num_classes, dtype, ...; also num_heads, image_size, ...) overriding. num_heads
    defaults to embed_dim // 64 (every timm and Google ViT); a width not divisible by 64 needs
    num_heads given."""
    layout = layout or detect_layout(state_dict)
    if layout not in LAYOUTS:
        raise ConversionError(f"layout {layout!r}; expected one of {LAYOUTS}")
    arch = architecture(state_dict, layout)
    dim = arch["embed_dim"]
    if "num_heads" not in common and dim % 64:
        raise ConversionError(
            f"The {layout} state dict holds a ViT of width {dim}, not a multiple of 64: pass "
            "num_heads (a state dict doesn't record it)."
        )
    fields = dict(
        embed_dim=dim, depth=arch["depth"], num_heads=dim // 64 or 1,
        patch_size=arch["patch_size"], mlp_ratio=_mlp_ratio(arch["mlp_dim"], dim),
        image_size=arch["patch_size"] * (arch["grid"] or 1),
        # Any positive value: the file's layer scales replace it.
        layer_scale_init=1e-5 if arch["layer_scale"] else 0.0,
        norm_eps=1e-12 if layout == "huggingface" else 1e-6,
    )  # fmt: skip
    return vit.ViTSpec(**(fields | common))


def _check_architecture(arch: dict, spec: vit.ViTSpec, layout: str) -> None:
    want = dict(patch_size=spec.patch_size, embed_dim=spec.embed_dim, depth=spec.depth,
                mlp_dim=spec.mlp_dim, layer_scale=spec.layer_scale_init > 0)  # fmt: skip
    if any(arch[k] != v for k, v in want.items()):
        model = _describe(want)
        raise ConversionError(
            f"The {layout} state dict holds a {_describe(arch)}; the model is {model}. Set "
            "config.model (variant or patch_size, embed_dim, depth, mlp_ratio, "
            "layer_scale_init) to the checkpoint's architecture."
        )
    if arch["grid"] is None and arch["has_pos"]:  # (a missing table is named by the reader)
        raise ConversionError(
            f"The {layout} state dict's position table is not a class token plus a square grid."
        )


def _transform(reader: StateDictReader, spec: vit.ViTSpec, naming: str, key_for: Callable):
    """The reader's transform: position-table resampling and (HF) q, k, v fused into qkv."""

    def transform(names: tuple, value: np.ndarray) -> np.ndarray | None:
        if names == ("pos_embed",) and np.shape(value)[1] != 1 + spec.grid**2:
            side = math.isqrt(np.shape(value)[1] - 1)
            reader.note(
                f"pos_embed: resampled the {side}x{side} position grid to {spec.grid}x"
                f"{spec.grid} (bicubic, antialiased, as timm's resample_abs_pos_embed)"
            )
            return vit.resize_position_embedding(
                np.asarray(value, np.float32), (spec.grid, spec.grid)
            )
        if naming != "timm" and names[2:4] == ("attn", "qkv"):
            query_key = key_for(names)
            others = [query_key.replace(_QKV_NAMES[naming][0], name, 1)
                      for name in _QKV_NAMES[naming][1:]]  # fmt: skip
            parts = [value] + [reader.take(k) for k in others]
            if any(p is None for p in parts):  # named as missing by reader.finish
                shape = (spec.embed_dim, 3 * spec.embed_dim) if names[-1] == "kernel" else None
                return np.zeros(shape or (3 * spec.embed_dim,), np.float32)
            return to_project_layout(np.concatenate(parts, axis=0), names[-1])
        return None

    return transform


def variables_from_state_dict(
    state_dict: Mapping[str, np.ndarray], spec: vit.ViTSpec, layout: str | None = None,
    seed: int = 0,
) -> tuple[dict, dict, list[str]]:  # fmt: skip
    """(params, batch_stats ({}: no BatchNorm), notes) of `spec`'s ViT from a timm or Hugging
    Face state dict. The patch embedding of a 3-channel file is summed for in_chans=1 (timm's
    adapt_input_conv rule for other counts); a head
    for another class count (or none) is initialised with `seed`; a position table for another
    grid is resampled. Raises ConversionError naming both architectures when they differ, and
    naming the keys when tensors are missing, unused or of the wrong shape."""
    layout = layout or detect_layout(state_dict)
    if layout not in LAYOUTS:
        raise ConversionError(f"layout {layout!r}; expected one of {LAYOUTS}")
    arch = architecture(state_dict, layout)
    _check_architecture(arch, spec, layout)
    naming, prefix = _naming(state_dict, layout)
    key_for = _key_function(naming, prefix)
    pooler = [k for k in state_dict if layout == "huggingface" and k in _POOLER]
    reader = StateDictReader(
        {k: v for k, v in state_dict.items() if k not in pooler}, f"The {layout} state dict"
    )
    if pooler:
        reader.note("pooler.dense: dropped (ViTModel's pooler; classification doesn't use it)")
    params = reader.tree(
        vit.init_params(spec, seed),
        key_for,
        transform=_transform(reader, spec, naming, key_for),
        head=("head",),
        stem=("patch_embed", "kernel"),
        num_classes=spec.num_classes,
        head_kind=spec.head,
    )
    return params, {}, reader.finish(vit.title(spec))
