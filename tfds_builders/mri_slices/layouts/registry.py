"""The registry of layout plug-ins: the single list of the layouts alz_jax reads.

`register(plugin)` adds one (a test's toy layout, a new collection); `names()` is what
`data.layout` accepts ("auto" and every registered name); "auto" asks every plug-in how
confident it is (`detect`) and takes the most confident, the first registered on a tie.
`parse` and `describe` dispatch to the plug-in named or detected.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tfds_builders.mri_slices.layouts import adni, folders, oasis, parquet
from tfds_builders.mri_slices.layouts.base import (
    Layout,
    LayoutError,
    LayoutPlugin,
    brief_list,
    check_whole_set,
)

AUTO = "auto"
_PLUGINS: dict[str, LayoutPlugin] = {}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
ADNI data cannot be downloaded automatically: it is available only after registering with the
Alzheimer's Disease Neuroimaging Initiative (https://adni.loni.usc.edu) and accepting its data-use
terms. Obtain the 2D slice set "AD_NC" and place it so that the folder given as manual_dir
(--config.data.manual_dir=DIR) contains

    DIR/AD_NC/train/AD/<scanID>_<slice>.jpeg   DIR/AD_NC/train/NC/...
    DIR/AD_NC/test/AD/...                      DIR/AD_NC/test/NC/...

(the AD_NC level may be left out). Put meta_data_with_label.json (keyed by scan ID; subject IDs
NNN_S_NNNN in each entry's source path) or a subjects.csv with columns scan_id,subject_id in DIR
so that splits are made by subject; without either, each scan stands in for its subject.

Dementia-stage collections (downloaded from their own pages; docs/stages.md) are read as they
unpack: DIR/[train|val|test/]<class>/<image> (e.g. the four-class folders), DIR/[Data/]<class>/
OAS1_xxxx_MRn_mpr-n_<slice>.jpg (OASIS-1 exports) or DIR/[data/]{train,test}-*.parquet.
"""


def register(plugin: LayoutPlugin, replace: bool = False) -> LayoutPlugin:
    """Adds a layout plug-in under its name (ValueError for a name taken, unless `replace`);
    returns it, so that a module can write `PLUGIN = register(LayoutPlugin(...))`."""
    if plugin.name == AUTO or (plugin.name in _PLUGINS and not replace):
        raise ValueError(f"A layout named {plugin.name!r} is already registered.")
    _PLUGINS[plugin.name] = plugin
    return plugin


def unregister(name: str) -> None:
    """Removes a registered layout (a test's toy layout, once the test is done)."""
    _PLUGINS.pop(name, None)


def names() -> tuple[str, ...]:
    """What `data.layout` accepts: "auto", then every registered layout in registration order."""
    return (AUTO, *_PLUGINS)


def plugins() -> tuple[LayoutPlugin, ...]:
    """The registered plug-ins, in registration order."""
    return tuple(_PLUGINS.values())


def get(name: str) -> LayoutPlugin:
    """The plug-in of a layout name; LayoutError naming the choices for an unknown one."""
    if name not in _PLUGINS:
        raise LayoutError(f"data.layout = {name!r}; expected one of {'|'.join(names())}.")
    return _PLUGINS[name]


def detect(manual_dir: str | Path) -> str:
    """The layout of a folder: the most confident plug-in's name; LayoutError if none is."""
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise LayoutError(f"Data folder {manual_dir} does not exist.")
    best, confidence = None, 0.0
    for plugin in _PLUGINS.values():
        score = plugin.detect(manual_dir)
        if score > confidence:
            best, confidence = plugin.name, score
    if best is not None:
        return best
    found = sorted(p.name for p in manual_dir.iterdir() if not p.name.startswith("."))
    expected = "; ".join(p.summary for p in _PLUGINS.values())
    raise LayoutError(
        f"{manual_dir} has no layout alz_jax reads. Expected one of: {expected}. "
        f"Found [{brief_list([repr(f) for f in found])}]."
    )


def resolve(manual_dir: str | Path, kind: str = AUTO) -> LayoutPlugin:
    """The plug-in named (checked) or, for "auto", detected; SplitFolderError first, whatever
    the layout, for a folder that is one split of a set (`check_whole_set`)."""
    check_whole_set(Path(manual_dir))
    if kind == AUTO:
        return get(detect(manual_dir))
    return get(kind)


def parse(manual_dir: str | Path, kind: str = AUTO, label_names: Sequence[str] = ()) -> Layout:
    """Parses a data folder of any layout (`kind`, or detected with "auto") into a Layout."""
    return resolve(manual_dir, kind).parse(Path(manual_dir), tuple(label_names))


def describe(
    manual_dir: str | Path, kind: str = AUTO, label_names: Sequence[str] = ()
) -> tuple[str, tuple[str, ...]]:
    """(layout, class names in label order) of a data folder, without reading any image: what a
    build needs to know before it starts. LayoutError where `parse` would fail on the layout."""
    plugin = resolve(manual_dir, kind)
    return plugin.name, plugin.describe(Path(manual_dir), tuple(label_names))


for _plugin in (adni.PLUGIN, folders.PLUGIN, oasis.PLUGIN, parquet.PLUGIN):
    register(_plugin)
