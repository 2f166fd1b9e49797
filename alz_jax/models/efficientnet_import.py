"""timm EfficientNet weights (`efficientnet_b0` and its scaled or custom-stage relatives) into
the project's NNX EfficientNet.

The project's module names mirror timm's (conv_stem, bn1, blocks.{stage}.{block}.*, conv_head,
bn2, classifier), so each parameter's key is its path joined with '.' and the leaf renamed
(kernel/scale -> weight, mean/var -> running_mean/running_var); BatchNorm's
num_batches_tracked is ignored. A spatial attention pooling (model.spatial_attention), which
timm's files don't have, keeps its fresh initialisation. The architecture is read from the
tensor shapes, except the stages' strides, which no tensor holds: a 7-stage file gets B0's,
others need them given.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np
from flax import nnx

from alz_jax.models import efficientnet, import_helpers
from alz_jax.models.efficientnet import EfficientNetSpec, StageDef
from alz_jax.models.import_helpers import ConversionError

LAYOUTS: tuple[str, ...] = ("timm",)
_IGNORE = (r".*\.num_batches_tracked",)
_B0_STRIDES = tuple(efficientnet.parse_stage(s).stride for s in efficientnet.B0_STAGES)
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.")


def detect_layout(state_dict: Mapping[str, np.ndarray]) -> str:
    """'timm' for a timm EfficientNet state dict (conv_stem and blocks.* keys)."""
    if "conv_stem.weight" in state_dict and any(_BLOCK_KEY.match(k) for k in state_dict):
        return "timm"
    raise ConversionError(
        "Not an EfficientNet state dict (no conv_stem.weight and blocks.* keys of timm's "
        f"layout); its first keys: {import_helpers.listed(sorted(state_dict), 5)}"
    )


def _checked_layout(state_dict: Mapping[str, np.ndarray], layout: str | None) -> str:
    layout = layout or detect_layout(state_dict)
    if layout not in LAYOUTS:
        raise ConversionError(f"EfficientNet layout {layout!r}; expected one of {LAYOUTS}")
    detect_layout(state_dict)  # a given layout must still be an EfficientNet
    return layout


def _shape(state_dict: Mapping[str, np.ndarray], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ConversionError(f"The EfficientNet state dict lacks {key}.")
    return tuple(np.shape(state_dict[key]))


def _block_stage(state_dict: Mapping, prefix: str, in_chs: int, stride: int) -> StageDef:
    """A one-block StageDef of the block at `prefix` ('blocks.3.1'), read from its shapes."""
    kind = "ir" if f"{prefix}.conv_pwl.weight" in state_dict else "ds"
    mid, _, k, _ = _shape(state_dict, f"{prefix}.conv_dw.weight")
    out = _shape(state_dict, f"{prefix}.conv_pwl.weight" if kind == "ir" else
                 f"{prefix}.conv_pw.weight")[0]  # fmt: skip
    exp = mid / in_chs if kind == "ir" else 1.0
    se = 0.0
    if f"{prefix}.se.conv_reduce.weight" in state_dict:
        rd = _shape(state_dict, f"{prefix}.se.conv_reduce.weight")[0]
        # timm's 0.25 where it fits; else the ratio that gives this width.
        se = 0.25 if round(mid * (0.25 / exp)) == rd else rd / in_chs
    return StageDef(kind, 1, k, stride, exp, out, se)


def _stages(state_dict: Mapping, stem: int, strides: Sequence[int] | None) -> tuple[str, ...]:
    """timm block strings of the file's stages (width and depth multipliers 1)."""
    found: dict[int, set[int]] = {}
    for key in state_dict:
        match = _BLOCK_KEY.match(key)
        if match:
            found.setdefault(int(match[1]), set()).add(int(match[2]))
    if sorted(found) != list(range(len(found))):
        raise ConversionError(f"The EfficientNet state dict's stages {sorted(found)} have gaps.")
    if strides is None:
        if len(found) != len(_B0_STRIDES):
            raise ConversionError(
                f"The EfficientNet state dict has {len(found)} stages; no tensor holds their "
                "strides, which are B0's only for 7 stages: give strides (one per stage)."
            )
        strides = _B0_STRIDES
    if len(strides) != len(found):
        raise ConversionError(f"{len(strides)} strides for {len(found)} stages.")
    stages, in_chs = [], stem
    for s, stride in enumerate(strides):
        # The stage string takes its kernel, expansion and SE ratio from the first block; the
        # signature check of the caller refuses a stage whose blocks differ.
        first = _block_stage(state_dict, f"blocks.{s}.0", in_chs, stride)
        stage = dataclasses.replace(first, repeats=len(found[s]))
        stages.append(efficientnet.stage_string(stage))
        in_chs = first.channels
    return tuple(stages)


def _signature(blocks: list[list[efficientnet.BlockDef]]) -> list[list[tuple]]:
    """What the tensors fix of each block (not strides, not drop-path rates)."""
    return [[(b.kind, b.in_chs, b.out_chs, b.mid_chs, b.kernel, b.se_chs) for b in stage]
            for stage in blocks]  # fmt: skip


def _file_signature(state_dict: Mapping, stem: int) -> list[list[tuple]]:
    """_signature of the blocks in a state dict, block by block from its shapes."""
    out, s, in_chs = [], 0, stem
    while f"blocks.{s}.0.conv_dw.weight" in state_dict:
        stage, j = [], 0
        while f"blocks.{s}.{j}.conv_dw.weight" in state_dict:
            d = _block_stage(state_dict, f"blocks.{s}.{j}", in_chs, 1)
            mid = _shape(state_dict, f"blocks.{s}.{j}.conv_dw.weight")[0]
            rd = (_shape(state_dict, f"blocks.{s}.{j}.se.conv_reduce.weight")[0]
                  if d.se else 0)  # fmt: skip
            stage.append((d.kind, in_chs, d.channels, mid, d.kernel, rd))
            in_chs, j = d.channels, j + 1
        out.append(stage)
        s += 1
    return out


def spec_from_state_dict(
    state_dict: Mapping[str, np.ndarray],
    layout: str | None = None,
    *,
    strides: Sequence[int] | None = None,
    **common,
) -> EfficientNetSpec:
    """The EfficientNetSpec of the network a timm state dict holds (widths, depths, kernels,
    expansions and SE widths from the tensor shapes; `strides` per stage, default B0's for a
    7-stage file); `common` sets the other fields (in_chans, num_classes, depthwise, ...).
    A B0-shaped file gives exactly `spec_for('efficientnet_b0', **common)`."""
    _checked_layout(state_dict, layout)
    stem = _shape(state_dict, "conv_stem.weight")[0]
    stages = _stages(state_dict, stem, strides)
    head = _shape(state_dict, "conv_head.weight")[0]
    try:
        spec = EfficientNetSpec(stem_size=stem, num_features=head, stages=stages, **common)
    except TypeError as e:
        raise ConversionError(f"spec_from_state_dict: {e}") from e
    # Widths that aren't multiples of 8 (not made by timm's builder) can't be rebuilt.
    if _signature(efficientnet.block_defs(spec)) != _file_signature(state_dict, stem) or (
        efficientnet.stem_width(spec),
        efficientnet.head_width(spec),
    ) != (stem, head):
        raise ConversionError(
            "The EfficientNet state dict's widths don't follow timm's builder (multiples of 8, "
            f"uniform stages): stem {stem}, stages {stages}, head {head}."
        )
    return spec


def timm_key(names: tuple) -> str:
    """timm's state-dict key of a project parameter path ('blocks', 1, 0, 'bn3', 'var')."""
    return ".".join(str(n) for n in names[:-1]) + "." + import_helpers.torch_leaf(names[-1])


def variables_from_state_dict(
    state_dict: Mapping[str, np.ndarray], spec: EfficientNetSpec, layout: str | None = None,
    seed: int = 0,
) -> tuple[dict, dict, list[str]]:  # fmt: skip
    """(params, batch_stats, notes) of the project's EfficientNet from a timm state dict, as
    pure dicts like `nnx.state(model, nnx.Param)` and `nnx.BatchStat`; notes list adaptations
    (stem summed for 1-channel input, classifier re-initialised with `seed`).

    Raises ConversionError naming both architectures when the file holds another one, and
    naming the keys when tensors are missing, unused or of the wrong shape."""
    layout = _checked_layout(state_dict, layout)
    stem = _shape(state_dict, "conv_stem.weight")[0]
    have = (stem, _file_signature(state_dict, stem), _shape(state_dict, "conv_head.weight")[0])
    want_blocks = efficientnet.block_defs(spec)
    want = (efficientnet.stem_width(spec), _signature(want_blocks),
            efficientnet.head_width(spec))  # fmt: skip
    if have != want:
        raise ConversionError(
            f"The {layout} state dict holds an EfficientNet with {_describe(*have)}; the model "
            f"is {efficientnet.title(spec)} with {_describe(*want)}. Set config.model to the "
            "checkpoint's architecture."
        )
    reader = import_helpers.StateDictReader(state_dict, f"The {layout} state dict", _IGNORE)
    params, stats = reader.variables(
        efficientnet.EfficientNet(spec, rngs=nnx.Rngs(seed)), timm_key, head=("classifier",),
        stem=("conv_stem", "kernel"), num_classes=spec.num_classes, fresh=("attention",),
        head_kind=spec.head,
    )  # fmt: skip
    notes = reader.finish(efficientnet.title(spec))
    return params, stats, notes


def _describe(stem: int, blocks: list[list[tuple]], head: int) -> str:
    depths = "-".join(str(len(stage)) for stage in blocks)
    widths = "-".join(str(stage[-1][2]) for stage in blocks if stage)
    return f"stem {stem}, depths {depths}, widths {widths}, head {head}"
