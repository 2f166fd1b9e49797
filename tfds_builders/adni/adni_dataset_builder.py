"""TFDS builder `adni`: the ADNI AD_NC 2D slice set, with subject-aware splits.

TFDS "manual download": the user obtains ADNI and points `manual_dir` at it. Images are stored as
their original JPEG bytes in array_record files (random access for Grain); decoding happens in the
input pipeline. Splits: `train` and `validation` (carved from the train folder by subject,
stratified by class, seeded) and `test` (the test folder).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders.adni import audit as audit_lib
from tfds_builders.adni import layout as layout_lib

_DESCRIPTION = """\
2D sagittal MRI slices of the ADNI "AD_NC" set (Alzheimer's disease vs normal control), 20
slices per scan, 256x240 grayscale JPEG. Splits are made by subject: no subject of `validation`
has a visit in `train`. The official `test` folder shares subjects with `train` (see
report_test.json's `test_subjects_also_in_train`).
"""

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
"""


class AdniConfig(tfds.core.BuilderConfig):
    """How the validation split is carved out of the train folder."""

    def __init__(self, *, validation_fraction: float = 0.1, split_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.validation_fraction = validation_fraction
        self.split_seed = split_seed


def config_name(validation_fraction: float, split_seed: int) -> str:
    """Canonical builder-config name for a validation fraction and seed ('default' for 0.1, 0)."""
    if (validation_fraction, split_seed) == (0.1, 0):
        return "default"
    return f"val{validation_fraction:g}_seed{split_seed}".replace(".", "p")


def make_config(validation_fraction: float = 0.1, split_seed: int = 0) -> AdniConfig:
    """The builder config for a validation fraction and split seed."""
    return AdniConfig(
        name=config_name(validation_fraction, split_seed),
        description=f"validation: {validation_fraction:g} of train subjects, seed {split_seed}",
        validation_fraction=validation_fraction,
        split_seed=split_seed,
    )


def config_for(validation_fraction: float = 0.1, split_seed: int = 0) -> str | AdniConfig:
    """What to pass as `Builder(config=...)`: a registered config's name, or a custom config."""
    name = config_name(validation_fraction, split_seed)
    if name in {c.name for c in Builder.BUILDER_CONFIGS}:
        return name
    return make_config(validation_fraction, split_seed)


def _warn_skipped(parsed: layout_lib.Layout, checks: dict) -> None:
    """One warning per unusable image and stray file, the first LIST_LIMIT of each kind by name
    (thousands of lines would bury the rest of the log), then one with the count; the audit in
    the data set's metadata names them all. Nothing is skipped silently."""
    limit = layout_lib.LIST_LIMIT
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


class _LocalDatasetInfo(tfds.core.DatasetInfo):
    """DatasetInfo that never looks for precomputed info in TFDS's public bucket: ADNI is never
    there, and each lookup leaves an empty temporary folder behind (one per unprepared build)."""

    def initialize_from_bucket(self) -> None:
        """Nothing to fetch: the info comes from the build."""


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the ADNI AD_NC slice set (manual download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Subject-aware splits, original JPEG bytes."}  # noqa: RUF012
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [make_config()]  # noqa: RUF012

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalDatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(layout_lib.IMAGE_HEIGHT, layout_lib.IMAGE_WIDTH, 1),
                        encoding_format="jpeg",
                    ),
                    "label": tfds.features.ClassLabel(names=list(layout_lib.CLASS_NAMES)),
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
        parsed = layout_lib.parse(manual_dir)
        audit, checks = audit_lib.run(parsed)
        logging.info("Audit of the ADNI folder:\n%s", audit_lib.format_table(audit))
        _warn_skipped(parsed, checks)
        conflicts = audit["label_conflicts"]
        if conflicts["count"]:
            # Warned here; whether a run refuses them is the trainer's policy (alz_jax).
            logging.warning(
                "%d of %d scans with a label in %s are in the other class folder (the label "
                "contradicts the folder): %s",
                conflicts["count"], conflicts["scans_with_metadata_label"],
                layout_lib.METADATA_JSON, audit_lib.format_conflicts(conflicts),
            )  # fmt: skip
        usable = [r for r in parsed.records if not checks[r.file_name].problem]
        for folder in layout_lib.SPLIT_FOLDERS:
            if not any(r.folder_split == folder for r in usable):
                raise layout_lib.LayoutError(
                    f"{parsed.root / folder} holds no usable image (all unreadable, empty or "
                    "off-size); see the warnings above and the audit's `unusable` entry."
                )
        parsed = dataclasses.replace(parsed, records=usable)
        hashes = {n: c.sha256 for n, c in checks.items()}
        train_folder = parsed.records_in("train")
        val_subjects = layout_lib.validation_subjects(
            train_folder,
            parsed.subject_of_scan,
            self.builder_config.validation_fraction,
            self.builder_config.split_seed,
        )
        splits = {
            "train": [
                r for r in train_folder if parsed.subject_of_scan[r.scan_id] not in val_subjects
            ],
            "validation": [
                r for r in train_folder if parsed.subject_of_scan[r.scan_id] in val_subjects
            ],
            "test": parsed.records_in("test"),
        }
        if not splits["validation"]:
            raise layout_lib.LayoutError(
                "The validation split would be empty: it takes "
                f"{self.builder_config.validation_fraction:g} of the train folder's subjects per "
                "class, rounded, and at least one where a class has two or more subjects. Found "
                f"{len({parsed.subject_of_scan[r.scan_id] for r in train_folder})} subjects in "
                f"{parsed.root / 'train'}."
            )
        self._record_metadata(manual_dir, parsed, splits, audit, hashes)
        return {
            name: self._generate_examples(records, parsed.subject_of_scan)
            for name, records in splits.items()
        }

    def _record_metadata(
        self,
        manual_dir: Path,
        parsed: layout_lib.Layout,
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
        self.info.metadata.update(
            {
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
            }
        )
        logging.info(
            "ADNI splits: %s images; subjects from %s; %d test subjects also in train.",
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

    def _generate_examples(self, records: list[layout_lib.ImageRecord], subject_of_scan: dict):
        for r in records:
            yield (
                r.file_name,
                {
                    # Original bytes, unchanged: decoding happens in the Grain workers.
                    "image": r.path.read_bytes(),
                    "label": r.label,
                    "scan_id": r.scan_id,
                    "subject_id": subject_of_scan[r.scan_id],
                    "slice_index": r.slice_index,
                    "file_name": r.file_name,
                },
            )
