"""The `parquet` layout: `ROOT/[data/]{train,test}-*.parquet` with an `image` column (a struct
with `bytes`, or bytes) and a `label` column (integers named by the file's Hugging Face metadata
or `data.label_names`, or strings). No subject IDs: every row is its own scan and subject."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import classes
from .base import (
    SPLIT_ALIASES,
    SPLIT_NAMES,
    ImageRecord,
    Layout,
    LayoutError,
    LayoutPlugin,
    data_tops,
    existing_root,
)

NAME = "parquet"


def parquet_files(root: Path) -> list[Path]:
    """The parquet files in root or its data/ folder, sorted."""
    return sorted(
        p for top in data_tops(root) for p in top.glob("*.parquet") if not p.name.startswith(".")
    )


def detect(manual_dir: Path) -> float:
    """Full confidence where there are parquet files: no other layout has them."""
    return 1.0 if parquet_files(existing_root(manual_dir)) else 0.0


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


def _check_label_type(path: Path, label_type: pa.DataType) -> None:
    """LayoutError for a label column of any type but integers or strings (float64 labels,
    written by pandas where a value was missing, would name their classes "2.0")."""
    if pa.types.is_dictionary(label_type):
        label_type = label_type.value_type
    if not (pa.types.is_integer(label_type) or pa.types.is_string(label_type)
            or pa.types.is_large_string(label_type)):  # fmt: skip
        # numpy's name ("float64"), as pandas users know it; arrow's ("double") for the rest.
        name = f"float{label_type.bit_width}" if pa.types.is_floating(label_type) else label_type
        raise LayoutError(
            f"{path}: label column is {name}; expected integers or strings (class indices or "
            "names), in every parquet file."
        )


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
    _check_label_type(path, table.schema.field("label").type)
    return table


def _read_labels(path: Path) -> tuple[list, list[str] | None]:
    """A file's labels and the names its metadata gives them, without reading the images."""
    try:
        schema = pq.read_schema(path)
        if "label" not in schema.names:
            raise LayoutError(f"{path}: no `label` column; found {schema.names}.")
        _check_label_type(path, schema.field("label").type)
        labels = pq.read_table(path, columns=["label"]).column("label").to_pylist()
    except (OSError, pa.ArrowException) as e:
        raise LayoutError(f"{path}: not a readable parquet file ({type(e).__name__}: {e}).") from e
    return labels, _hub_label_names(schema)


def describe(manual_dir: Path, label_names: Sequence[str] = ()) -> tuple[str, ...]:
    """The class names in label order, from the label columns and the files' metadata."""
    root = existing_root(manual_dir)
    values, names_in_files = [], []
    for path in parquet_files(root):
        _parquet_split(path)
        labels, hub_names = _read_labels(path)
        if hub_names:
            names_in_files.append(hub_names)
        values += labels
    if not values:
        raise LayoutError(f"{root}: no parquet rows.")
    return classes.class_order(_label_names(root, values, names_in_files, label_names))[0]


def parse(manual_dir: Path, label_names: Sequence[str] = ()) -> Layout:
    """Every row an image, its split from the file name."""
    root = existing_root(manual_dir)
    rows = []  # (path, row, split, raw label, bytes)
    names_in_files: list[list[str]] = []
    for path in parquet_files(root):
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
    names = _label_names(root, [row[3] for row in rows], names_in_files, label_names)
    class_names, mapping = classes.class_order(names)
    records = []
    for path, i, split, label, data in rows:
        name = names[label] if isinstance(label, int) else str(label)
        relative = f"{path.relative_to(root).as_posix()}/{i:06d}"
        records.append(
            ImageRecord(
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
        kind=NAME,
        class_names=class_names,
        folder_splits=tuple(s for s in SPLIT_NAMES if s in splits),
        image_size=None,
        class_mapping=mapping,
    )


def _label_names(root, labels, names_in_files, label_names) -> list[str]:
    """Label value -> class name: the strings themselves, or the integers' names from the
    files' metadata or `data.label_names`."""
    values = sorted(set(labels), key=str)
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


PLUGIN = LayoutPlugin(
    name=NAME,
    summary="{train,test}-*.parquet",
    detect=detect,
    describe=describe,
    parse=parse,
)
