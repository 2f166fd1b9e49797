"""Cuts every volume of a listing into PNG slices in a folder: in parallel (one volume in
memory per worker process), resumably (a volume's slices appear at once, when all are written;
a rerun keeps the volumes already done), with a progress line (volumes/s, ETA).

Voxel sizes are checked on the headers first, so that a collection that is not at 1 mm is
refused (or resampled, by setting) before any volume is sliced. A volume that cannot be used
(unreadable, truncated, 2D, 4D, no orientation, blank) is skipped and named with its reason:
in the warnings, the manifest and the data set's metadata. The folder's `volumes.json`
manifest (`sliced.MANIFEST`), written last, is what the build reads (`sliced.parse`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from .. import progress as progress_lib
from ..layouts.base import LIST_LIMIT, brief_list
from . import audit, reading, slicing
from .listing import VolumeListing, VolumeRecord
from .settings import VOXEL_TOLERANCE_MM, VolumeSettings
from .sliced import MANIFEST, VOLUME_DONE, slice_name

T = TypeVar("T")
R = TypeVar("R")
# Worker processes when data.volume_workers is 0: the cores, up to this many.
MAX_AUTO_WORKERS = 8


def auto_workers(requested: int = 0) -> int:
    """The worker processes to use: `requested`, or (0) the cores up to MAX_AUTO_WORKERS."""
    return requested if requested > 0 else max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))


@contextlib.contextmanager
def _blank_main() -> Iterator[None]:
    """A blank __main__ while worker processes start. A spawned process first imports its
    parent's __main__ module: `python -m alz_jax.main` imports JAX at the top (154 MiB resident,
    measured), a script may import more, none of which slicing uses. Without it the workers
    import only what they run (nibabel, NumPy, SciPy, OpenCV: 76 MiB)."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[R]:
    """fn over items in order, in `workers` processes (spawned: a parent that runs JAX must not
    fork; `fn` must be a module-level function); in this process where workers <= 1 or there is
    one item."""
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(items)), context) as pool:
        with _blank_main():  # Executor.map submits every item, so starts every worker, here
            results = pool.map(fn, items, chunksize=1)
        yield from results


def _off_size(volumes: Sequence[VolumeRecord]) -> list[str]:
    """'file (1.2x1x1 mm)' for each volume whose header's voxels are not 1 mm; headers that
    cannot be read are left to the slicing, which names them."""
    found = []
    for v in volumes:
        try:
            zooms = reading.read_header(v.path).zooms
        except reading.VolumeError:
            continue
        if any(abs(z - 1.0) > VOXEL_TOLERANCE_MM for z in zooms):
            found.append(f"{v.file_name} ({'x'.join(f'{z:g}' for z in zooms)} mm)")
    return found


def check_voxels(listing: VolumeListing, settings: VolumeSettings) -> None:
    """VoxelSizeError, in one line, where volumes are not at 1 mm and settings.voxels is
    "refuse": how many, which (the first few) and the setting that resamples them."""
    if settings.voxels != "refuse":
        return
    off = _off_size(listing.volumes)
    if off:
        raise reading.VoxelSizeError(
            f"{listing.root}: {len(off)} of {len(listing.volumes)} volumes do not have 1 mm "
            f"voxels: {brief_list(off, 3)}; resample them to 1 mm with "
            "--config.data.volume_voxels=resample (or give 1 mm volumes, e.g. Clinica t1-linear)."
        )


def slice_one(task: tuple[VolumeRecord, VolumeSettings, str]) -> dict:
    """Worker: reads one volume, cuts its slices and writes them into <out>/<scan_id>/ through
    a temporary folder renamed when complete; returns its manifest entry, or {"problem",
    "detail"} for a volume that cannot be used."""
    volume, settings, out = task
    base = {"file": volume.file_name, "subject": volume.subject, "session": volume.session,
            "label": volume.label, "folder_split": volume.folder_split}  # fmt: skip
    try:
        data, header = reading.read_volume(volume.path, settings.voxels)
        cut, stats = slicing.cut(data, settings, source=str(volume.path))
    except reading.VolumeError as e:
        return {**base, "problem": e.reason, "detail": str(e)}
    del data  # one volume in memory: the slices are small
    entry = {
        **base, "info": volume.info, "shape": list(header.shape), "zooms": list(header.zooms),
        "orientation": header.orientation, "format": header.format, "dtype": header.dtype,
        "intensity": {k: v for k, v in stats.items() if k not in ("shape", "slices")},
        "ras_shape": stats.get("shape"), "slices": [index for index, _ in cut],
    }  # fmt: skip
    final = Path(out) / volume.scan_id
    temporary = Path(out) / f".tmp-{volume.scan_id}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for index, image in cut:
        (temporary / slice_name(settings.axis, index)).write_bytes(slicing.encode_png(image))
    (temporary / VOLUME_DONE).write_text(json.dumps(entry, default=str))
    shutil.rmtree(final, ignore_errors=True)  # never complete: complete folders are kept
    os.replace(temporary, final)
    return entry


def _done(out_dir: Path, volume: VolumeRecord) -> dict | None:
    """The entry of a volume sliced by an earlier, interrupted build, if it finished."""
    marker = out_dir / volume.scan_id / VOLUME_DONE
    try:
        return json.loads(marker.read_text()) if marker.is_file() else None
    except (OSError, ValueError):
        return None


def _warn_unusable(unusable: list[dict]) -> None:
    """One warning per skipped volume, the first LIST_LIMIT of each reason, then the count."""
    by_reason: dict[str, list[dict]] = collections.defaultdict(list)
    for entry in unusable:
        by_reason[entry["problem"]].append(entry)
    for reason, entries in by_reason.items():
        for entry in entries[:LIST_LIMIT]:
            logging.warning("Skipping volume %s", entry["detail"])
        if len(entries) > LIST_LIMIT:
            logging.warning("Skipping %d more volumes (%s); all in the data set's metadata.",
                            len(entries) - LIST_LIMIT, reason)  # fmt: skip


def _warn_skipped(listing: VolumeListing) -> None:
    """One warning per reason the layout left rows or files out, with the count and examples."""
    for reason, items in listing.skipped.items():
        if items:
            logging.warning("Left out %d (%s): %s", len(items), reason, brief_list(items, 5))


def slice_volumes(
    listing: VolumeListing, settings: VolumeSettings, out_dir: str | os.PathLike, workers: int = 0
) -> dict:
    """Slices every volume of `listing` into out_dir (see the module's docstring) and writes
    its manifest; returns the manifest. Volumes already sliced there are kept."""
    out_dir = Path(out_dir)
    check_voxels(listing, settings)
    _warn_skipped(listing)
    out_dir.mkdir(parents=True, exist_ok=True)
    for leftover in out_dir.glob(".tmp-*"):  # half-written by a process killed mid-volume
        shutil.rmtree(leftover, ignore_errors=True)
    entries = {v.scan_id: _done(out_dir, v) for v in listing.volumes}
    todo = [v for v in listing.volumes if entries[v.scan_id] is None]
    workers = auto_workers(workers)
    kept = len(listing.volumes) - len(todo)
    logging.info("Slicing %d volumes (%s) with %d processes%s.", len(todo), settings.describe(),
                 min(workers, max(len(todo), 1)),
                 f"; {kept} kept from an interrupted build" if kept else "")  # fmt: skip
    counter = progress_lib.Progress("Slicing volumes", len(todo), unit="volumes")
    tasks = [(v, settings, os.fspath(out_dir)) for v in todo]
    for volume, entry in zip(todo, parallel_map(slice_one, tasks, workers), strict=True):
        entries[volume.scan_id] = entry
        counter.update()
    counter.finish()
    unusable = [dict(e, scan_id=s) for s, e in entries.items() if "problem" in e]
    _warn_unusable(unusable)
    manifest = {
        "kind": listing.kind,
        "source": os.fspath(listing.root),
        "label_table": listing.label_table,
        "class_names": list(listing.class_names),
        "class_mapping": listing.class_mapping,
        "folder_splits": list(listing.folder_splits),
        "settings": settings.as_dict(),
        "skipped": listing.skipped,
        "unusable": unusable,
        "volumes": {s: e for s, e in entries.items() if "problem" not in e},
    }
    temporary = out_dir / f".{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, default=str))
    os.replace(temporary, out_dir / MANIFEST)
    return manifest


def _inspect_one(task: tuple[VolumeRecord, str]) -> dict:
    """Worker: the audit's look at one volume."""
    volume, voxels = task
    return audit.inspect(volume.path, voxels)


def audit_volumes(listing: VolumeListing, settings: VolumeSettings, workers: int = 0) -> dict:
    """The volume audit of a listing: every volume read (in parallel, with a progress line)
    and summarised by `audit.build_report`."""
    tasks = [(v, settings.voxels) for v in listing.volumes]
    counter = progress_lib.Progress("Audit: volumes read", len(tasks), unit="volumes")
    inspected = {}
    for (volume, _), result in zip(tasks, parallel_map(_inspect_one, tasks, auto_workers(workers)),
                                   strict=True):  # fmt: skip
        inspected[volume.scan_id] = dict(result, file=volume.file_name)
        counter.update()
    counter.finish()
    return audit.build_report(listing, inspected)
