"""PyTorch ImageNet weights into the project's NNX models: ConvNeXt here (torchvision, timm and
the official FB release), and through each family's importer (models/*_import.py) ViT (timm,
Hugging Face), ResNet-50 (torchvision, timm) and EfficientNet-B0 (timm).

    model = convert.from_torchvision(convert.load_state_dict("convnext_tiny.pth"), "tiny")
    model = convert.from_timm(state_dict, "vit_small_patch16_224", in_chans=1, num_classes=2)
    config.model.init_from = "torchvision:/path/convnext_tiny-983f1562.pth"   # fine-tune

A ConvNeXt state dict is a mapping of names to arrays in one of three key layouts
(docs/reference.md; the other families' in docs/models.md).
Each tensor is moved to the project's NHWC layout: convolutions [O, I/g, kh, kw] -> [kh, kw, I/g,
O], linears [out, in] -> [in, out], LayerNorm weight -> scale, layer scale [C, 1, 1] -> [C]. A
3-channel stem becomes the 1-channel stem of grayscale slices by summing its kernel over the
input axis (a grayscale image repeated over RGB gives the same activations). A head whose class
count differs from the spec's (1000 ImageNet classes) is re-initialised as a fresh model's would
be. Every other tensor must be present with the expected shape, and every tensor in the file must
be used: a mismatch is an error naming the keys.

Files are read without unpickling arbitrary objects: safetensors (`.safetensors`), NumPy
archives (`.npz`, no pickle) or PyTorch files (`.pth`, `.pt`, `.bin`) through
`torch.load(..., weights_only=True)` when torch is installed.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from collections.abc import Callable, Mapping

import numpy as np
from flax import nnx
from safetensors.numpy import load_file  # (its bytes reader has no bfloat16)

from alz_jax.host import storage
from alz_jax.host.errors import UserError
from alz_jax.models import (
    convnext,
    efficientnet_import,
    registry,
    resnet_import,
    vit_import,
)
from alz_jax.models.conversion import (
    ConversionError,
    StateDictReader,
    check_finite,
    torch_leaf,
)

LAYOUTS = ("torchvision", "timm", "fb")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".ckpt")
# Keys under which training scripts nest the model's state dict (FB: "model"; others).
_NESTING_KEYS = ("model", "state_dict", "model_state_dict")


# ---- Reading files. ----


def _torch_to_numpy(value) -> np.ndarray:
    # bfloat16/float16 tensors go through float32: numpy has no bfloat16 of torch's.
    if value.is_floating_point():
        value = value.float()
    return value.detach().cpu().numpy()


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Name -> array of a weight file (local or any etils path, e.g. gs://), without unpickling
    arbitrary objects; a checkpoint that nests its state dict under 'model' or 'state_dict'
    (FB's release, many training scripts) is unwrapped and a DDP 'module.' prefix removed."""
    file = storage.path(path)
    if not file.exists():
        raise UserError(f"Weight file {path} does not exist.")
    suffix = file.suffix.lower()
    try:
        if suffix == ".safetensors":
            with storage.local_file(file) as name:
                state = load_file(name)
        elif suffix == ".npz":
            with np.load(io.BytesIO(file.read_bytes()), allow_pickle=False) as archive:
                state = {k: archive[k] for k in archive.files}
        elif suffix in TORCH_SUFFIXES:
            state = _load_torch(file.read_bytes(), path)
        else:
            raise UserError(
                f"Weight file {path}: unknown type {suffix!r}; expected .safetensors, .npz or a "
                f"PyTorch file ({', '.join(TORCH_SUFFIXES)})."
            )
    except UserError:
        raise
    except Exception as e:  # a truncated or corrupt file: name it, say what it was read as
        raise UserError(f"Could not read weight file {path} as {suffix}: {e}") from e
    for key in _NESTING_KEYS:
        if key in state and isinstance(state[key], Mapping):
            others = sorted(k for k in state if k != key)
            logging.info("%s: using the state dict under %r%s", path, key,
                         f" (not {others})" if others else "")  # fmt: skip
            state = state[key]
            break
    ignored = sorted(k for k, v in state.items() if not isinstance(v, np.ndarray))
    if ignored:
        logging.info("%s: ignoring %d entries that are not tensors: %s%s", path, len(ignored),
                     ignored[:10], " ..." if len(ignored) > 10 else "")  # fmt: skip
    state = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if not state:
        raise UserError(f"Weight file {path} holds no tensors.")
    check_finite(state, f"Weight file {path}")
    return state


def _load_torch(data: bytes, path: str) -> dict:
    try:
        import torch  # noqa: PLC0415  (optional: only .pth files need PyTorch)
    except ImportError as e:
        raise UserError(
            f"Reading the PyTorch file {path} needs torch (pip install torch), which alz_jax "
            "does not install. Or convert it once where torch is, to a file read without torch "
            "(for FB's release, take torch.load(...)['model']):\n"
            '  python -c "import torch, safetensors.torch as s; s.save_file({k: v.contiguous() '
            "for k, v in torch.load('IN.pth', weights_only=True).items()}, 'OUT.safetensors')\""
        ) from e
    # weights_only: tensors and plain containers only; a pickled object is refused.
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping):
        raise UserError(f"{path} holds a {type(loaded).__name__}, not a state dict.")

    def convert(tree):
        if isinstance(tree, Mapping):
            return {k: convert(v) for k, v in tree.items()}
        return _torch_to_numpy(tree) if isinstance(tree, torch.Tensor) else tree

    return convert(loaded)


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


def size_name(depths: tuple, dims: tuple) -> str | None:
    """The timm size name (atto ... large) of (depths, dims), or None."""
    return next((n for n, v in convnext.SIZES.items() if v == (depths, dims)), None)


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
        have = size_name(depths, dims) or f"depths {depths}, dims {dims}"
        want = size_name(tuple(spec.depths), tuple(spec.dims)) or f"{spec.depths}, {spec.dims}"
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
    )  # fmt: skip
    return params, reader.finish("ConvNeXt")


# ---- Every family: dispatch by the model's family, one entry point per source layout. ----


def _convnext_variables(state_dict, spec, layout, seed):
    params, notes = params_from_state_dict(state_dict, spec, layout, seed)
    return params, {}, notes


# family -> (the layouts its weights come in, (state_dict, spec, layout, seed) -> (params,
# batch_stats, notes)).
IMPORTERS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "convnext": (LAYOUTS, _convnext_variables),
    "vit": (vit_import.LAYOUTS, vit_import.variables_from_state_dict),
    "resnet": (resnet_import.LAYOUTS, resnet_import.variables_from_state_dict),
    "efficientnet": (efficientnet_import.LAYOUTS, efficientnet_import.variables_from_state_dict),
}
ALL_LAYOUTS = ("torchvision", "timm", "fb", "huggingface")


def variables_from_state_dict(
    state_dict: Mapping[str, np.ndarray], spec, layout: str | None = None, seed: int = 0
) -> tuple[dict, dict, list[str]]:
    """(params, batch_stats, notes) of a model of any family from a PyTorch state dict in
    `layout` (detected when None); batch_stats is {} for families without BatchNorm."""
    fam = registry.family(spec)
    layouts, importer = IMPORTERS[fam.name]
    if layout is not None and layout not in layouts:
        raise ConversionError(
            f"{fam.title(spec)} weights are read from the {'|'.join(layouts)} layouts, not "
            f"{layout!r}."
        )
    return importer(state_dict, spec, layout, seed)


def model_with(spec, params: dict, batch_stats: dict | None = None) -> nnx.Module:
    """The NNX model of `spec` carrying `params` (and BatchNorm running statistics)."""
    model = registry.build(spec, 0)
    nnx.update(model, nnx.State(params))
    if batch_stats:
        nnx.update(model, nnx.State(batch_stats))
    return model


def spec_named(name, in_chans: int = 1, num_classes: int = 2, image_size: int | None = None):
    """A spec from a name: a ConvNeXt size ('tiny'), a model name ('convnext_tiny',
    'vit_small_patch16_224', 'resnet50', 'efficientnet_b0'), or a spec, returned as it is."""
    if not isinstance(name, str):
        return name
    if name in convnext.SIZES:
        name = f"convnext_{name}"
    if name not in registry.NAMES:
        raise ConversionError(
            f"model {name!r}; expected a ConvNeXt size ({', '.join(convnext.SIZES)}) or one of "
            f"{sorted(registry.NAMES)}"
        )
    fields = {"in_chans": in_chans, "num_classes": num_classes}
    if image_size is not None:
        fields["image_size"] = image_size
    return registry.spec_from_name(name, **fields)


def _from_layout(layout: str) -> Callable[..., nnx.Module]:
    def convert_state_dict(
        state_dict: Mapping[str, np.ndarray],
        name,
        *,
        in_chans: int = 1,
        num_classes: int = 2,
        seed: int = 0,
    ) -> nnx.Module:
        spec = spec_named(name, in_chans, num_classes)
        if layout == "huggingface" and isinstance(name, str):
            # Hugging Face's ViT normalises with eps 1e-12 (timm's 1e-6).
            spec = dataclasses.replace(spec, norm_eps=1e-12)
        params, stats, notes = variables_from_state_dict(state_dict, spec, layout, seed)
        for note in notes:
            logging.info("Weight import (%s): %s", layout, note)
        return model_with(spec, params, stats)

    convert_state_dict.__name__ = f"from_{layout}"
    convert_state_dict.__doc__ = (
        f"The project's NNX model carrying the weights of a {layout}-layout state dict; `name` "
        "is a model name ('convnext_tiny', 'vit_small_patch16_224', 'resnet50', "
        "'efficientnet_b0'), a ConvNeXt size ('tiny') or a spec. The stem is summed to "
        "`in_chans=1` and the head re-initialised (with `seed`) when `num_classes` differs."
    )
    return convert_state_dict


from_torchvision = _from_layout("torchvision")
from_timm = _from_layout("timm")
from_fb = _from_layout("fb")
from_huggingface = _from_layout("huggingface")


def parse_init_from(value: str) -> tuple[str, str]:
    """'torchvision:PATH' | 'timm:PATH' | 'fb:PATH' | 'huggingface:PATH' -> (layout, path)."""
    layout, sep, path = value.partition(":")
    if not sep or layout not in ALL_LAYOUTS or not path:
        raise UserError(
            f"config.model.init_from = {value!r}: expected 'LAYOUT:PATH' with LAYOUT one of "
            f"{'|'.join(ALL_LAYOUTS)}, e.g. 'torchvision:/data/convnext_tiny-983f1562.pth'."
        )
    return layout, path


def init_variables_from(value: str, spec, seed: int) -> tuple[dict, dict]:
    """The starting (params, batch_stats) named by `config.model.init_from` ('LAYOUT:PATH')."""
    layout, path = parse_init_from(value)
    state_dict = load_state_dict(path)
    try:
        params, stats, notes = variables_from_state_dict(state_dict, spec, layout, seed)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from e
    logging.info("Starting from %s weights in %s%s", layout, path,
                 "".join(f"; {n}" for n in notes))  # fmt: skip
    return params, stats
