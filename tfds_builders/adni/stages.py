"""The layouts besides ADNI AD_NC: dementia-stage collections with N classes, and any class folders.

Detected from the folder (`detect`) or named (`data.layout`), each parsed into the same `Layout`
the ADNI parser makes, so that packaging, protocols, audit and reports treat them alike:

- `folders`: `ROOT/[{train,val,test}/]<class>/<image>` (the "4 class of images" set:
  `train/NonDemented/nonDem123.jpg`). No subject IDs: every image stands for itself.
- `oasis`: OASIS-1 slice exports, `ROOT/[Data/]<class>/OAS1_0001_MR1_mpr-1_100.jpg` (subject
  OAS1_0001, session MR1, run 1, slice 100). No split folders; subjects from the names.
- `parquet`: `ROOT/[data/]{train,test}-*.parquet` with an `image` column (a struct with `bytes`,
  or bytes) and a `label` column (integers named by the file's Hugging Face metadata or
  `data.label_names`, or strings). No subject IDs.

Class names are mapped to one ordered list when every one is a known dementia stage
(STAGE_ALIASES: NonDemented < VeryMildDemented < MildDemented < ModerateDemented), or to NC, AD
when there are two spelled as those (layout.LABEL_ALIASES); any other set of class names is kept
as found, in sorted order.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tfds_builders.adni import layout as layout_lib
from tfds_builders.adni.layout import Layout, LayoutError, brief_list

LAYOUTS = ("auto", "adni", "folders", "oasis", "parquet")
STAGES = ("NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented")
# Spellings of each stage, compared lower-case with everything but letters and digits removed
# ("Very_Mild_Demented" -> "verymilddemented", "CDR 0.5" -> "cdr05"). Clinical Dementia Rating
# (CDR) 0 / 0.5 / 1 / 2 is how OASIS grades them.
STAGE_ALIASES = {
    "NonDemented": ("nondemented", "nondementia", "nodementia", "notdemented", "cdr0"),
    "VeryMildDemented": ("verymilddemented", "verymilddementia", "verymild", "cdr05"),
    "MildDemented": ("milddemented", "milddementia", "mild", "cdr1"),
    "ModerateDemented": ("moderatedemented", "moderatedementia", "moderate", "cdr2"),
}
_STAGE_OF_ALIAS = {a: stage for stage, aliases in STAGE_ALIASES.items() for a in aliases}
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "validation", "valid": "validation", "validation": "validation",
    "test": "test", "testing": "test",
}  # fmt: skip
OASIS_PATTERN = re.compile(
    r"^(?P<subject>OAS1_\d{4})_(?P<session>MR\d+)_mpr-(?P<run>\d+)_(?P<slice>\d+)"
    r"\.(jpe?g|png)$",
    re.IGNORECASE,
)


def stage_of(name: str) -> str | None:
    """The canonical stage a class name spells (STAGE_ALIASES), or None."""
    return _STAGE_OF_ALIAS.get(re.sub(r"[^a-z0-9]", "", name.lower()))


def class_order(found: Sequence[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """(class names in label order, name as found -> class name).

    All known stages: the canonical stages present, in order of severity. Otherwise the names
    as found, sorted. Two spellings of one stage are an error (which folder is which?)."""
    found = sorted(set(found))
    stages = {name: stage_of(name) for name in found}
    if found and all(stages.values()):
        by_stage = collections.defaultdict(list)
        for name, stage in stages.items():
            by_stage[stage].append(name)
        clashes = {s: n for s, n in by_stage.items() if len(n) > 1}
        if clashes:
            raise LayoutError(
                f"Class names {clashes} spell the same stage twice; rename or merge them."
            )
        return tuple(s for s in STAGES if s in by_stage), dict(stages)
    # Two classes spelled as AD and NC (layout.LABEL_ALIASES: "Alzheimer", "Normal",
    # "Demented", ...): NC, AD in that order, AD the positive class as for ADNI.
    binary = {name: layout_lib.canonical_label(name) for name in found}
    if len(found) == 2 and set(binary.values()) == set(layout_lib.CLASS_NAMES):
        return layout_lib.CLASS_NAMES, binary
    return tuple(found), {name: name for name in found}


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in layout_lib.IMAGE_SUFFIXES


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _descend(root: Path) -> Path:
    """Into a lone wrapping folder ("Alzheimer_s Dataset/"), as archives often unpack."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return _descend(entries[0])
    return root


def detect(manual_dir: str | Path) -> str:
    """The layout of a folder: 'parquet', 'adni', 'oasis' or 'folders'; LayoutError if none."""
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise LayoutError(f"Data folder {manual_dir} does not exist.")
    root = _descend(manual_dir)
    if _parquet_files(root):
        return "parquet"
    if _looks_like_adni(manual_dir):
        return "adni"
    class_dirs = _class_dirs(root)
    if any(OASIS_PATTERN.match(p.name) for d in class_dirs for p in d.iterdir()):
        return "oasis"
    if class_dirs:
        return "folders"
    found = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    raise LayoutError(
        f"{manual_dir} has no layout alz_jax reads. Expected one of: AD_NC/{{train,test}}/"
        "{AD,NC}/<scanID>_<slice>.jpeg (ADNI); [train|val|test/]<class>/<image> (class "
        "folders); [Data/]<class>/OAS1_xxxx_MRn_mpr-n_<slice>.jpg (OASIS-1); "
        f"{{train,test}}-*.parquet. Found [{brief_list([repr(f) for f in found])}]."
    )


def _looks_like_adni(manual_dir: Path) -> bool:
    """[AD_NC/]train/ holding AD/ or NC/ and no other class folder: ADNI, whose own parser then
    names whatever else is wrong (a missing test/, a stray file). Other class sets (AD, CN,
    MCI) are class folders."""
    for candidate in (manual_dir / "AD_NC", manual_dir):
        train = candidate / "train"
        if train.is_dir():
            classes = {d.name for d in _visible_dirs(train)}
            return bool(classes) and classes <= set(layout_lib.CLASS_FOLDERS)
    return False


def _class_dirs(root: Path) -> list[Path]:
    """The class folders under root, root/Data or root/<split>: folders holding images."""
    tops = [root] + [d for d in _visible_dirs(root) if d.name.lower() == "data"]
    tops += [d for d in _visible_dirs(root) if d.name.lower() in SPLIT_ALIASES]
    return [
        d for top in tops for d in _visible_dirs(top)
        if any(_is_image(p) for p in d.iterdir())
    ]  # fmt: skip


def _resolve_kind(manual_dir: Path, kind: str) -> str:
    """The layout named (checked) or, for 'auto', detected; an existing folder unless ADNI
    (whose parser says what is missing)."""
    if kind not in LAYOUTS:
        raise LayoutError(f"data.layout = {kind!r}; expected one of {'|'.join(LAYOUTS)}.")
    if kind == "auto":
        kind = detect(manual_dir)
    if kind != "adni" and not manual_dir.is_dir():
        raise LayoutError(f"Data folder {manual_dir} does not exist.")
    return kind


def parse(manual_dir: str | Path, kind: str = "auto", label_names: Sequence[str] = ()) -> Layout:
    """Parses a data folder of any layout (`kind`, or detected with 'auto') into a Layout."""
    manual_dir = Path(manual_dir)
    kind = _resolve_kind(manual_dir, kind)
    if kind == "adni":
        return layout_lib.parse(manual_dir)
    root = _descend(manual_dir)
    if kind == "parquet":
        return _parse_parquet(root, label_names)
    return _parse_folders(root, kind)


def describe(
    manual_dir: str | Path, kind: str = "auto", label_names: Sequence[str] = ()
) -> tuple[str, tuple[str, ...]]:
    """(layout, class names in label order) of a data folder, without reading any image: what a
    build needs to know before it starts. LayoutError where `parse` would fail on the layout."""
    manual_dir = Path(manual_dir)
    kind = _resolve_kind(manual_dir, kind)
    if kind == "adni":
        layout_lib.find_root(manual_dir)
        return kind, layout_lib.CLASS_NAMES
    root = _descend(manual_dir)
    if kind == "parquet":
        rows, names_in_files = [], []
        for path in _parquet_files(root):
            _parquet_split(path)
            try:
                schema = pq.read_schema(path)
                if "label" not in schema.names:
                    raise LayoutError(f"{path}: no `label` column; found {schema.names}.")
                labels = pq.read_table(path, columns=["label"]).column("label").to_pylist()
            except (OSError, pa.ArrowException) as e:
                raise LayoutError(
                    f"{path}: not a readable parquet file ({type(e).__name__}: {e})."
                ) from e
            hub_names = _hub_label_names(schema)
            if hub_names:
                names_in_files.append(hub_names)
            rows += [(path, i, "", label, b"") for i, label in enumerate(labels)]
        if not rows:
            raise LayoutError(f"{root}: no parquet rows.")
        return kind, class_order(_label_names(root, rows, names_in_files, label_names))[0]
    splits = _split_folders(root)
    if not splits:
        data = [d for d in _visible_dirs(root) if d.name.lower() == "data"]
        splits = {"": data[0] if data else root}
    found = {d.name for folder in splits.values() for d in _visible_dirs(folder)}
    class_names = class_order(found)[0]
    if len(class_names) < 2:
        raise LayoutError(f"{root}: found class folders {class_names}; expected two or more.")
    return kind, class_names


def _split_folders(root: Path) -> dict[str, Path]:
    """Split name -> folder, for the split folders under root (empty if it has none)."""
    splits: dict[str, Path] = {}
    for d in _visible_dirs(root):
        split = SPLIT_ALIASES.get(d.name.lower())
        if split is None:
            continue
        if split in splits:
            raise LayoutError(f"{splits[split]} and {d} are both the {split} split; keep one.")
        splits[split] = d
    if splits and "train" not in splits:
        raise LayoutError(f"{root} has split folders {sorted(splits)} but no train/ folder.")
    return splits


def _parse_folders(root: Path, kind: str) -> Layout:
    """The `folders` and `oasis` layouts: images in class folders, with or without splits."""
    splits = _split_folders(root)
    if not splits:
        data = [d for d in _visible_dirs(root) if d.name.lower() == "data"]
        splits = {"": data[0] if data else root}
    found: dict[str, list[tuple[str, Path]]] = {}
    for split, folder in splits.items():
        found[split] = [(d.name, d) for d in _visible_dirs(folder)]
        if not found[split]:
            raise LayoutError(
                f"{folder} holds no class folders; expected {folder}/<class>/<image>."
            )
    class_names, mapping = class_order({name for pairs in found.values() for name, _ in pairs})
    if len(class_names) < 2:
        raise LayoutError(f"{root}: found one class only ({class_names}); expected two or more.")
    records, (strays, problems) = [], _outside_class_folders(root, splits)
    for split, pairs in found.items():
        for name, folder in pairs:
            label = class_names.index(mapping[name])
            for path in sorted(folder.iterdir()):
                if path.name.startswith("."):
                    continue
                if path.is_file() and not _is_image(path):
                    strays.append(path)
                    continue
                if not path.is_file():
                    problems.append(f"{path} (a folder inside a class folder)")
                    continue
                record = _folder_record(root, path, split, label, kind)
                if record is None:
                    problems.append(f"{path} (expected OAS1_xxxx_MRn_mpr-n_<slice>.jpg)")
                    continue
                records.append(record)
    _raise_problems(problems, kind)
    if not records:
        raise LayoutError(f"{root} holds no images in its class folders.")
    subjects = {r.scan_id: _subject_of(r, kind) for r in records}
    return Layout(
        root=root,
        records=records,
        subject_of_scan=subjects,
        subject_source="file_name" if kind == "oasis" else "scan_id",
        stray_files=strays,
        kind=kind,
        class_names=class_names,
        folder_splits=tuple(s for s in ("train", "validation", "test") if s in splits),
        image_size=None,
        class_mapping=mapping,
    )


def _outside_class_folders(root: Path, splits: dict[str, Path]) -> tuple[list[Path], list[str]]:
    """What lies outside the class folders: other files and folders beside the split (or Data)
    folders are strays (reported, never read, e.g. a README or an archive's __MACOSX); an image
    directly in a split folder has no class, a problem."""
    strays, problems = [], []
    kept = set(splits.values())
    if root not in kept:
        strays += [
            p for p in sorted(root.iterdir()) if not p.name.startswith(".") and p not in kept
        ]
    for folder in kept:
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if _is_image(path):
                problems.append(f"{path} (an image outside any class folder)")
            else:
                strays.append(path)
    return strays, problems


def _folder_record(root: Path, path: Path, split: str, label: int, kind: str):
    """The ImageRecord of one image file, or None if an OASIS name doesn't parse."""
    relative = path.relative_to(root).as_posix()
    if kind == "oasis":
        match = OASIS_PATTERN.match(path.name)
        if match is None:
            return None
        # Upper case: a name's case (oas1_0001_mr1) must not make another subject or scan.
        scan = f"{match['subject'].upper()}_{match['session'].upper()}_mpr-{match['run']}"
        slice_index = int(match["slice"])
    else:
        # Without subject IDs an image is its own scan (and subject), named by its path; a
        # number in a free-form name ("nonDem123") is no slice position.
        scan = relative.rsplit(".", 1)[0]
        slice_index = -1
    return layout_lib.ImageRecord(
        path=path,
        file_name=relative,
        folder_split=split,
        label=label,
        scan_id=scan,
        slice_index=slice_index,
    )


def _subject_of(record: layout_lib.ImageRecord, kind: str) -> str:
    if kind == "oasis":
        return record.scan_id.split("_MR")[0]
    return record.scan_id


def _raise_problems(problems: list[str], kind: str) -> None:
    if problems:
        more = len(problems) - layout_lib.LIST_LIMIT
        raise LayoutError(
            f"{len(problems)} entries don't fit the {kind} layout, e.g.:\n  "
            + "\n  ".join(problems[: layout_lib.LIST_LIMIT])
            + (f"\n  ... and {more} more" if more > 0 else "")
        )


# ---- Parquet. ----


def _parquet_files(root: Path) -> list[Path]:
    tops = [root] + [d for d in _visible_dirs(root) if d.name.lower() == "data"]
    return sorted(p for top in tops for p in top.glob("*.parquet") if not p.name.startswith("."))


def _parquet_split(path: Path) -> str:
    head = re.split(r"[-_.]", path.name.lower(), maxsplit=1)[0]
    split = SPLIT_ALIASES.get(head)
    if split is None:
        raise LayoutError(
            f"{path}: a parquet file's name must start with its split (train-, test-, "
            "validation-), e.g. train-00000-of-00001.parquet."
        )
    return split


def _hub_label_names(schema) -> list[str] | None:
    """The label names a Hugging Face `datasets` parquet file records in its schema metadata."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        features = json.loads(raw)["info"]["features"]
        return list(features["label"]["names"])
    except (ValueError, KeyError, TypeError):
        return None


def _image_bytes(value, path: Path, row: int) -> bytes:
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, bytes | bytearray):
        raise LayoutError(
            f"{path}, row {row}: the image column holds {type(value).__name__}, expected the "
            "image's bytes (or a struct with a `bytes` field)."
        )
    return bytes(value)


def _read_parquet(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise LayoutError(f"{path}: not a readable parquet file ({type(e).__name__}: {e}).") from e
    missing = [c for c in ("image", "label") if c not in table.column_names]
    if missing:
        raise LayoutError(
            f"{path}: missing column(s) {missing}; found {table.column_names}. Expected `image` "
            "(bytes, or a struct with `bytes`) and `label`."
        )
    return table


def _parse_parquet(root: Path, label_names: Sequence[str]) -> Layout:
    """The parquet layout: every row an image, its split from the file name."""
    rows = []  # (path, row, split, raw label, bytes)
    names_in_files: list[list[str]] = []
    for path in _parquet_files(root):
        split = _parquet_split(path)
        table = _read_parquet(path)
        hub_names = _hub_label_names(table.schema)
        if hub_names:
            names_in_files.append(hub_names)
        images, labels = table.column("image").to_pylist(), table.column("label").to_pylist()
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            rows.append((path, i, split, label, _image_bytes(image, path, i)))
    if not rows:
        raise LayoutError(f"{root}: the parquet files hold no rows.")
    names = _label_names(root, rows, names_in_files, label_names)
    class_names, mapping = class_order(names)
    records = []
    for path, i, split, label, data in rows:
        name = names[label] if isinstance(label, int) else str(label)
        relative = f"{path.relative_to(root).as_posix()}/{i:06d}"
        records.append(
            layout_lib.ImageRecord(
                path=path, file_name=relative, folder_split=split,
                label=class_names.index(mapping[name]), scan_id=relative, slice_index=-1,
                data=data,
            )
        )  # fmt: skip
    splits = {r.folder_split for r in records}
    return Layout(
        root=root,
        records=records,
        subject_of_scan={r.scan_id: r.scan_id for r in records},
        subject_source="scan_id",
        kind="parquet",
        class_names=class_names,
        folder_splits=tuple(s for s in ("train", "validation", "test") if s in splits),
        image_size=None,
        class_mapping=mapping,
    )


def _label_names(root, rows, names_in_files, label_names) -> list[str]:
    """Label value -> class name: the strings themselves, or the integers' names from the
    files' metadata or `data.label_names`."""
    values = sorted({row[3] for row in rows}, key=str)
    if all(isinstance(v, str) for v in values):
        return values
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise LayoutError(f"{root}: labels must be all integers or all strings; found {values}.")
    names = list(label_names) or (names_in_files[0] if names_in_files else None)
    if any(n != names_in_files[0] for n in names_in_files[1:]):
        raise LayoutError(f"{root}: the parquet files name their labels differently.")
    if not names:
        raise LayoutError(
            f"{root}: integer labels {values} and no names for them in the files' metadata; give "
            "them in order, e.g. --config.data.label_names=Mild_Demented,Moderate_Demented,"
            "Non_Demented,Very_Mild_Demented"
        )
    if max(values) >= len(names) or min(values) < 0:
        raise LayoutError(
            f"{root}: labels {values} but {len(names)} names ({names}): a label has no name."
        )
    return list(names)
