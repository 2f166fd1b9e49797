"""Finds, builds and opens the `adni` TFDS data set named by a config's `data` section.

Uses the user's ADNI folder (`data.manual_dir`) or, when that is unset and `data.synthetic_seed`
is set, a synthetic stand-in generated once under `data.data_dir`. Builds the TFDS data set on
first use (process 0 only; the others wait), then exposes random-access sources for Grain, the
per-record metadata, the split manifest and a fingerprint of the data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from jax.experimental import multihost_utils

from alz_jax.data import protocols
from alz_jax.host import storage
from alz_jax.host.errors import UserError, check_fields
from tfds_builders import adni as adni_builder
from tfds_builders.adni import layout, synthetic

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which data set a run reads and how it is split (config.data, less the input pipeline's
    fields): the user's folder or a synthetic stand-in, where TFDS keeps the build, and the
    protocol."""

    data_dir: str = "~/tensorflow_datasets"
    manual_dir: str | None = None
    synthetic_seed: int | None = None
    synthetic_train_subjects: int = 150
    synthetic_test_subjects: int = 60
    validation_fraction: float = 0.1
    split_seed: int = 0
    protocol: str = "official"
    resplit_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    num_folds: int = 5
    fold: int = 0
    slice_range: str = ""

    def __post_init__(self):
        f = self.validation_fraction
        check_fields("data", [
            ("validation_fraction", f, 0.0 < f < 1.0,
             "in (0, 1): validation picks the best checkpoint"),
            ("protocol", self.protocol, self.protocol in protocols.PROTOCOLS,
             "|".join(protocols.PROTOCOLS)),
        ])  # fmt: skip


_METADATA_FIELDS = ("file_name", "scan_id", "subject_id", "label", "slice_index")
_TEXT_FIELDS = ("file_name", "scan_id", "subject_id")


class SubsetSource:
    """Random access to chosen records of several TFDS sources (a protocol's split)."""

    def __init__(self, sources: list, source_id: np.ndarray, index: np.ndarray):
        self._sources, self._source_id, self._index = sources, source_id, index

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int):
        return self._sources[int(self._source_id[i])][int(self._index[i])]

    def __repr__(self) -> str:
        return f"SubsetSource({len(self)} records)"


def _read_metadata(source) -> dict[str, np.ndarray]:
    rows = {k: [] for k in _METADATA_FIELDS}
    for start in range(0, len(source), 1024):
        for example in source.__getitems__(range(start, min(start + 1024, len(source)))):
            for k in _METADATA_FIELDS:
                value = example[k]
                rows[k].append(value.decode() if isinstance(value, bytes) else value)
    return {
        k: np.asarray(v, dtype=object if k in _TEXT_FIELDS else np.int64) for k, v in rows.items()
    }


@dataclasses.dataclass
class AdniData:
    """The prepared data set seen through a protocol: sources per split, metadata, provenance.

    `pooled` holds every record of the builder's splits (builder_split, local index and the
    metadata fields); `positions[split]` are the pooled records of a protocol split.
    """

    builder: tfds.core.DatasetBuilder
    manual_dir: Path
    data_dir: epath.Path
    pooled: dict[str, np.ndarray]
    positions: dict[str, np.ndarray]
    protocol: dict

    @property
    def metadata(self) -> dict:
        """What the builder recorded: audit, subject source, content hash, counts."""
        return dict(self.builder.info.metadata)

    def num_examples(self, split: str) -> int:
        """Number of images in a protocol split."""
        return len(self.positions[split])

    def source(self, split: str) -> SubsetSource:
        """Random-access source of a protocol split; `image` stays undecoded JPEG bytes."""
        sources = [
            self.builder.as_data_source(split=s, decoders={"image": tfds.decode.SkipDecoding()})
            for s in SPLITS
        ]
        pos = self.positions[split]
        return SubsetSource(sources, self.pooled["source_id"][pos], self.pooled["local_index"][pos])

    def records(self, split: str) -> dict[str, np.ndarray]:
        """Per-record metadata of a split, in source order: file_name, scan_id, subject_id, ..."""
        pos = self.positions[split]
        return {k: self.pooled[k][pos] for k in _METADATA_FIELDS}

    def manifest(self) -> dict:
        """Which subjects and scans are in which split, and the protocol that put them there."""
        out = {"protocol": self.protocol}
        for split in SPLITS:
            r = self.records(split)
            scans: dict[str, dict] = {}
            for scan, subject, label in zip(r["scan_id"], r["subject_id"], r["label"], strict=True):
                entry = scans.setdefault(
                    scan, {"subject": subject, "label": int(label), "images": 0}
                )
                entry["images"] += 1
            out[split] = {
                "subjects": sorted({e["subject"] for e in scans.values()}),
                "scans": dict(sorted(scans.items())),
            }
        return out

    def fingerprint(self) -> str:
        """Hash of the image bytes, labels, subjects and split membership."""
        payload = json.dumps(
            {"content": self.metadata["content_sha256"], "manifest": self.manifest()},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def report_metadata(self) -> dict:
        """What a report states about the data: subjects' source and coverage, the protocol, and
        how many test subjects also have images in train or validation (None if unknowable)."""
        meta = self.metadata
        known = meta.get("subject_source") != "scan_id"
        manifest = self.manifest()
        trained = set(manifest["train"]["subjects"]) | set(manifest["validation"]["subjects"])
        shared = len(set(manifest["test"]["subjects"]) & trained)
        return {
            "subject_source": meta.get("subject_source"),
            "subject_coverage": meta.get("subject_coverage"),
            "test_subjects_also_in_train": shared if known else None,
            "protocol": self.protocol,
        }


def _resolve_dirs(data_config: DataSpec) -> tuple[Path, epath.Path, int | None]:
    data_dir = storage.path(data_config.data_dir)  # local or gs://: TFDS reads both
    if data_config.manual_dir:
        return Path(os.path.expanduser(data_config.manual_dir)).resolve(), data_dir, None
    if data_config.synthetic_seed is not None:
        if storage.is_url(data_dir):
            raise UserError(
                f"data.data_dir = {data_config.data_dir}: the synthetic stand-in is generated "
                "on a local disk; give a local data.data_dir (or a data.manual_dir)."
            )
        seed = int(data_config.synthetic_seed)
        data_dir = Path(data_dir)
        root = data_dir / f"synthetic_{synthetic.tag(_synthetic_spec(data_config), seed)}"
        return (root / "manual").resolve(), root / "tfds", seed
    raise UserError(
        "No ADNI data given: set --config.data.manual_dir=DIR, where DIR holds "
        "AD_NC/{train,test}/{AD,NC}/<scanID>_<slice>.jpeg.\n\n"
        + adni_builder.adni_dataset_builder.MANUAL_DOWNLOAD_INSTRUCTIONS
        + "\nTo try the project without ADNI: python -m alz_jax.main --config=configs/demo.py "
        "--workdir=DIR"
    )


def _synthetic_spec(data_config) -> synthetic.SyntheticSpec:
    return synthetic.SyntheticSpec(
        train_subjects=data_config.synthetic_train_subjects,
        test_subjects=data_config.synthetic_test_subjects,
    )


def _ensure_synthetic(manual_dir: Path, seed: int, data_config) -> None:
    marker = manual_dir / ".complete"
    if marker.exists():
        return
    shutil.rmtree(manual_dir, ignore_errors=True)  # an interrupted earlier generation
    spec = _synthetic_spec(data_config)
    logging.info("Generating the synthetic AD_NC set (seed %d) in %s", seed, manual_dir)
    summary = synthetic.generate(manual_dir, seed=seed, spec=spec)
    marker.write_text(json.dumps({"seed": seed, "summary": summary}))


def _build(builder, manual_dir, data_dir, synthetic_seed, data_config, timer) -> None:
    if synthetic_seed is not None:
        with timer("generate synthetic data"):
            _ensure_synthetic(manual_dir, synthetic_seed, data_config)
    elif not manual_dir.is_dir():
        raise UserError(
            f"ADNI folder {manual_dir} (data.manual_dir) does not exist.\n\n"
            + adni_builder.adni_dataset_builder.MANUAL_DOWNLOAD_INSTRUCTIONS
        )
    else:
        try:
            layout.find_root(manual_dir)
        except layout.LayoutError as e:
            raise UserError(
                f"{e}\n\n{adni_builder.adni_dataset_builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            ) from e
    logging.info("Building the adni TFDS data set from %s into %s", manual_dir, data_dir)
    with timer("build TFDS data set"):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
        )


def prepare(data_config: DataSpec, timer=None) -> AdniData:
    """Opens the data set a config names, generating and building it first if needed.

    `timer(name)`, if given, is a context manager that times the generate and build stages.
    """
    timer = timer or (lambda name: contextlib.nullcontext())
    manual_dir, data_dir, synthetic_seed = _resolve_dirs(data_config)
    builder_config = adni_builder.config_for(
        data_config.validation_fraction, data_config.split_seed
    )

    def make_builder():
        return adni_builder.Builder(
            data_dir=os.fspath(data_dir), config=builder_config, file_format="array_record"
        )

    builder = make_builder()
    # Process 0 builds; every process meets at the barrier, and learns whether the build failed,
    # so none waits forever. data_dir must be on storage that every host sees.
    error = None
    if jax.process_index() == 0 and not builder.is_prepared():
        try:
            _build(builder, manual_dir, data_dir, synthetic_seed, data_config, timer)
        except (UserError, layout.LayoutError) as e:
            error = e
    if jax.process_count() > 1:
        failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if failed and error is None:
            raise UserError("Process 0 failed to build the adni data set; see its log.")
    if error is not None:
        raise error
    builder = make_builder()
    if not builder.is_prepared():
        raise UserError(
            f"The adni data set is not in {data_dir} on process {jax.process_index()}: "
            "data.data_dir must be on storage that every host sees."
        )
    built_from = builder.info.metadata.get("manual_dir")
    if built_from != os.fspath(manual_dir):
        raise UserError(
            f"The adni data set in {data_dir} was built from {built_from}, but the config asks "
            f"for {manual_dir}. Use another --config.data.data_dir, or delete "
            f"{builder.data_dir} to rebuild."
        )
    pooled, positions, protocol = _apply_protocol(builder, data_config)
    return AdniData(
        builder=builder,
        manual_dir=manual_dir,
        data_dir=data_dir,
        pooled=pooled,
        positions=positions,
        protocol=protocol,
    )


def _apply_protocol(builder, data_config):
    parts = []
    for source_id, split in enumerate(SPLITS):
        source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        part = _read_metadata(source)
        part["builder_split"] = np.full(len(source), split, dtype=object)
        part["source_id"] = np.full(len(source), source_id, dtype=np.int32)
        part["local_index"] = np.arange(len(source), dtype=np.int64)
        parts.append(part)
    pooled = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    try:
        positions = protocols.assign(pooled, data_config)
    except ValueError as e:
        raise UserError(str(e)) from e
    for split, pos in positions.items():
        if not len(pos):
            raise UserError(f"The {split} split of protocol {data_config.protocol!r} is empty.")
    protocol = {
        "name": data_config.protocol,
        "slice_range": data_config.slice_range,
        "split_seed": data_config.split_seed,
    }
    if protocol["slice_range"]:
        window = protocols.parse_slice_range(
            protocol["slice_range"], pooled["slice_index"], pooled["label"]
        )
        protocol["slice_window"] = list(window)
    if protocol["name"] == "resplit":
        protocol["fractions"] = list(data_config.resplit_fractions)
    if protocol["name"] == "kfold":
        protocol.update(num_folds=data_config.num_folds, fold=data_config.fold)
    return pooled, positions, protocol
