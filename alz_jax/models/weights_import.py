"""PyTorch ImageNet weights into the project's NNX models of any registered family: each family
names the key layouts its weights come in and reads them (its `Family.import_weights`, in
models/*_import.py); this module dispatches by the model's family and layout.

    model = weights_import.from_torchvision(load_state_dict("convnext_tiny.pth"), "tiny")
    model = weights_import.from_timm(state_dict, "vit_small_patch16_224", num_classes=2)
    config.model.init_from = "torchvision:/path/convnext_tiny-983f1562.pth"   # fine-tune

The layouts and each family's keys are in docs/reference.md and docs/models.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
from flax import nnx

from alz_jax.host.errors import UserError
from alz_jax.models import registry
from alz_jax.models.import_helpers import ConversionError, load_state_dict


def all_layouts() -> tuple[str, ...]:
    """Every registered family's layouts, in order of registration."""
    return tuple(dict.fromkeys(lay for fam in registry.FAMILIES.values() for lay in fam.layouts))


def variables_from_state_dict(
    state_dict: Mapping[str, np.ndarray], spec, layout: str | None = None, seed: int = 0
) -> tuple[dict, dict, list[str]]:
    """(params, batch_stats, notes) of a model of any family from a PyTorch state dict in
    `layout` (detected when None); batch_stats is {} for families without BatchNorm."""
    fam = registry.family(spec)
    if fam.import_weights is None or (layout is not None and layout not in fam.layouts):
        raise ConversionError(
            f"{fam.title(spec)} weights are read from the {'|'.join(fam.layouts)} layouts, not "
            f"{layout!r}."
        )
    return fam.import_weights(state_dict, spec, layout, seed)


def model_with(spec, params: dict, batch_stats: dict | None = None) -> nnx.Module:
    """The NNX model of `spec` carrying `params` (and BatchNorm running statistics)."""
    model = registry.build(spec, 0)
    nnx.update(model, nnx.State(params))
    if batch_stats:
        nnx.update(model, nnx.State(batch_stats))
    return model


def spec_named(name, in_chans: int = 1, num_classes: int = 2, image_size: int | None = None):
    """A spec from a name: a model name ('convnext_tiny', 'vit_small_patch16_224', 'resnet50',
    'efficientnet_b0'), a family's short alias (a ConvNeXt size, 'tiny'), or a spec, returned
    as it is."""
    if not isinstance(name, str):
        return name
    aliased = [fam for fam in registry.FAMILIES.values() if fam.aliases]
    for fam in aliased:
        name = fam.aliases.get(name, name)
    if name not in registry.NAMES:
        expected = [f"{fam.aliases_are} ({', '.join(fam.aliases)})" for fam in aliased]
        expected.append(f"one of {sorted(registry.NAMES)}")
        raise ConversionError(f"model {name!r}; expected {' or '.join(expected)}")
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
        hook = registry.family(spec).spec_for_layout
        if hook is not None and isinstance(name, str):
            spec = hook(spec, layout)
        params, stats, notes = variables_from_state_dict(state_dict, spec, layout, seed)
        for note in notes:
            logging.info("Weight import (%s): %s", layout, note)
        return model_with(spec, params, stats)

    convert_state_dict.__name__ = f"from_{layout}"
    convert_state_dict.__doc__ = (
        f"The project's NNX model carrying the weights of a {layout}-layout state dict; `name` "
        "is a model name ('convnext_tiny', 'vit_small_patch16_224', 'resnet50', "
        "'efficientnet_b0'), a ConvNeXt size ('tiny') or a spec. A 3-channel stem is summed for "
        "`in_chans=1` (timm's adapt_input_conv rule for other counts) and the head "
        "re-initialised (with `seed`) when `num_classes` differs."
    )
    return convert_state_dict


from_torchvision = _from_layout("torchvision")
from_timm = _from_layout("timm")
from_fb = _from_layout("fb")
from_huggingface = _from_layout("huggingface")


def parse_init_from(value: str) -> tuple[str, str]:
    """'LAYOUT:PATH' (torchvision, timm, fb, huggingface: the registered families' layouts) ->
    (layout, path)."""
    layout, sep, path = value.partition(":")
    layouts = all_layouts()
    if not sep or layout not in layouts or not path:
        raise UserError(
            f"config.model.init_from = {value!r}: expected 'LAYOUT:PATH' with LAYOUT one of "
            f"{'|'.join(layouts)}, e.g. 'torchvision:/data/convnext_tiny-983f1562.pth'."
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
    logging.info("Starting from %s weights in %s", layout, path)
    for note in notes:  # a line each: together they would run past a console line
        logging.info("Weight import: %s", note)
    return params, stats
