"""Bottleneck ResNet weights from PyTorch (torchvision's `resnet50`, timm's `resnet50`) into NNX.

torchvision and timm name a plain-stem ResNet's tensors identically: conv1, bn1,
layer{1..4}.{j}.conv1/bn1/conv2/bn2/conv3/bn3/downsample.0/downsample.1, fc. Both layout names are
accepted and read the same way; `detect_layout` cannot tell them apart and says 'torchvision'.
BatchNorm weight, bias, running_mean and running_var become the project's scale, bias and the
BatchStat mean and var; `num_batches_tracked` is ignored. Convolutions [O, I, kh, kw] become
[kh, kw, I, O] and the classifier [out, in] becomes [in, out] (import_helpers.to_project_layout).
A 3-channel stem becomes the 1-channel stem of grayscale slices by summing its kernel over the
input channels (other channel counts, 2.5D input: timm's adapt_input_conv rule); a classifier
for another class count (or none), and a spatial attention pooling, are initialised as a fresh
model's. Deep-stem variants (resnet50d: conv1.0, conv1.1, ...) and BasicBlock ResNets (ResNet-18,
-34) are refused by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from alz_jax.models import resnet
from alz_jax.models.import_helpers import ConversionError, StateDictReader, torch_leaf

LAYOUTS: tuple[str, ...] = ("torchvision", "timm")
_IGNORED = (r".*num_batches_tracked",)
_BLOCK_CONV1 = re.compile(r"layer(\d+)\.(\d+)\.conv1\.weight")


def detect_layout(state_dict: Mapping[str, np.ndarray]) -> str:
    """'torchvision' for a plain-stem ResNet state dict (timm's resnet50 has the same keys, so
    'timm' files are reported as 'torchvision'); ConversionError when it is not a ResNet."""
    if "conv1.weight" in state_dict and "layer1.0.conv1.weight" in state_dict:
        return "torchvision"
    if "conv1.0.weight" in state_dict and "layer1.0.conv1.weight" in state_dict:
        raise ConversionError(
            "A deep-stem ResNet (conv1.0.weight: timm's resnet50c/d/s style) is not supported; "
            "only the 7x7 single-convolution stem of torchvision's and timm's resnet50."
        )
    raise ConversionError(
        "Not a ResNet state dict in torchvision or timm layout: conv1.weight and "
        f"layer1.0.conv1.weight are not both present (first keys: {sorted(state_dict)[:5]})."
    )


def _check_layout(state_dict: Mapping[str, np.ndarray], layout: str | None) -> str:
    detected = detect_layout(state_dict)
    if layout is None:
        return detected
    if layout not in LAYOUTS:
        raise ConversionError(f"layout {layout!r}; expected one of {LAYOUTS}")
    return layout


def architecture(state_dict: Mapping[str, np.ndarray]) -> tuple[tuple, tuple, int]:
    """(depths, widths, stem_width) of the bottleneck ResNet a state dict holds."""
    blocks: dict[int, dict[int, int]] = {}
    for key, value in state_dict.items():
        match = _BLOCK_CONV1.fullmatch(key)
        if match:
            blocks.setdefault(int(match[1]), {})[int(match[2])] = int(np.shape(value)[0])
    stages = sorted(blocks)
    if stages != list(range(1, len(stages) + 1)) or any(
        sorted(blocks[s]) != list(range(len(blocks[s]))) for s in stages
    ):
        raise ConversionError(
            f"The ResNet state dict's blocks are not numbered layer1.0 onwards without gaps: "
            f"{ {s: sorted(b) for s, b in blocks.items()} }"
        )
    if "layer1.0.conv3.weight" not in state_dict:
        raise ConversionError(
            "The state dict holds a BasicBlock ResNet (no layer1.0.conv3.weight: ResNet-18/34); "
            "only bottleneck ResNets (ResNet-50 and up) are supported."
        )
    outputs = np.shape(state_dict["layer1.0.conv3.weight"])[0]
    if outputs != resnet.EXPANSION * blocks[1][0]:
        raise ConversionError(
            f"layer1.0.conv3.weight has {outputs} outputs for a bottleneck width of "
            f"{blocks[1][0]}: not a ResNet with expansion {resnet.EXPANSION} (a wide ResNet?)."
        )
    stem = np.shape(state_dict["conv1.weight"])
    if len(stem) != 4 or tuple(stem[2:]) != (7, 7):
        raise ConversionError(
            f"conv1.weight has shape {tuple(stem)}; a ResNet stem is a 7x7 convolution "
            "[out, in, 7, 7]."
        )
    depths = tuple(len(blocks[s]) for s in stages)
    widths = tuple(blocks[s][0] for s in stages)
    return depths, widths, int(stem[0])


def _describe(depths: tuple, widths: tuple, stem_width: int) -> str:
    spec = resnet.ResNetSpec(tuple(depths), tuple(widths), stem_width=stem_width)
    return resnet.title(spec)


def torch_key(path: tuple) -> str:
    """The PyTorch key of a project parameter or statistic path, e.g. ('stages', 1, 0,
    'downsample', 'bn', 'mean') -> 'layer2.0.downsample.1.running_mean'."""
    leaf = torch_leaf(path[-1])
    if path[0] == "stem":
        return f"{ {'conv': 'conv1', 'bn': 'bn1'}[path[1]] }.{leaf}"
    if path[0] == "head":
        return f"fc.{leaf}"
    stage, block, module = path[1], path[2], path[3]
    if module == "downsample":
        module = f"downsample.{ {'conv': 0, 'bn': 1}[path[4]] }"
    return f"layer{int(stage) + 1}.{int(block)}.{module}.{leaf}"


def variables_from_state_dict(
    state_dict: Mapping[str, np.ndarray], spec: resnet.ResNetSpec, layout: str | None = None,
    seed: int = 0,
) -> tuple[dict, dict, list[str]]:  # fmt: skip
    """(params, batch_stats, notes) of the project's ResNet from a PyTorch state dict: pure
    dicts of float32 arrays shaped as the model's `nnx.Param` and `nnx.BatchStat` states, and
    the adaptations made (stem summed to one channel, classifier initialised with `seed`).

    Raises ConversionError naming both architectures when the file holds another ResNet, and
    naming the keys when a tensor is missing, unused or of the wrong shape."""
    layout = _check_layout(state_dict, layout)
    have = architecture(state_dict)
    want = (tuple(spec.depths), tuple(spec.widths), spec.stem_width)
    if have != want:
        raise ConversionError(
            f"The {layout} state dict holds a {_describe(*have)}; the model is "
            f"{resnet.title(spec)}. Set config.model.name (or config.model.arch's depths, widths "
            "and stem_width) to the checkpoint's architecture."
        )
    reader = StateDictReader(state_dict, f"The {layout} state dict", ignore=_IGNORED)
    params, stats = reader.variables(
        resnet.ResNet(spec, rngs=nnx.Rngs(seed)), torch_key, head=("head", "fc"),
        stem=("stem", "conv", "kernel"), num_classes=spec.num_classes,
        fresh=("head", "attention"),
        head_kind=spec.head,
    )  # fmt: skip
    notes = reader.finish(resnet.title(spec))
    return params, stats, notes


def spec_from_state_dict(
    state_dict: Mapping[str, np.ndarray], layout: str | None = None, **common
) -> resnet.ResNetSpec:
    """The ResNetSpec of the architecture a state dict holds (depths, widths, stem width from
    tensor shapes); `common` sets the other fields (in_chans, num_classes, ...: the spec's
    defaults otherwise, the project's 1-channel binary classifier, not the file's)."""
    _check_layout(state_dict, layout)
    depths, widths, stem_width = architecture(state_dict)
    return resnet.ResNetSpec(depths, widths, stem_width=stem_width, **common)
