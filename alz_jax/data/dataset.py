"""Finds, builds and opens the `adni` TFDS data set named by a config's `data` section.

Uses the user's ADNI folder (`data.manual_dir`) or, when that is unset and `data.synthetic_seed`
is set, a synthetic stand-in generated once under `data.data_dir`. Builds the TFDS data set on
first use (process 0 only; the others wait), then exposes random-access sources for Grain, the
per-record metadata, the split manifest and a fingerprint of the data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from jax.experimental import multihost_utils

from alz_jax.data import calibration_split, data_spec
from alz_jax.data.data_spec import DataSpec  # re-exported: callers use dataset.DataSpec
from alz_jax.host import logs, storage
from alz_jax.host.errors import UserError
from alz_jax.tfds_builders.mri_slices import api as slices

SPLITS = ("train", "validation", "test")
# The protocol split that data.calibration_fraction > 0 adds (carved out of train by subject).
CALIBRATION = calibration_split.CALIBRATION


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


def _split_source(builder: tfds.core.DatasetBuilder, split: str):
    """Random access to a built split, images undecoded; an empty list for a split the build
    does not have (a pooled build, for a cohort only evaluated on, has `test` alone)."""
    if split not in builder.info.splits:
        return []
    return builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})


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
    metadata fields); `positions[split]` are the pooled records of a protocol split: train,
    validation, test and, with data.calibration_fraction > 0, calibration (`split_names`).
    """

    builder: tfds.core.DatasetBuilder
    manual_dir: Path
    data_dir: epath.Path
    pooled: dict[str, np.ndarray]
    positions: dict[str, np.ndarray]
    protocol: dict
    source_fingerprint: str = ""  # of the data folder the build was made from

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes in label order (NC, AD; or the stages)."""
        return tuple(self.builder.info.features["label"].names)

    @property
    def metadata(self) -> dict:
        """What the builder recorded: audit, subject source, content hash, counts."""
        return dict(self.builder.info.metadata)

    @property
    def split_names(self) -> tuple[str, ...]:
        """The protocol's splits: SPLITS, then "calibration" where the data set has one."""
        return SPLITS + ((CALIBRATION,) if CALIBRATION in self.positions else ())

    def has_split(self, name: str) -> bool:
        """Whether the protocol has this split ("calibration" only with
        data.calibration_fraction > 0)."""
        return name in self.split_names

    def split_sizes(self) -> str:
        """Each split's images and subjects, for a run's start line: `train 800 images (40
        subjects), ...`."""
        return ", ".join(
            f"{s} {self.num_examples(s)} images ({len(set(self.records(s)['subject_id']))} "
            "subjects)"
            for s in self.split_names
        )

    def num_examples(self, split: str) -> int:
        """Number of images in a protocol split."""
        return len(self.positions[split])

    def source(self, split: str) -> SubsetSource:
        """Random-access source of a protocol split; `image` stays undecoded JPEG bytes."""
        sources = [_split_source(self.builder, s) for s in SPLITS]
        pos = self.positions[split]
        return SubsetSource(sources, self.pooled["source_id"][pos], self.pooled["local_index"][pos])

    def records(self, split: str) -> dict[str, np.ndarray]:
        """Per-record metadata of a split, in source order: file_name, scan_id, subject_id, ..."""
        pos = self.positions[split]
        return {k: self.pooled[k][pos] for k in _METADATA_FIELDS}

    def manifest(self) -> dict:
        """Which subjects and scans are in which split, and the protocol that put them there."""
        out = {"protocol": self.protocol}
        for split in self.split_names:
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
        out = {
            "source_fingerprint": self.source_fingerprint,
            "subject_source": meta.get("subject_source"),
            "subject_coverage": meta.get("subject_coverage"),
            "test_subjects_also_in_train": shared if known else None,
            "protocol": self.protocol,
            "layout": meta.get("layout", "adni"),
            "class_names": list(self.class_names),
            # Dementia stages are an ordinal scale; other class sets are in name order only.
            "classes_ordered": set(self.class_names) <= set(slices.STAGES),
            "class_distribution": self.class_distribution(),
            "cross_split_near_duplicates": self.cross_split_near_duplicates(),
        }
        if self.has_split(CALIBRATION):
            # Calibration subjects are not trained on, but sharing subjects with test breaks
            # the exchangeability that conformal coverage rests on.
            calibrated = set(manifest[CALIBRATION]["subjects"])
            out["test_subjects_also_in_calibration"] = (
                len(set(manifest["test"]["subjects"]) & calibrated) if known else None
            )
        return out

    def class_distribution(self) -> dict[str, dict[str, int]]:
        """Images per class of every protocol split."""
        return {
            split: {
                name: int(np.sum(self.records(split)["label"] == k))
                for k, name in enumerate(self.class_names)
            }
            for split in self.split_names
        }

    def cross_split_near_duplicates(self) -> dict | None:
        """How many test images of this protocol have a near-identical image in train or
        validation (from the pairs the build found), and, where subjects are known, how that
        agrees with the subjects in both; None for builds made before pairs were stored."""
        pairs = self.metadata.get("near_duplicate_pairs")
        if pairs is None:
            return None
        split_of, subject_of = {}, {}
        for split in self.split_names:
            r = self.records(split)
            for name, subject in zip(r["file_name"], r["subject_id"], strict=True):
                split_of[name], subject_of[name] = split, subject
        known = self.metadata.get("subject_source") != "scan_id"
        return slices.cross_split_entry(split_of, subject_of if known else None, pairs)


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
        name = slices.synthetic_tag(
            data_config.synthetic_layout, seed, *_synthetic_sizes(data_config)
        )
        root = data_dir / f"synthetic_{name}"
        return (root / "manual").resolve(), root / "tfds", seed
    raise UserError(
        "No data folder given: set --config.data.manual_dir=DIR, DIR holding ADNI's "
        "AD_NC/{train,test}/{AD,NC}/<scanID>_<slice>.jpeg or a dementia-stage collection."
        f"\n{slices.data_error_hint(None, data_config.layout)}\nTo try the project without "
        "data: python -m alz_jax.main --config=configs/demo.py --workdir=DIR (or "
        "configs/stages_demo.py: four dementia stages)"
    )


def _synthetic_sizes(data_config: DataSpec) -> tuple[int, int, int, str]:
    """(train subjects, test subjects, subjects, difficulty) of the synthetic stand-in."""
    return (
        data_config.synthetic_train_subjects,
        data_config.synthetic_test_subjects,
        data_config.synthetic_subjects,
        data_config.synthetic_difficulty,
    )


@contextlib.contextmanager
def _writing_in(data_dir) -> Iterator[None]:
    """An OSError while writing under data.data_dir (read-only, not a folder, no permission,
    full) as a one-line UserError naming the folder and the setting."""
    try:
        yield
    except OSError as e:
        what = e.strerror or type(e).__name__
        # The path at fault where it lies outside data_dir (e.g. a parent that is a file).
        inside = not e.filename or os.fspath(e.filename).startswith(os.fspath(data_dir))
        where = "" if inside else f" ({e.filename})"
        raise UserError(
            f"data.data_dir {data_dir} cannot be written: {what}{where}. Give a folder this run "
            "can write to: --config.data.data_dir=DIR."
        ) from e


def _ensure_synthetic(manual_dir: Path, seed: int, data_config) -> None:
    marker = manual_dir / ".complete"
    if marker.exists():
        return
    shutil.rmtree(manual_dir, ignore_errors=True)  # an interrupted earlier generation
    with _writing_in(storage.path(data_config.data_dir)):
        summary = slices.generate_synthetic(
            manual_dir, data_config.synthetic_layout, seed, *_synthetic_sizes(data_config)
        )
        marker.write_text(json.dumps({"seed": seed, "summary": summary}))


def _check_source(
    manual_dir: Path, synthetic_seed, data_config, timer
) -> tuple[dict, tuple, slices.VolumeListing | None]:
    """The listing of the data folder (generating the synthetic one first), its (layout, class
    names) and, for a volume layout, its volumes, after checking that it has a layout alz_jax
    reads. A volume layout's listing also holds the slicing settings and the label table's
    hash: changing either makes another data set."""
    if synthetic_seed is not None:
        with timer("generate synthetic data"):
            _ensure_synthetic(manual_dir, synthetic_seed, data_config)
    volumes = None
    try:
        described = slices.describe_layout(
            manual_dir, data_config.layout, data_config.label_name_list,
            volume_settings=data_config.volume_settings,
        )  # fmt: skip
        if slices.is_volume_layout(described[0]):
            volumes = slices.list_volumes(manual_dir, described[0], data_config.volume_settings)
            _check_some_volumes(volumes)
    except slices.LayoutError as e:
        raise _data_error(e, manual_dir, data_config) from e
    _check_class_names(described[1], data_config)
    listing = slices.folder_listing(manual_dir)
    if volumes is not None:
        listing = slices.volume_folder_listing(
            listing, volumes.label_table, data_config.volume_settings.as_dict(),
            [str(v.path) for v in volumes.volumes],
        )  # fmt: skip
    return listing, described, volumes


def _check_some_volumes(volumes: slices.VolumeListing) -> None:
    """A UserError where the layout found no labelled volume: what it left out, by reason (the
    table's IDs not matching the folders', most often)."""
    if volumes.volumes:
        return
    left = [f"{n} {reason}" for reason, n in volumes.skipped_counts().items() if n]
    raise UserError(
        f"{volumes.root}: no volume with a label to use (table {volumes.label_table}); left out: "
        f"{'; '.join(left[:3]) or 'nothing found'}. Check that the table names the folder's "
        "subjects and sessions as they are spelled there."
    )


def _volume_slicer(volumes: slices.VolumeListing, data_config: DataSpec, build_dir, timer):
    """What cuts a volume layout's slices into <build_dir>/slices before the build (under the
    build's lock; volumes sliced by an interrupted build are kept); returns that folder."""

    def slice_into() -> str:
        """Slices the volumes (only where the build is not there yet); returns the folder."""
        if storage.is_url(build_dir):
            raise UserError(
                f"data.data_dir = {data_config.data_dir}: volumes are sliced on a file system "
                "(a local disk, or one every host mounts); build there, or give such a data_dir."
            )
        out = Path(os.fspath(build_dir)) / "slices"
        with timer("slice volumes"), _writing_in(storage.path(data_config.data_dir)):
            manifest = slices.slice_volumes(
                volumes, data_config.volume_settings, out, data_config.volume_workers
            )
        if not manifest["volumes"]:
            raise UserError(
                f"{volumes.root}: none of its {len(volumes.volumes)} volumes could be sliced; "
                "see the warnings above (each volume skipped is named with its reason)."
            )
        return os.fspath(out)

    return slice_into


def _data_error(error: slices.LayoutError, manual_dir: Path, data_config: DataSpec) -> UserError:
    """A layout error as the user sees it: its line, then the one-line hint (ADNI's where ADNI
    is meant); a path error (no folder, a file, one split of a set) alone, complete as it is."""
    if isinstance(error, slices.DataFolderError):
        return UserError(str(error))
    return UserError(f"{error}\n{slices.data_error_hint(manual_dir, data_config.layout)}")


def _check_class_names(class_names: tuple[str, ...], data_config: DataSpec) -> None:
    """Refuses class names that look like typos (a letter from a known stage or label, or from
    another class: `classes.similar_class_names`) before anything is built, unless
    `data.allow_similar_class_names`; then warns."""
    problems = slices.similar_class_names(class_names)
    if not problems:
        return
    if data_config.allow_similar_class_names:
        logging.warning("Class names %s kept as found, as configured, although %s.",
                        list(class_names), "; ".join(problems))  # fmt: skip
        return
    raise UserError(
        f"{'; '.join(problems)}: a typo? Rename the folder (or label), or set "
        "--config.data.allow_similar_class_names=true if the classes "
        f"{', '.join(class_names)} are meant as found."
    )


BUILD_PREFIX = "adni-"  # <data_dir>/adni-<fingerprint>/adni/<config>/<version>
SOURCE_FILE = "source.json"  # beside each build: the listing it was built from


def _previous_build(data_dir: Path, manual_dir: str, exclude: Path) -> dict | None:
    """The newest finished build of the same folder under `data_dir`, with its path."""
    found = []
    for path in data_dir.glob(f"{BUILD_PREFIX}*/{SOURCE_FILE}"):
        if path.parent == exclude:
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("listing", {}).get("manual_dir") == manual_dir:
            found.append(dict(record, path=path.parent))
    return max(found, key=lambda r: r.get("created", ""), default=None)


def _remove_leftovers(build_dir) -> None:
    """Removes what an interrupted build left (TFDS's incomplete.* folders), each named; only
    called while holding the build lock, so no build in progress owns them."""
    for leftover in sorted(Path(os.fspath(build_dir)).glob("adni/*/incomplete.*")):
        size = sum(p.stat().st_size for p in leftover.rglob("*") if p.is_file())
        logging.warning("Removing %s (%d bytes), left by an interrupted build.", leftover, size)
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(build_dir, data_dir):
    """Holds <build_dir>/build.lock (flock) while building: a second run that needs the same
    build waits for it, then finds it done. Object storage has no locks: nothing is held."""
    if storage.is_url(build_dir):
        yield
        return
    with _writing_in(data_dir):
        build_dir.mkdir(parents=True, exist_ok=True)
        (build_dir / "build.lock").touch()  # fails as opening it for writing would
    with open(build_dir / "build.lock", "a") as f:
        _wait_for_build(f, build_dir)
        # Who builds, for a run that waits meanwhile (emptied on release).
        f.truncate(0)
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": datetime.datetime.now(datetime.UTC)
                            .isoformat(timespec="seconds")}))  # fmt: skip
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


def _wait_for_build(f, build_dir) -> None:
    """Takes the build lock on the open file `f`; while another run holds it, logs whose build
    it waits for and how long it has waited, every logs.progress_interval_s() seconds."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    try:
        holder = json.loads((build_dir / "build.lock").read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    who = (f"PID {holder.get('pid')} on host {holder.get('host')}, started "
           f"{holder.get('started')}" if holder else "another run")  # fmt: skip
    what = f"the data set build in {build_dir} by {who}"
    start = last = time.monotonic()
    logging.info("Waiting for %s.", what)
    while True:
        time.sleep(min(1.0, logs.progress_interval_s()))
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() - last >= logs.progress_interval_s():
                last = time.monotonic()
                logging.info("Still waiting for %s; waited %s so far.", what,
                             logs.duration(last - start))  # fmt: skip
    logging.info("Waited %s for %s.", logs.duration(time.monotonic() - start), what)


def _build(make_builder, build_dir, listing: dict, data_dir, timer, source=None) -> None:
    """Builds the TFDS data set from the listed folder into `build_dir` unless it is there,
    saying how the folder changed since the last build of it. A finished build is only read:
    no lock is taken, so a data_dir on a read-only file system serves it. `source`, if given,
    makes the folder TFDS reads (a volume layout's slices) under the lock and returns it."""
    # source.json is written last: without it there is nothing finished to read (and no
    # builder is made here, each of which logs its config).
    if (build_dir / SOURCE_FILE).exists() and make_builder().is_prepared():
        return
    with _build_lock(build_dir, data_dir):
        builder = make_builder()
        if builder.is_prepared():  # another run built it while this one waited
            return
        if not storage.is_url(build_dir):
            _remove_leftovers(build_dir)
        else:
            for leftover in build_dir.glob("adni/*/incomplete.*"):
                logging.warning("%s was left by an interrupted build; delete it.", leftover)
        manual_dir = listing["manual_dir"]
        previous = _previous_build(data_dir, manual_dir, exclude=build_dir)
        if previous is not None:
            logging.warning(
                "The data folder %s changed since the data set built %s in %s: %s. Building a "
                "new one in %s; the old one is kept (delete it to free space).",
                manual_dir, previous.get("created"), previous["path"],
                slices.describe_changes(slices.folder_changes(previous["listing"], listing)),
                build_dir,
            )  # fmt: skip
        tfds_source = source() if source is not None else manual_dir
        logging.info("Building the adni TFDS data set from %s", tfds_source)
        logging.info("... into %s", build_dir)
        with timer("build TFDS data set"):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=tfds_source)
            )
        record = {
            "fingerprint": slices.folder_fingerprint(listing),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "listing": listing,
        }
        storage.write_text_atomic(build_dir / SOURCE_FILE, json.dumps(record))
        if source is not None and tfds_source != manual_dir:
            # The data set holds the slices now; their folder served only the build (and its
            # resumption).
            shutil.rmtree(tfds_source, ignore_errors=True)
            logging.info("Removed %s: the data set holds its slices.", tfds_source)


_DESCRIPTION_BYTES = 4096  # room for the layout and class names process 0 broadcasts


def _agree(error: Exception | None, found: tuple[str, tuple] | None) -> tuple[str, tuple]:
    """Process 0's (fingerprint, (layout, class names)) on every process, or process 0's error
    raised on every one (the other processes may not see the data folder)."""
    if jax.process_count() > 1:
        text = json.dumps(found if error is None else None).encode()
        if len(text) > _DESCRIPTION_BYTES:
            error = UserError(f"The class names take over {_DESCRIPTION_BYTES} bytes; shorten.")
            text = b"null"
        padded = np.frombuffer(text.ljust(_DESCRIPTION_BYTES), np.uint8)
        shared = multihost_utils.broadcast_one_to_all(padded)
        value = json.loads(bytes(np.asarray(shared, np.uint8)).decode().strip())
        if value is None and error is None:
            raise UserError("Process 0 failed to prepare the data set; see its log.")
        if value is not None:
            fingerprint, (kind, class_names) = value
            found = fingerprint, (kind, tuple(class_names))
    if error is not None:
        raise error
    return found


def prepare(data_config: DataSpec, timer=None) -> AdniData:
    """Opens the data set a config names, generating and building it first if needed.

    The build is kept under the data folder's fingerprint: a folder that changed since (files
    added, removed, repaired or touched; metadata edited) is built anew, never served from the
    old build. `timer(name)`, if given, is a context manager that times the generate and build
    stages.
    """
    timer = timer or (lambda name: contextlib.nullcontext())
    data_config = data_spec.from_config(data_config)
    manual_dir, data_dir, synthetic_seed = _resolve_dirs(data_config)

    def make_builder(build_dir, described):
        kind, class_names = described
        config = slices.config_for(
            data_config.validation_fraction, data_config.split_seed, kind, class_names,
            data_config.label_name_list, data_config.group_near_duplicates,
            data_config.protocol == "external",
        )  # fmt: skip
        return slices.Builder(
            data_dir=os.fspath(build_dir), config=config, file_format="array_record"
        )

    # Process 0 lists the folder and builds; every process learns the fingerprint and layout
    # (or the failure), so none waits forever. data_dir must be on storage every host sees.
    error = found = None
    if jax.process_index() == 0:
        try:
            listing, described, volumes = _check_source(
                manual_dir, synthetic_seed, data_config, timer
            )
            found = slices.folder_fingerprint(listing), described
            build_dir = data_dir / f"{BUILD_PREFIX}{found[0]}"
            source = None if volumes is None else _volume_slicer(
                volumes, data_config, build_dir, timer
            )  # fmt: skip
            _build(lambda: make_builder(build_dir, described), build_dir, listing, data_dir,
                   timer, source)  # fmt: skip
        except UserError as e:
            error = e
        except slices.LayoutError as e:  # found by the build's parse: with the same hint
            error = _data_error(e, manual_dir, data_config)
    fingerprint, described = _agree(error, found)
    builder = make_builder(data_dir / f"{BUILD_PREFIX}{fingerprint}", described)
    if not builder.is_prepared():
        raise UserError(
            f"The data set is not in {builder.data_dir} on process {jax.process_index()}: "
            "data.data_dir must be on storage that every host sees."
        )
    _check_label_conflicts(builder.info.metadata, data_config)
    if data_config.protocol != "external":  # another cohort is evaluated whole, not trained on
        _check_missing_classes(builder.info.metadata, tuple(builder.info.features["label"].names),
                               data_config)  # fmt: skip
    pooled, positions, protocol = _apply_protocol(builder, data_config)
    return AdniData(
        builder=builder,
        manual_dir=manual_dir,
        data_dir=data_dir,
        pooled=pooled,
        positions=positions,
        protocol=protocol,
        source_fingerprint=fingerprint,
    )


def _check_label_conflicts(metadata, data_config: DataSpec) -> None:
    """Refuses a data set whose metadata labels contradict the class folders of more than
    `data.max_label_conflicts` of the scans that have one, unless the folders are trusted."""
    conflicts = metadata.get("audit", {}).get("label_conflicts")
    if not conflicts or not conflicts["count"]:
        return
    share = conflicts["count"] / max(conflicts["scans_with_metadata_label"], 1)
    examples = "; ".join(
        f"scan {c['scan_id']} in {c['folder']} is {c['metadata_label']} in the metadata"
        for c in conflicts["scans"][:10]
    )
    text = (
        f"{conflicts['count']} of {conflicts['scans_with_metadata_label']} scans ({share:.1%}) "
        f"have a metadata label that contradicts their class folder, e.g. {examples}"
    )
    if data_config.trust_folder_labels or share <= data_config.max_label_conflicts:
        logging.warning("%s. Training on the folder labels, as configured.", text)
        return
    raise UserError(
        f"{text}. All of them are in the audit (python -m alz_jax.audit). Fix the folders or "
        "the metadata, or train on the folder labels with --config.data.trust_folder_labels=true "
        f"(or allow a share with data.max_label_conflicts, now {data_config.max_label_conflicts})."
    )


def _check_missing_classes(metadata, class_names: tuple[str, ...], data_config: DataSpec) -> None:
    """Refuses a data set with a class that has no images in an official folder or a built
    split (a model that never sees a class, or is never tested on one), naming each class and
    split, unless `data.allow_missing_classes`; then warns."""
    entry = metadata.get("audit", {}).get("missing_classes")
    if entry is None:  # a build stored before the entry existed: from its counts
        folders = {
            folder: {cls: c["images"] for cls, c in per_class.items()}
            for folder, per_class in metadata.get("audit", {}).get("counts", {}).items()
        }
        entry = slices.missing_classes_entry(
            class_names, folders, metadata.get("class_distribution")
        )
    if not entry["count"]:
        return
    text = "; ".join(slices.format_missing_classes(entry))
    if data_config.allow_missing_classes:
        logging.warning("%s. Training on it, as configured (data.allow_missing_classes).", text)
        return
    raise UserError(
        f"{text}. A model would never learn, or never be tested on, "
        f"{'that class' if entry['count'] == 1 else 'those classes'}. Put images of every "
        "class in every split folder, of enough subjects that every built split gets some "
        "(validation is carved from train by subject; a set without split folders is split "
        f"{'/'.join(str(round(x * 100)) for x in slices.NO_FOLDER_FRACTIONS)} by subject), "
        "or remove the class's folders; or accept it with "
        "--config.data.allow_missing_classes=true."
    )


def _apply_protocol(builder, data_config):
    parts = []
    for source_id, split in enumerate(SPLITS):
        source = _split_source(builder, split)
        part = _read_metadata(source)
        part["builder_split"] = np.full(len(source), split, dtype=object)
        part["source_id"] = np.full(len(source), source_id, dtype=np.int32)
        part["local_index"] = np.arange(len(source), dtype=np.int64)
        parts.append(part)
    pooled = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    try:
        positions = slices.assign_protocol(pooled, data_config)
    except ValueError as e:
        raise UserError(str(e)) from e
    for split, pos in positions.items():
        if not len(pos) and (split == "test" or data_config.protocol != "external"):
            raise UserError(f"The {split} split of protocol {data_config.protocol!r} is empty.")
    protocol = {
        "name": data_config.protocol,
        "slice_range": data_config.slice_range,
        "split_seed": data_config.split_seed,
    }
    note = slices.official_split_note(builder.info.metadata.get("folder_splits", ["train", "test"]))
    if protocol["name"] == "official" and note:
        # No usable split folders: the build split by subject, stratified by class.
        protocol["official_split"] = note
    if protocol["slice_range"]:
        window = slices.parse_slice_range(
            protocol["slice_range"], pooled["slice_index"], pooled["label"]
        )
        protocol["slice_window"] = list(window)
    if protocol["name"] == "resplit":
        protocol["fractions"] = list(data_config.resplit_fractions)
    if protocol["name"] == "kfold":
        protocol.update(num_folds=data_config.num_folds, fold=data_config.fold)
    positions = _carve_calibration(builder, pooled, positions, protocol, data_config)
    return pooled, positions, protocol


def _carve_calibration(builder, pooled, positions, protocol: dict, data_config: DataSpec):
    """`positions` with data.calibration_fraction of train's subjects moved to the calibration
    split (recorded in `protocol`, so the manifest and fingerprint say so); unchanged at 0, and
    under `external`, whose cohort has no train split to carve from and is evaluated whole."""
    fraction = data_config.calibration_fraction
    if fraction <= 0:
        return positions
    if data_config.protocol == "external":
        logging.info(
            "data.calibration_fraction = %g ignored: the external protocol evaluates another "
            "cohort whole (no train split to carve a calibration split from).", fraction,
        )  # fmt: skip
        return positions
    class_names = tuple(builder.info.features["label"].names)
    positions, counts = calibration_split.carve(
        pooled, positions, fraction, data_config.split_seed, class_names
    )
    by_scan = builder.info.metadata.get("subject_source") == "scan_id"
    protocol["calibration_fraction"] = fraction
    protocol["calibration_unit"] = "scan" if by_scan else "subject"
    logging.info(calibration_split.describe(counts, len(positions[CALIBRATION]), by_scan))
    if by_scan:
        logging.warning(
            "data.calibration_fraction: this data set has no subject IDs, so the calibration "
            "split is carved by scan; a subject's other visits may stay in train."
        )
    return positions
