"""The registry of layout plug-ins: the single list of the layouts alz_jax reads.

`register(plugin)` adds one (a test's toy layout, a new collection); `names()` is what
`data.layout` accepts ("auto" and every registered name); "auto" asks every plug-in how
confident it is (`detect`) and takes the most confident, the first registered on a tie.
`parse` and `describe` dispatch to the plug-in named or detected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from . import adni, folders, oasis, parquet
from .base import (
    MANUAL_DIR_SETTING,
    SPLIT_ALIASES,
    Layout,
    LayoutError,
    LayoutPlugin,
    brief_list,
    check_folder,
    check_names_utf8,
    check_whole_set,
    visible_dirs,
    wrapping_chain,
)

AUTO = "auto"
_PLUGINS: dict[str, LayoutPlugin] = {}

# The TFDS builder's instructions (TFDS shows them where a manual_dir is missing); alz_jax's
# errors carry the one-line `hint` instead.
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
# The hint under a data error: ADNI's where the ADNI layout is meant (`adni_meant`), else the docs.
ADNI_HINT = (
    "hint: ADNI is obtained after registering at https://adni.loni.usc.edu and read as "
    "DIR/AD_NC/{train,test}/{AD,NC}/<scanID>_<slice>.jpeg; see docs/data.md."
)
LAYOUTS_HINT = (
    "hint: the layouts alz_jax reads (ADNI AD_NC, class folders, OASIS-1, parquet; volumes: "
    "CAPS, the OASIS-1 release, NIfTI) are in docs/data.md, docs/stages.md and docs/volumes.md."
)
NO_FOLDER_HINT = (
    "hint: ADNI comes from https://adni.loni.usc.edu after registering; the layouts alz_jax reads "
    "are in docs/data.md and docs/stages.md."
)
# Folder names that say ADNI is meant: the set's own folder, or its class folders.
_ADNI_NAMES = frozenset({"adni", "ad_nc"})


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


def resolve(
    manual_dir: str | Path, kind: str = AUTO, setting: str = MANUAL_DIR_SETTING
) -> LayoutPlugin:
    """The plug-in named (checked) or, for "auto", detected; first, whatever the layout, a
    LayoutError for a path that is no folder (`check_folder`) and a SplitFolderError for a
    folder that is one split of a set (`check_whole_set`), naming `setting` (the flag of the
    command that runs)."""
    check_folder(Path(manual_dir), setting)
    check_whole_set(Path(manual_dir), setting)
    if kind == AUTO:
        return get(detect(manual_dir))
    return get(kind)


def parse(
    manual_dir: str | Path, kind: str = AUTO, label_names: Sequence[str] = (),
    setting: str = MANUAL_DIR_SETTING,
) -> Layout:  # fmt: skip
    """Parses a data folder of any layout (`kind`, or detected with "auto") into a Layout;
    LayoutError for a file name that is not UTF-8 (the data set stores names as text). For a
    volume layout, the folder is the one its volumes were sliced into (`volumes.sliced`)."""
    parsed = resolve(manual_dir, kind, setting).parse(Path(manual_dir), tuple(label_names))
    strays = [os.path.relpath(p, parsed.root) for p in parsed.stray_files]
    check_names_utf8(parsed.root, [r.file_name for r in parsed.records] + strays)
    return parsed


def describe(
    manual_dir: str | Path, kind: str = AUTO, label_names: Sequence[str] = (),
    setting: str = MANUAL_DIR_SETTING, volume_settings: object | None = None,
) -> tuple[str, tuple[str, ...]]:  # fmt: skip
    """(layout, class names in label order) of a data folder, without reading any image: what a
    build needs to know before it starts. LayoutError where `parse` would fail on the layout.
    A volume layout's classes depend on how its table is mapped (`volume_settings`, a
    volumes.settings.VolumeSettings; None: the defaults)."""
    plugin = resolve(manual_dir, kind, setting)
    if plugin.is_volume:
        listing = plugin.volumes(Path(manual_dir), volume_settings)
        return plugin.name, tuple(listing.class_names)
    return plugin.name, plugin.describe(Path(manual_dir), tuple(label_names))


def is_volume(kind: str) -> bool:
    """Whether a registered layout holds 3D volumes (slices are cut from them first)."""
    return kind in _PLUGINS and _PLUGINS[kind].is_volume


def list_volumes(
    manual_dir: str | Path, kind: str = AUTO, volume_settings: object | None = None,
    setting: str = MANUAL_DIR_SETTING,
) -> object:  # fmt: skip
    """The volumes of a volume layout's folder (a volumes.listing.VolumeListing), labelled, and
    what it left out, as `volume_settings` map them; LayoutError for another layout's folder.
    (Volume layouts are registered by the package's `api`: they import this package.)"""
    plugin = resolve(manual_dir, kind, setting)
    if not plugin.is_volume:
        raise LayoutError(f"{manual_dir} has the {plugin.name} layout, which holds no volumes.")
    return plugin.volumes(Path(manual_dir), volume_settings)


def adni_meant(manual_dir: str | Path, kind: str = AUTO) -> bool:
    """Whether a data error is about ADNI: `data.layout=adni`, or (detected) a folder that looks
    like ADNI's: named ADNI or AD_NC, or holding such a folder or AD/NC class folders."""
    if kind != AUTO:
        return kind == adni.NAME
    manual_dir = Path(manual_dir)
    names = {manual_dir.name.lower()}
    try:
        if manual_dir.is_dir():
            for folder in wrapping_chain(manual_dir):
                found = visible_dirs(folder)
                names |= {folder.name.lower()} | {d.name.lower() for d in found}
                for split in (d for d in found if d.name.lower() in SPLIT_ALIASES):
                    names |= {d.name.lower() for d in visible_dirs(split)}
    except OSError:  # an unreadable folder: its name alone decides
        pass
    return bool(names & _ADNI_NAMES) or {"ad", "nc"} <= names


def hint(manual_dir: str | Path | None, kind: str = AUTO) -> str:
    """The one line shown under a data error: where ADNI comes from and how it is laid out when
    ADNI is meant (`adni_meant`), else where the layouts are described; with no folder given
    and the layout left to detection, both."""
    if manual_dir is None and kind == AUTO:
        return NO_FOLDER_HINT
    meant = kind == adni.NAME if manual_dir is None else adni_meant(manual_dir, kind)
    return ADNI_HINT if meant else LAYOUTS_HINT


for _plugin in (adni.PLUGIN, folders.PLUGIN, oasis.PLUGIN, parquet.PLUGIN):
    register(_plugin)
