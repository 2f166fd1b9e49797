"""The registered model families, one interface: build, initialise, count, FLOPs, layer ids for
layer-wise learning-rate decay, the presets of `optim.trainable`, Grad-CAM's target, titles,
and the names `model.name` accepts.

Each family describes itself in a `Family` record (models/family.py: its spec type, which
extends `ModelSpec`, the shared fields; its hooks; its weight importer from models/*_import.py)
and is made known by `register`; this module dispatches on the spec's type, so the training
core never names a family.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import jax
from flax import nnx

from alz_jax.host.errors import UserError
from alz_jax.models import (
    convnext,
    convnext_import,
    efficientnet,
    efficientnet_import,
    resnet,
    resnet_import,
    scan,
    simple_cnn,
    vit,
    vit_import,
)
from alz_jax.models.family import Family, ModelSpec

__all__ = ["FAMILIES", "NAMES", "Family", "ModelSpec", "register", "unregister"]

FAMILIES: dict[str, Family] = {}
# model.name (and the weight-import functions' names) -> (family, variant): the project's short
# names and timm's, of every registered family.
NAMES: dict[str, tuple[str, str]] = {}


def register(fam: Family) -> Family:
    """Makes a family known: its specs build, train, evaluate and export, and `model.name`
    accepts its names. A name or spec type already registered is an error."""
    taken = sorted(set(fam.names) & set(NAMES))
    # `family(spec)` goes by isinstance: no spec type may be another family's.
    taken += [f.name for f in FAMILIES.values() if issubclass(fam.spec_type, f.spec_type)
              or issubclass(f.spec_type, fam.spec_type)]  # fmt: skip
    if fam.name in FAMILIES or taken:
        raise ValueError(f"family {fam.name!r}: already registered ({taken or fam.name})")
    if fam.default and any(f.default for f in FAMILIES.values()):
        raise ValueError(f"family {fam.name!r}: there is a default family already")
    FAMILIES[fam.name] = fam
    NAMES.update({name: (fam.name, variant) for name, variant in fam.names.items()})
    return fam


def unregister(name: str) -> None:
    """Forgets a registered family (tests that register a toy one)."""
    fam = FAMILIES.pop(name)
    for key in fam.names:
        del NAMES[key]


for _model, _weights in (
    (convnext, convnext_import),
    (vit, vit_import),
    (resnet, resnet_import),
    (efficientnet, efficientnet_import),
):
    register(dataclasses.replace(_model.FAMILY, layouts=_weights.LAYOUTS,
                                 import_weights=_weights.variables_from_state_dict))  # fmt: skip
register(simple_cnn.FAMILY)  # trains from scratch: no weight layouts, no importer


def default_family() -> Family:
    """The family of an empty model.name, and of records and exports that name none."""
    return next(fam for fam in FAMILIES.values() if fam.default)


def _known_fields(fam: Family, fields: dict) -> dict:
    known = {f.name for f in dataclasses.fields(fam.spec_type)}
    return {k: v for k, v in fields.items() if k in known}


def spec_from_name(name: str, overrides: dict | None = None, **fields) -> ModelSpec:
    """The spec of a named model; `fields` are the config's common fields (in_chans,
    num_classes, drop_path_rate, head_dropout, spatial_attention, dtype, param_dtype,
    depthwise, image_size), each
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
    return fam.spec_for(variant, **_known_fields(fam, fields), **arch)


def config_family(model_config) -> Family:
    """The family a `config.model` section picks: its model.name's, or the family named by it
    (an empty name: the default family) when that family reads the section itself."""
    name = model_config.get("name") or default_family().name
    fam = FAMILIES.get(name)
    if fam is not None and fam.spec_from_config is not None:
        return fam
    if name not in NAMES:
        raise UserError(f"config.model.name = {name!r}: expected one of {sorted(NAMES)}.")
    return FAMILIES[NAMES[name][0]]


def spec_from_config(model_config, **fields) -> ModelSpec:
    """The spec of a `config.model` section: model.name is a registered name (with
    model.arch overrides), or a family's own name (or empty: the default family's) that the
    family resolves from the section itself (spec_from_config hook); `fields` as in
    `spec_from_name`. `model.head` (softmax when absent) sets every family's classifier head
    unless `fields` set it."""
    fields = {"head": model_config.get("head", "softmax"), **fields}
    fam = config_family(model_config)
    if fam.spec_from_config is not None and (model_config.get("name") or fam.name) == fam.name:
        return fam.spec_from_config(model_config, **_known_fields(fam, fields))
    return spec_from_name(model_config.name, dict(model_config.get("arch", {})), **fields)


def family_named(name: str | None) -> Family:
    """A registered family by name; None (records and exports that name none): the default."""
    return FAMILIES[name] if name else default_family()


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


def hparams_label(spec: ModelSpec) -> str:
    """TensorBoard's HParams model column: the family's label (which names the family, as a
    title does), else its title."""
    fam = family(spec)
    return (fam.hparams_label or fam.title)(spec)


def export_fields(spec: ModelSpec) -> dict:
    """The family's own keys of the export metadata's model description (they update the
    generic ones: architecture, family, spec)."""
    fam = family(spec)
    return fam.export_fields(spec) if fam.export_fields else {}


def record_family(spec: ModelSpec) -> str | None:
    """The family name a run's identity records: None for the default family, whose runs were
    recorded before there were others (they keep their identity)."""
    fam = family(spec)
    return None if fam.default else fam.name


def gradcam_target(spec: ModelSpec) -> Callable:
    """Grad-CAM's split of a model: (net, normalised images) -> (the activation map it weighs
    (B, h, w, C), float32; the function from that map to the logits). CNNs: the feature map their
    head pools; ViT: its last block's first LayerNorm output on the patch tokens."""
    return family(spec).gradcam_target


def layer_ids(spec: ModelSpec, params: dict) -> tuple[dict, int]:
    """(tree of each parameter's layer index from the input, number of layers) for layer-wise
    learning-rate decay; the head is the last layer."""
    fam = family(spec)
    if fam.spec_layer_ids is not None:
        return fam.spec_layer_ids(spec, params)
    return fam.layer_ids(params)


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


# Scan models (models/scan.py): any family above as the encoder of a bag of slices. No
# model.name selects them; every hook delegates to the encoder's family.
_ALL_LAYOUTS = tuple(dict.fromkeys(lay for fam in FAMILIES.values() for lay in fam.layouts))
register(scan.family_record(family, _ALL_LAYOUTS))
