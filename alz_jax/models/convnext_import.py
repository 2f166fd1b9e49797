"""ConvNeXt's PyTorch weights: torchvision's, timm's and the official FB release's key layouts
(docs/reference.md), read into the project's parameter tree.

Each tensor is moved to the project's NHWC layout: convolutions [O, I/g, kh, kw] -> [kh, kw, I/g,
O], linears [out, in] -> [in, out], LayerNorm weight -> scale, layer scale [C, 1, 1] -> [C]. A
3-channel stem becomes the 1-channel stem of grayscale slices by summing its kernel over the
input axis (a grayscale image repeated over RGB gives the same activations), and the stem of
other channel counts (2.5D input) by timm's adapt_input_conv rule. A head whose class
count differs from the spec's (1000 ImageNet classes) is re-initialised as a fresh model's would
be; a spatial attention pooling (model.spatial_attention) keeps its fresh initialisation. Every
other tensor must be present with the expected shape, and every tensor in the file must
be used: a mismatch is an error naming the keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from alz_jax.models import convnext
from alz_jax.models.import_helpers import ConversionError, StateDictReader, torch_leaf

LAYOUTS = ("torchvision", "timm", "fb")


def detect_layout(state_dict: Mapping[str, np.ndarray]) -> str:
    """'torchvision', 'timm' or 'fb', from the stem's key."""
    for layout, key in (("torchvision", "features.0.0.weight"), ("timm", "stem.0.weight"),
                        ("fb", "downsample_layers.0.0.weight")):  # fmt: skip
        if key in state_dict:
            return layout
    raise ConversionError(
        "Not a ConvNeXt state dict in torchvision, timm or FB layout: none of "
        "features.0.0.weight, stem.0.weight, downsample_layers.0.0.weight is present (first "
        f"keys: {sorted(state_dict)[:5]})."
    )


# ---- Key layouts: the PyTorch prefix of each of the project's modules. ----


_BLOCK_PARTS = ("dwconv", "norm", "pwconv1", "pwconv2", "gamma")
# Per layout: stem (conv, norm); downsample i (norm, conv); block prefix; block parts in the order
# of _BLOCK_PARTS; head (norm, fc).
_LAYOUT_NAMES = {
    "torchvision": (
        ("features.0.0", "features.0.1"),
        lambda i: (f"features.{2 * i}.0", f"features.{2 * i}.1"),
        lambda s, j: f"features.{2 * s + 1}.{j}",
        ("block.0", "block.2", "block.3", "block.5", "layer_scale"),
        ("classifier.0", "classifier.2"),
    ),
    "timm": (
        ("stem.0", "stem.1"),
        lambda i: (f"stages.{i}.downsample.0", f"stages.{i}.downsample.1"),
        lambda s, j: f"stages.{s}.blocks.{j}",
        ("conv_dw", "norm", "mlp.fc1", "mlp.fc2", "gamma"),
        ("head.norm", "head.fc"),
    ),
    "fb": (
        ("downsample_layers.0.0", "downsample_layers.0.1"),
        lambda i: (f"downsample_layers.{i}.0", f"downsample_layers.{i}.1"),
        lambda s, j: f"stages.{s}.{j}",
        _BLOCK_PARTS,
        ("norm", "head"),
    ),
}


def _module_prefixes(layout: str, depths: tuple[int, ...]) -> dict[tuple, str]:
    """(project module path) -> PyTorch module prefix, for every module with parameters (and
    the full key of each block's layer scale)."""
    if layout not in _LAYOUT_NAMES:
        raise ValueError(f"layout {layout!r}; expected one of {LAYOUTS}")
    stem, downsample, block, parts, head = _LAYOUT_NAMES[layout]
    out = {("stem", "conv"): stem[0], ("stem", "norm"): stem[1]}
    for i in range(1, len(depths)):
        out[("downsamples", i - 1, "norm")], out[("downsamples", i - 1, "conv")] = downsample(i)
    for s, depth in enumerate(depths):
        for j in range(depth):
            for name, sub in zip(_BLOCK_PARTS, parts, strict=True):
                out[("stages", s, j, name)] = f"{block(s, j)}.{sub}"
    out[("head", "norm")], out[("head", "fc")] = head
    return out


_BLOCK_BIAS = {
    "torchvision": r"features\.(\d+)\.(\d+)\.block\.0\.bias",
    "timm": r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.bias",
    "fb": r"stages\.(\d+)\.(\d+)\.dwconv\.bias",
}


def architecture(state_dict: Mapping[str, np.ndarray], layout: str) -> tuple[tuple, tuple]:
    """(depths, dims) of the ConvNeXt a state dict holds, read from its depthwise biases."""
    blocks: dict[int, dict[int, int]] = {}
    for key, value in state_dict.items():
        match = re.fullmatch(_BLOCK_BIAS[layout], key)
        if match:
            stage, block = int(match[1]), int(match[2])
            if layout == "torchvision":
                stage = (stage - 1) // 2
            blocks.setdefault(stage, {})[block] = int(value.shape[0])
    if not blocks:
        raise ConversionError(f"No ConvNeXt blocks found in this {layout}-layout state dict.")
    depths = tuple(len(blocks[s]) for s in sorted(blocks))
    dims = tuple(blocks[s][0] for s in sorted(blocks))
    return depths, dims


# ---- Conversion. ----


def _layer_scale(path: tuple, value: np.ndarray) -> np.ndarray | None:
    """torchvision and FB keep a block's layer scale as [C, 1, 1] or [C]: the project's is [C]."""
    return np.asarray(value, np.float32).reshape(-1) if path[-1] == "gamma" else None


def params_from_state_dict(
    state_dict: Mapping[str, np.ndarray],
    spec: convnext.ConvNeXtSpec,
    layout: str | None = None,
    seed: int = 0,
) -> tuple[dict, list[str]]:
    """The project's parameter tree (a pure dict of float32 arrays, as `convnext.init_params`) from
    a PyTorch state dict, and the list of adaptations made (stem summed, head re-initialised).

    Raises ConversionError naming the keys when the state dict holds a different architecture,
    lacks a tensor, or has tensors this model would not use.
    """
    layout = layout or detect_layout(state_dict)
    if layout not in LAYOUTS:
        raise ConversionError(f"layout {layout!r}; expected one of {LAYOUTS}")
    depths, dims = architecture(state_dict, layout)
    if (depths, dims) != (tuple(spec.depths), tuple(spec.dims)):
        have = convnext.size_name(depths, dims) or f"depths {depths}, dims {dims}"
        want = convnext.size_name(spec.depths, spec.dims) or f"{spec.depths}, {spec.dims}"
        raise ConversionError(
            f"The {layout} state dict holds a ConvNeXt {have}; the model is ConvNeXt {want}. "
            "Set config.model.size (or depths and dims) to the checkpoint's architecture."
        )
    prefixes = _module_prefixes(layout, depths)

    def key_for(path: tuple) -> str:
        if path[-1] == "gamma":  # the block's layer scale, a parameter of the block itself
            return prefixes[path]
        return f"{prefixes[path[:-1]]}.{torch_leaf(path[-1])}"

    reader = StateDictReader(state_dict, f"The {layout} state dict")
    params = reader.tree(
        convnext.init_params(spec, seed), key_for, transform=_layer_scale,
        head=("head", "fc"), stem=("stem", "conv", "kernel"), num_classes=spec.num_classes,
        fresh=("head", "attention"),
        head_kind=spec.head,
    )  # fmt: skip
    return params, reader.finish("ConvNeXt")


def variables_from_state_dict(
    state_dict: Mapping[str, np.ndarray], spec: convnext.ConvNeXtSpec, layout: str | None = None,
    seed: int = 0,
) -> tuple[dict, dict, list[str]]:  # fmt: skip
    """(params, batch_stats = {}, notes) of a ConvNeXt: the family's weight importer."""
    params, notes = params_from_state_dict(state_dict, spec, layout, seed)
    return params, {}, notes
