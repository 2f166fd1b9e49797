"""2.5D input: a slice with its neighbours in its own scan as channels, and the one image path
(decode, pad, augment or evaluation preprocessing) shared by slice and bag pipelines.

`NeighbourSource` wraps a split's source: record i also carries the encoded images of the
records in row i of a neighbour index ((N, 2n+1) record indices, `bags.ScanIndex.
neighbour_index`), centre slice in the middle. Each channel is preprocessed alone, exactly as a
single slice is; in training every channel gets a copy of the same generator, so all channels
get the same crop, geometry and photometric draws (brightness/contrast act about each channel's
own mean). A record without neighbours takes today's single-channel path unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from alz_jax.data import augment, preprocess

KEY = "neighbour_images"  # the encoded images of a record's neighbours, centre in the middle
NAMES = "neighbour_names"  # their file names, for error messages


def record_name(record: Mapping[str, Any]) -> str:
    """The record's file name for messages (bytes or str), or `<record>`."""
    name = record.get("file_name", b"<record>")
    return name.decode() if isinstance(name, bytes) else str(name)


class NeighbourSource:
    """Random access to `source` whose records also carry their neighbours' encoded images."""

    def __init__(self, source, neighbour_index: np.ndarray):
        index = np.asarray(neighbour_index)
        if index.ndim != 2 or len(index) != len(source) or index.shape[1] % 2 != 1:
            raise ValueError(
                f"neighbour_index of shape {index.shape}: expected ({len(source)}, 2n+1) record "
                "indices, one row per record of the source (ScanIndex.neighbour_index(n))"
            )
        self._source, self._index = source, index

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict:
        record = dict(self._source[int(i)])
        others = [record if int(j) == int(i) else self._source[int(j)] for j in self._index[i]]
        record[KEY] = [r["image"] for r in others]
        record[NAMES] = [record_name(r) for r in others]
        return record

    def __repr__(self) -> str:
        return f"NeighbourSource({len(self)} records, {self._index.shape[1]} channels)"


def _decoded(record: Mapping[str, Any]) -> list[np.ndarray]:
    """The record's slices as 2-D uint8: its neighbours when it has them, else itself."""
    if KEY not in record:
        return [preprocess.decode_image(record["image"], record_name(record))]
    return [
        preprocess.decode_image(data, name)
        for data, name in zip(record[KEY], record[NAMES], strict=True)
    ]


def train_image(
    record: Mapping[str, Any], rng: np.random.Generator, size: int, spec: augment.AugmentSpec
) -> np.ndarray:
    """The augmented training image (size, size, C) of a record; C = 1 without neighbours."""
    slices = _decoded(record)
    if len(slices) == 1:  # today's path, draw for draw
        return augment.augment(rng, preprocess.pad_to_square(slices[0]), size, spec)
    channels = [
        augment.augment(copy.deepcopy(rng), preprocess.pad_to_square(s), size, spec) for s in slices
    ]
    return np.concatenate(channels, axis=-1)


def eval_image(record: Mapping[str, Any], size: int) -> np.ndarray:
    """The evaluation image (size, size, C) of a record; C = 1 without neighbours."""
    channels = [preprocess.to_model_input(s, size) for s in _decoded(record)]
    return channels[0] if len(channels) == 1 else np.concatenate(channels, axis=-1)
