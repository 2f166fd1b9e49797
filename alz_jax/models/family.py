"""The model-family contract: what a family gives the training core (`Family`), and the spec
base every family's spec extends (`ModelSpec`, the fields the config sets for any model).

A family is registered once (`registry.register`); from then on `model.name` accepts its
variant names, and building, initialising, counting, FLOPs, layer-wise decay, the
`optim.trainable` presets, Grad-CAM, titles, export metadata and weight import all go through
its `Family` record. Nothing outside a family's own modules names it.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from alz_jax.host.errors import UserError
from alz_jax.models import heads

COMPUTE_DTYPES = ("float32", "bfloat16")


# Family field -> the function a family module defines for it (Family.of_module).
MODULE_FUNCTIONS = {
    "spec_for": "spec_for",
    "layer_ids": "layer_ids",
    "presets": "trainable_presets",
    "forward_flops": "forward_flops_per_image",
    "title": "title",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """The fields every family's spec has; a family's spec subclasses this (frozen) and puts
    `*self.common_checks()` into its own `check_fields` list."""

    in_chans: int = 1
    num_classes: int = 2
    drop_path_rate: float = 0.0
    head_dropout: float = 0.0  # timm's drop_rate: dropout of the pooled features in training
    # A CNN head pools its last feature map with learned spatial attention instead of the mean
    # (layers.SpatialAttentionPool); a ViT, whose head reads its class token, refuses it.
    spatial_attention: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    # The classifier and its loss (models/heads.py): softmax, or an ordinal head (coral, corn).
    head: str = "softmax"

    @property
    def num_outputs(self) -> int:
        """The classifier's outputs: num_classes for softmax, num_classes - 1 for coral/corn."""
        return heads.get(self.head).num_outputs(self.num_classes)

    def head_layer(self, in_features: int, rngs: nnx.Rngs, **init) -> nnx.Module:
        """The classifier of `model.head` on embeddings of `in_features` (`init`: the family's
        kernel_init, bias_init, dtype and param_dtype)."""
        return heads.get(self.head).layer(in_features, self.num_classes, rngs=rngs, **init)

    def head_macs(self, in_features: int) -> int:
        """Multiply-adds of the classifier per embedding (the FLOPs count's head term)."""
        return heads.get(self.head).macs(in_features, self.num_classes)

    def common_checks(self) -> list[tuple]:
        """check_fields entries of the common fields."""
        return [
            ("in_chans", self.in_chans, self.in_chans >= 1, ">= 1"),
            ("num_classes", self.num_classes, self.num_classes >= 1, ">= 1"),
            ("drop_path_rate", self.drop_path_rate, 0.0 <= self.drop_path_rate < 1.0,
             "in [0, 1)"),
            ("head_dropout", self.head_dropout, 0.0 <= self.head_dropout < 1.0, "in [0, 1)"),
            ("spatial_attention", self.spatial_attention,
             isinstance(self.spatial_attention, bool), "True or False"),
            ("dtype", self.dtype, self.dtype in COMPUTE_DTYPES, "|".join(COMPUTE_DTYPES)),
            ("param_dtype", self.param_dtype, self.param_dtype == "float32",
             "float32 (parameters and optimizer state stay float32; config.dtype sets compute)"),
            ("head", self.head, self.head in heads.HEADS, "|".join(heads.HEADS)),
            ("head", self.head, not heads.is_ordinal(self.head) or self.num_classes >= 3,
             f"softmax with num_classes = {self.num_classes} (ordinal heads need at least three "
             "ordered classes; two classes are the NC/AD path: model.head=softmax)"),
        ]  # fmt: skip


def stage_checks(spec, widths: str, unit: str, mismatch: str) -> list[tuple]:
    """check_fields entries of a staged spec's `depths` and its per-stage `widths` field (each
    >= 1, `unit` saying what a width counts); a different number of stages, or none, is refused
    first with `mismatch`."""
    depths, values = spec.depths, getattr(spec, widths)
    if len(depths) != len(values) or not depths:
        raise UserError(mismatch)
    return [
        ("depths", depths, all(d >= 1 for d in depths), "each >= 1 (blocks per stage)"),
        (widths, values, all(w >= 1 for w in values), f"each >= 1 ({unit} per stage)"),
    ]


# (state_dict, spec, layout or None, seed) -> (params, batch_stats, notes)
WeightImporter = Callable[[Mapping[str, Any], Any, "str | None", int], tuple[dict, dict, list]]


@dataclasses.dataclass(frozen=True)
class Family:
    """How the training core handles one model family; `registry.register` makes it known."""

    name: str
    spec_type: type[ModelSpec]
    module: Callable[..., nnx.Module]  # module(spec, rngs=...) -> the NNX model
    # model.name -> the variant `spec_for` takes (the project's short names and timm's).
    names: Mapping[str, str]
    spec_for: Callable[..., Any]  # (variant, **fields) -> spec
    layer_ids: Callable[[dict], tuple[dict, int]]  # params -> (layer index tree, layers)
    # spec -> {optim.trainable preset: regex over 'a/b/c' parameter paths} (head, last_stage)
    presets: Callable[[Any], dict[str, str]]
    forward_flops: Callable[[Any, int], float]  # (spec, resolution) -> FLOPs per image
    title: Callable[[Any], str]  # 'ConvNeXt atto', 'ViT-B/16', ...
    # Grad-CAM: (model, normalised images) -> (the map it weighs (B, h, w, C), float32; the
    # function from that map to the logits).
    gradcam_target: Callable
    # config.model fields of a small variant for the tests' 32-px images (name, arch, ...).
    test_config: Mapping[str, Any]
    # Weight import: the key layouts its PyTorch weights come in, and the importer.
    layouts: tuple[str, ...] = ()
    import_weights: WeightImporter | None = None
    # Optional hooks. spec_from_config(config.model, **fields) -> spec, for model.name equal to
    # the family's name (and for an empty name when `default`).
    spec_from_config: Callable[..., Any] | None = None
    # The family of an empty model.name, and of run records and exports that name no family
    # (written before there were others).
    default: bool = False
    hparams_label: Callable[[Any], str] | None = None  # TensorBoard's model column; else title
    export_fields: Callable[[Any], dict] | None = None  # extra keys of the export metadata
    # Short names the weight-import functions also take, and how to call them in messages.
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    aliases_are: str = ""
    # (spec, layout) -> the spec a named model takes for weights of that layout.
    spec_for_layout: Callable[[Any, str], Any] | None = None
    # (spec, params) -> layer_ids' answer, for a family whose numbering depends on its spec (a
    # scan model's, on its encoder's family); `layer_ids` is then not called.
    spec_layer_ids: Callable[[Any, dict], tuple[dict, int]] | None = None

    @classmethod
    def of_module(cls, module_name: str, **fields) -> Family:
        """The Family of a family module that defines the contract's functions under their
        names (MODULE_FUNCTIONS: spec_for, layer_ids, trainable_presets,
        forward_flops_per_image, title); `fields` give the rest."""
        module = sys.modules[module_name]
        missing = [f for f in MODULE_FUNCTIONS.values() if not hasattr(module, f)]
        if missing:
            raise TypeError(f"family module {module_name} does not define {missing}")
        return cls(**{k: getattr(module, f) for k, f in MODULE_FUNCTIONS.items()}, **fields)
