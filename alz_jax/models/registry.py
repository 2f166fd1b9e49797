"""The model families, one interface: build, initialise, count, FLOPs, layer ids for layer-wise
learning-rate decay, the presets of `optim.trainable`, and the names `model.name` accepts.

Each family's module (convnext, vit, resnet, efficientnet) defines a frozen spec dataclass with
the common fields (in_chans, num_classes, drop_path_rate, head_dropout, dtype, param_dtype) and
its own; this module dispatches on the spec's type, so the training core never names a family.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from alz_jax.host.errors import UserError
from alz_jax.models import convnext, efficientnet, resnet, vit

ModelSpec = Any  # one of the families' spec dataclasses


@dataclasses.dataclass(frozen=True)
class Family:
    """How the training core handles one model family."""

    name: str
    spec_type: type
    module: Callable[..., nnx.Module]  # module(spec, rngs=...) -> the NNX model
    layer_ids: Callable[[dict], tuple[dict, int]]
    # spec -> {optim.trainable preset: regex over 'a/b/c' parameter paths} (head, last_stage)
    presets: Callable[[Any], dict[str, str]]
    forward_flops: Callable[[Any, int], float]  # (spec, resolution) -> FLOPs per image
    title: Callable[[Any], str]  # 'ConvNeXt atto', 'ViT-B/16', ...
    spec_for: Callable[..., Any]  # (variant, **fields) -> spec
    # Grad-CAM: (model, normalised images) -> (the map it weighs (B, h, w, C), float32; the
    # function from that map to the logits).
    gradcam_target: Callable


def _pooled_map_target(head: Callable) -> Callable:
    """Grad-CAM's target of a CNN: the feature map its head pools, and `head(net, map)`."""

    def target(net, x):
        return net.feature_map(x).astype(jnp.float32), lambda f: head(net, f)

    return target


def _convnext_title(spec: convnext.ConvNeXtSpec) -> str:
    size = next((n for n, v in convnext.SIZES.items() if v == (spec.depths, spec.dims)), None)
    return f"ConvNeXt {size}" if size else f"ConvNeXt depths {spec.depths}, dims {spec.dims}"


FAMILIES: dict[str, Family] = {
    "convnext": Family(
        name="convnext",
        spec_type=convnext.ConvNeXtSpec,
        module=convnext.ConvNeXt,
        layer_ids=convnext.layer_ids,
        presets=convnext.trainable_presets,
        forward_flops=convnext.forward_flops_per_image,
        title=_convnext_title,
        spec_for=lambda variant, **fields: convnext.ConvNeXtSpec(
            *convnext.SIZES[variant], **fields
        ),
        gradcam_target=_pooled_map_target(lambda net, f: net.head(f)),
    ),
    **{
        module.__name__.rsplit(".", 1)[-1]: Family(
            name=module.__name__.rsplit(".", 1)[-1],
            spec_type=spec_type,
            module=model_type,
            layer_ids=module.layer_ids,
            presets=module.trainable_presets,
            forward_flops=module.forward_flops_per_image,
            title=module.title,
            spec_for=module.spec_for,
            gradcam_target=gradcam_target,
        )
        for module, spec_type, model_type, gradcam_target in (
            (vit, vit.ViTSpec, vit.ViT, lambda net, x: net.gradcam_target(x)),
            (
                resnet,
                resnet.ResNetSpec,
                resnet.ResNet,
                _pooled_map_target(lambda net, f: net.head(f)),
            ),
            (
                efficientnet,
                efficientnet.EfficientNetSpec,
                efficientnet.EfficientNet,
                _pooled_map_target(lambda net, f: net.classifier(jnp.mean(f, axis=(1, 2)))),
            ),
        )
    },
}

# model.name (and the conversion functions' names) -> (family, variant): the project's short
# names and timm's.
NAMES: dict[str, tuple[str, str]] = {
    **{f"convnext_{size}": ("convnext", size) for size in convnext.SIZES},
    "vit_ti16": ("vit", "vit_ti16"),
    "vit_s16": ("vit", "vit_s16"),
    "vit_b16": ("vit", "vit_b16"),
    "vit_tiny_patch16_224": ("vit", "vit_ti16"),
    "vit_small_patch16_224": ("vit", "vit_s16"),
    "vit_base_patch16_224": ("vit", "vit_b16"),
    "resnet50": ("resnet", "resnet50"),
    "efficientnet_b0": ("efficientnet", "efficientnet_b0"),
}


def spec_from_name(name: str, overrides: dict | None = None, **fields) -> ModelSpec:
    """The spec of a named model; `fields` are the config's common fields (in_chans,
    num_classes, drop_path_rate, head_dropout, dtype, param_dtype, depthwise, image_size), each
    passed to the families whose spec has it; `overrides` (config.model.arch) replace
    architecture fields of the variant (e.g. a small ResNet's depths and widths), each of which
    must exist."""
    if name not in NAMES:
        raise UserError(f"config.model.name = {name!r}: expected one of {sorted(NAMES)}.")
    family_name, variant = NAMES[name]
    fam = FAMILIES[family_name]
    known = {f.name for f in dataclasses.fields(fam.spec_type)}
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise UserError(
            f"config.model.arch has {unknown}, which a {family_name} spec does not have; its "
            f"fields are {sorted(known)}."
        )
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items()}
    return fam.spec_for(variant, **{k: v for k, v in fields.items() if k in known}, **arch)


def family(spec: ModelSpec) -> Family:
    """The Family of a spec."""
    for fam in FAMILIES.values():
        if isinstance(spec, fam.spec_type):
            return fam
    raise TypeError(f"not a model spec: {type(spec).__name__}")


def build(spec: ModelSpec, seed: int = 0) -> nnx.Module:
    """The NNX model of `spec`, initialised with `seed`."""
    return family(spec).module(spec, rngs=nnx.Rngs(seed))


def abstract(spec: ModelSpec) -> nnx.Module:
    """The model's structure with shapes only (no parameter memory)."""
    return nnx.eval_shape(lambda: build(spec, 0))


def init_variables(spec: ModelSpec, seed: int) -> tuple[dict, dict]:
    """(params, batch_stats) of a fresh model as pure dicts; batch_stats is {} for a family
    without BatchNorm."""
    model = build(spec, seed)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return params, stats


def has_batch_stats(spec: ModelSpec) -> bool:
    """Whether the model keeps running statistics (BatchNorm)."""
    return bool(jax.tree.leaves(nnx.state(abstract(spec), nnx.BatchStat)))


def count_params(spec: ModelSpec) -> int:
    """Trainable scalars of the model (running statistics not counted)."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(abstract(spec), nnx.Param)))


def forward_flops_per_image(spec: ModelSpec, resolution: int) -> float:
    """FLOPs (2 per multiply-add) of one image's forward pass at `resolution`."""
    return float(family(spec).forward_flops(spec, resolution))


def title(spec: ModelSpec) -> str:
    """A human name of the model ('ViT-B/16', 'ResNet-50', 'ConvNeXt atto')."""
    return family(spec).title(spec)


def gradcam_target(spec: ModelSpec) -> Callable:
    """Grad-CAM's split of a model: (net, normalised images) -> (the activation map it weighs
    (B, h, w, C), float32; the function from that map to the logits). CNNs: the feature map their
    head pools; ViT: its last block's first LayerNorm output on the patch tokens."""
    return family(spec).gradcam_target


def layer_ids(spec: ModelSpec, params: dict) -> tuple[dict, int]:
    """(tree of each parameter's layer index from the input, number of layers) for layer-wise
    learning-rate decay; the head is the last layer."""
    return family(spec).layer_ids(params)


TRAINABLE_PRESETS = ("all", "head", "last_stage")


def trainable_pattern(spec: ModelSpec, value: str) -> str:
    """The regex of `optim.trainable` for this model: a preset (all, head, last_stage) or a
    regex over '/'-joined parameter paths (e.g. 'stages/3/.*|head/.*')."""
    presets = family(spec).presets(spec)
    if value == "all":
        return ".*"
    if value in presets:
        return presets[value]
    try:
        re.compile(value)
    except re.error as e:
        raise UserError(
            f"config.optim.trainable = {value!r} is neither a preset "
            f"({', '.join(TRAINABLE_PRESETS)}) nor a valid regular expression: {e}"
        ) from e
    return value
