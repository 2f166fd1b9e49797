"""TFDS builder `adni`: the ADNI AD_NC 2D slice set, or a dementia-stage collection, with
subject-aware splits.

TFDS "manual download": the user obtains the data and points `manual_dir` at it. Images are
stored as their original bytes in array_record files (random access for Grain); decoding happens
in the input pipeline. The builder config names the layout (a registered plug-in,
`layouts.registry`) and its classes. Splits (`splits.builder_splits`): `train` and `validation`
(carved from the train folder by subject, stratified by class, seeded) and `test` (the test
folder); a `val` folder is used as it is; a layout without split folders is split by subject
70/15/15, stratified by class, seeded.

The TFDS data set keeps its name, `adni` (and so the layout of the builds under data_dir),
whatever module holds the builder.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from . import audit as audit_lib
from . import progress
from . import splits as splits_lib
from .layouts import adni, registry
from .layouts.base import LIST_LIMIT, ImageRecord, Layout, LayoutError

_DESCRIPTION = """\
2D sagittal MRI slices of the ADNI "AD_NC" set (Alzheimer's disease vs normal control), 20
slices per scan, 256x240 grayscale JPEG. Splits are made by subject: no subject of `validation`
has a visit in `train`. The official `test` folder shares subjects with `train` (see
report_test.json's `test_subjects_also_in_train`).
"""

# Where they were before the layouts had a registry (callers read them here).
MANUAL_DOWNLOAD_INSTRUCTIONS = registry.MANUAL_DOWNLOAD_INSTRUCTIONS
NO_FOLDER_FRACTIONS = splits_lib.NO_FOLDER_FRACTIONS


class AdniConfig(tfds.core.BuilderConfig):
    """The layout and classes of the data, and how the validation split is carved out."""

    def __init__(
        self, *, validation_fraction: float = 0.1, split_seed: int = 0, layout: str = "adni",
        class_names: tuple[str, ...] = adni.CLASS_NAMES, label_names: tuple[str, ...] = (),
        group_near_duplicates: bool = False, pooled: bool = False, **kwargs,
    ):  # fmt: skip
        super().__init__(**kwargs)
        self.validation_fraction = validation_fraction
        self.split_seed = split_seed
        self.layout = layout
        self.class_names = tuple(class_names)
        self.label_names = tuple(label_names)
        self.group_near_duplicates = group_near_duplicates
        # Every image in `test`, none in train or validation: a cohort only evaluated on.
        self.pooled = pooled


def config_name(
    validation_fraction: float, split_seed: int, layout: str = "adni",
    class_names: tuple[str, ...] = adni.CLASS_NAMES, label_names: tuple[str, ...] = (),
    group_near_duplicates: bool = False, pooled: bool = False,
) -> str:  # fmt: skip
    """Canonical builder-config name ('default' for ADNI with 0.1, 0): the layout, a hash of its
    classes, the validation fraction and the seed (and `_ndgroups` with near-duplicate groups
    as subjects, `_pooled` with every image in test)."""
    split = f"val{validation_fraction:g}_seed{split_seed}".replace(".", "p")
    if layout == "adni" and tuple(class_names) == adni.CLASS_NAMES and not label_names:
        name = "default" if (validation_fraction, split_seed) == (0.1, 0) else split
    else:
        classes = hashlib.sha256(json.dumps([class_names, label_names]).encode()).hexdigest()[:8]
        name = f"{layout}_{classes}_{split}"
    return name + ("_ndgroups" if group_near_duplicates else "") + ("_pooled" if pooled else "")


def make_config(
    validation_fraction: float = 0.1, split_seed: int = 0, layout: str = "adni",
    class_names: tuple[str, ...] = adni.CLASS_NAMES, label_names: tuple[str, ...] = (),
    group_near_duplicates: bool = False, pooled: bool = False,
) -> AdniConfig:  # fmt: skip
    """The builder config for a layout, its classes, a validation fraction and split seed."""
    name = config_name(
        validation_fraction, split_seed, layout, class_names, label_names, group_near_duplicates,
        pooled,
    )  # fmt: skip
    return AdniConfig(
        name=name,
        description=f"{layout} layout, classes {', '.join(class_names)}; validation: "
        f"{validation_fraction:g} of train subjects, seed {split_seed}"
        + ("; subjects: groups of near-identical images" if group_near_duplicates else "")
        + ("; every image in test (a cohort evaluated on)" if pooled else ""),
        validation_fraction=validation_fraction,
        split_seed=split_seed,
        layout=layout,
        class_names=class_names,
        label_names=label_names,
        group_near_duplicates=group_near_duplicates,
        pooled=pooled,
    )


def config_for(
    validation_fraction: float = 0.1, split_seed: int = 0, layout: str = "adni",
    class_names: tuple[str, ...] = adni.CLASS_NAMES, label_names: tuple[str, ...] = (),
    group_near_duplicates: bool = False, pooled: bool = False,
) -> str | AdniConfig:  # fmt: skip
    """What to pass as `Builder(config=...)`: a registered config's name, or a custom config."""
    args = (validation_fraction, split_seed, layout, class_names, label_names,
            group_near_duplicates, pooled)  # fmt: skip
    name = config_name(*args)
    if name in {c.name for c in Builder.BUILDER_CONFIGS}:
        return name
    return make_config(*args)


def _warn_skipped(parsed: Layout, checks: dict) -> None:
    """One warning per unusable image and stray file, the first LIST_LIMIT of each kind by name
    (thousands of lines would bury the rest of the log), then one with the count; the audit in
    the data set's metadata names them all. Nothing is skipped silently."""
    limit = LIST_LIMIT
    by_kind: dict[str, list[str]] = collections.defaultdict(list)
    for r in parsed.records:
        check = checks[r.file_name]
        if check.problem:
            by_kind[check.problem].append(f"{r.path} ({check.problem}: {check.detail})")
    by_kind["stray"] = [f"{path} (a stray non-image file)" for path in parsed.stray_files]
    for kind, skipped in by_kind.items():
        for line in skipped[:limit]:
            logging.warning("Skipping %s", line)
        if len(skipped) > limit:
            logging.warning(
                "Skipping %d more %s files; all in the audit JSON (the data set's metadata).",
                len(skipped) - limit, kind,
            )  # fmt: skip


def _class_distribution(parsed: Layout, splits: dict[str, list[ImageRecord]]) -> dict:
    """Images per class of every built split (usable images only)."""
    return {
        name: {cls: sum(r.label == k for r in records) for k, cls in enumerate(parsed.class_names)}
        for name, records in splits.items()
    }


def _with_built_splits(entry: dict, parsed: Layout, splits: dict[str, list[ImageRecord]]) -> dict:
    """The audit's missing_classes with the built splits added, warned about once per class:
    whether a run refuses them is the trainer's policy (alz_jax: data.allow_missing_classes)."""
    built = audit_lib.missing_classes_entry(
        parsed.class_names, {}, _class_distribution(parsed, splits)
    )
    missing = {cls: dict(where) for cls, where in entry["classes"].items()}
    for cls, where in built["classes"].items():
        missing.setdefault(cls, {"folders": [], "notes": []})
        missing[cls]["built_splits"] = where["built_splits"]
    ordered = {cls: missing[cls] for cls in parsed.class_names if cls in missing}
    merged = {"count": len(ordered), "classes": ordered}
    for line in audit_lib.format_missing_classes(merged):
        logging.warning("%s.", line)
    return merged


class _LocalDatasetInfo(tfds.core.DatasetInfo):
    """DatasetInfo that never looks for precomputed info in TFDS's public bucket: ADNI is never
    there, and each lookup leaves an empty temporary folder behind (one per unprepared build)."""

    def initialize_from_bucket(self) -> None:
        """Nothing to fetch: the info comes from the build."""


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for 2D MRI slice collections of every registered layout (manual download).

    Named `adni` explicitly: TFDS would otherwise name a `Builder` after its module, and the
    name is part of every build's path (<data_dir>/.../adni/<config>/<version>)."""

    name = "adni"
    # TFDS finds a builder's files (its metadata, checksums) from the top package's folder plus
    # the module path, which misses this folder in a source checkout: it installs as
    # alz_jax.tfds_builders (pyproject.toml's package-dir) but lives in tfds_builders/.
    code_path = epath.Path(__file__)
    pkg_dir_path = code_path.parent

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Subject-aware splits, original JPEG bytes."}  # noqa: RUF012
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [make_config()]  # noqa: RUF012

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        size = registry.get(config.layout).image_size
        shape = (size[1], size[0], 1) if size is not None else (None, None, 1)
        return _LocalDatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=shape, encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=list(config.class_names)),
                    "scan_id": tfds.features.Text(),
                    "subject_id": tfds.features.Text(),
                    "slice_index": np.int32,
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://adni.loni.usc.edu",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = Path(dl_manager.manual_dir)
        config = self.builder_config
        parsed = registry.parse(manual_dir, config.layout, config.label_names)
        if parsed.class_names != config.class_names:
            raise LayoutError(
                f"{manual_dir} has the classes {list(parsed.class_names)}, but this build was "
                f"asked for {list(config.class_names)} (the folder changed while it was read?)."
            )
        audit, checks = audit_lib.run(parsed)
        logging.info("Audit of the data folder:\n%s", audit_lib.format_table(audit))
        _warn_skipped(parsed, checks)
        conflicts = audit["label_conflicts"]
        if conflicts["count"]:
            # Warned here; whether a run refuses them is the trainer's policy (alz_jax).
            logging.warning(
                "%d of %d scans with a label in %s are in the other class folder (the label "
                "contradicts the folder): %s",
                conflicts["count"], conflicts["scans_with_metadata_label"],
                adni.METADATA_JSON, audit_lib.format_conflicts(conflicts),
            )  # fmt: skip
        usable = [r for r in parsed.records if not checks[r.file_name].problem]
        # A pooled build puts every image in test: a split folder may be empty (all test).
        for folder in () if config.pooled else parsed.folder_splits or ("",):
            if not any(r.folder_split == folder for r in usable):
                raise LayoutError(
                    f"{parsed.root / folder} holds no usable image (all unreadable, empty or "
                    "off-size); see the warnings above and the audit's `unusable` entry."
                )
        parsed = dataclasses.replace(parsed, records=usable)
        if config.group_near_duplicates:
            parsed = splits_lib.grouped_by_near_duplicates(parsed, audit["near_duplicate_pairs"])
        hashes = {n: c.sha256 for n, c in checks.items()}
        splits = self._splits(parsed)
        audit["missing_classes"] = _with_built_splits(audit["missing_classes"], parsed, splits)
        self._record_metadata(manual_dir, parsed, splits, audit, hashes)
        total = sum(len(records) for records in splits.values())
        written = progress.Progress("Build: examples written", total, unit="examples")
        # TFDS writes no empty split: a pooled build has `test` alone.
        return {
            name: self._generate_examples(records, parsed.subject_of_scan, written)
            for name, records in splits.items()
            if records or not self.builder_config.pooled
        }

    def _splits(self, parsed: Layout) -> dict[str, list[ImageRecord]]:
        """train, validation and test, as `splits.builder_splits` decides them."""
        config = self.builder_config
        return splits_lib.builder_splits(
            parsed, config.validation_fraction, config.split_seed, config.pooled
        )

    def _record_metadata(
        self,
        manual_dir: Path,
        parsed: Layout,
        splits: dict,
        audit: dict,
        hashes: dict[str, str],
    ) -> None:
        """Stores the split manifest and a content fingerprint beside the data set."""
        manifest = {}
        for name, records in splits.items():
            scans: dict[str, dict] = {}
            for r in records:
                entry = scans.setdefault(
                    r.scan_id,
                    {"subject": parsed.subject_of_scan[r.scan_id], "label": r.label, "images": 0},
                )
                entry["images"] += 1
            manifest[name] = dict(sorted(scans.items()))
        subjects_of = {n: {s["subject"] for s in scans.values()} for n, scans in manifest.items()}
        shared = subjects_of["test"] & (subjects_of["train"] | subjects_of["validation"])
        counts = {n: len(records) for n, records in splits.items()}
        if parsed.subject_source == "scan_id":
            logging.warning(
                "Subjects unknown: splits are by scan, and visits of one subject may straddle them."
            )
        audit = dict(audit)
        # Every pair of near-identical images, by file name: a report checks its own test split
        # against them (the audit keeps the summary).
        pairs = audit.pop("near_duplicate_pairs")
        self.info.metadata.update(
            {
                "layout": parsed.kind,
                "class_names": list(parsed.class_names),
                "folder_splits": list(parsed.folder_splits),
                "near_duplicate_pairs": pairs,
                "class_distribution": _class_distribution(parsed, splits),
                "manual_dir": str(manual_dir.resolve()),
                "subject_source": parsed.subject_source,
                "subject_coverage": parsed.subject_coverage,
                "validation_fraction": self.builder_config.validation_fraction,
                "split_seed": self.builder_config.split_seed,
                "content_sha256": hashlib.sha256(
                    "".join(
                        f"{r.file_name}:{hashes[r.file_name]};"
                        for r in sorted(parsed.records, key=lambda r: r.file_name)
                    ).encode()
                ).hexdigest(),
                "skipped": {
                    **{k: v["count"] for k, v in audit["unusable"].items()},
                    "stray_files": audit["stray_files"]["count"],
                },
                "audit": audit,
                "images_per_split": counts,
                # Unknowable when scans stand in for subjects (a scan is in one folder only).
                "test_subjects_also_in_train": (
                    len(shared) if parsed.subject_source != "scan_id" else None
                ),
                "manifest": manifest,
                # A volume layout's volumes, slicing settings and skipped volumes.
                **parsed.extra_metadata,
            }
        )
        logging.info(
            "Splits: %s images; subjects from %s; %d test subjects also in train.",
            ", ".join(f"{name} {n}" for name, n in counts.items()),
            parsed.subject_source,
            len(shared),
        )

    # TFDS prints these two with the full sizes and paths (~230 characters); the caller logs the
    # build itself.
    def _log_download_bytes(self) -> None:
        """Nothing: the caller says what is built where."""

    def _log_download_done(self) -> None:
        """One short line."""
        logging.info("Built the adni data set in %s", self.data_dir)

    def _generate_examples(
        self, records: list[ImageRecord], subject_of_scan: dict, written: progress.Progress
    ):
        """One split's examples; `written` counts them over all splits (progress lines)."""
        for r in records:
            yield (
                r.file_name,
                {
                    # Original bytes, unchanged: decoding happens in the Grain workers.
                    "image": r.read_bytes(),
                    "label": r.label,
                    "scan_id": r.scan_id,
                    "subject_id": subject_of_scan[r.scan_id],
                    "slice_index": r.slice_index,
                    "file_name": r.file_name,
                },
            )
            written.update()
        if written.done == written.total:
            written.finish()
