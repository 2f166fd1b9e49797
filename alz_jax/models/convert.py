"""The names weight import had before it was split by what it holds: `weights_import` (the
dispatch to each family's importer: from_torchvision, init_variables_from, ...),
`import_helpers` (reading weight files, the shared reader) and `convnext_import` (ConvNeXt's
layouts). Kept so that `from alz_jax.models import convert` and its attributes keep working.
"""

from alz_jax.models.convnext_import import (
    LAYOUTS,
    architecture,
    detect_layout,
    params_from_state_dict,
)
from alz_jax.models.import_helpers import (
    TORCH_SUFFIXES,
    ConversionError,
    StateDictReader,
    check_finite,
    load_state_dict,
    torch_leaf,
)
from alz_jax.models.registry import FAMILIES
from alz_jax.models.weights_import import (
    all_layouts,
    from_fb,
    from_huggingface,
    from_timm,
    from_torchvision,
    init_variables_from,
    model_with,
    parse_init_from,
    spec_named,
    variables_from_state_dict,
)

__all__ = [
    "ALL_LAYOUTS", "IMPORTERS", "LAYOUTS", "TORCH_SUFFIXES", "ConversionError",
    "StateDictReader", "architecture", "check_finite", "detect_layout", "from_fb",
    "from_huggingface", "from_timm", "from_torchvision", "init_variables_from",
    "load_state_dict", "model_with", "params_from_state_dict", "parse_init_from", "spec_named",
    "torch_leaf", "variables_from_state_dict",
]  # fmt: skip

ALL_LAYOUTS = all_layouts()
# family -> (its layouts, its importer): the registered families' (models/family.py).
IMPORTERS = {name: (fam.layouts, fam.import_weights) for name, fam in FAMILIES.items()}
