"""Audit of an ADNI AD_NC folder: counts, leakage, the slice-window shortcut, duplicates, bad files.

Run by the builder (stored in the data set's metadata) and by `python -m alz_jax.audit`. Reports
images, scans and subjects per folder and class; subjects with visits in both the train and test
folders; subjects whose label differs between visits; the slice-window distribution per class
and the scan accuracy of a classifier that sees only the slice indices (the shortcut baseline);
duplicate images by content hash, within and across folders; every unreadable, empty,
off-size and near-black image, and stray non-image file, by name; and every scan whose metadata
label (meta_data_with_label.json) contradicts its class folder.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from tfds_builders.adni import layout as layout_lib

# A slice this dark on average (of 255) carries no anatomy (ADNI has a few such scans).
NEAR_BLACK_MEAN = 3.0
UNUSABLE = ("unreadable", "empty", "off_size")


@dataclasses.dataclass(frozen=True)
class ImageCheck:
    """What reading one image file found."""

    problem: str | None  # None, "unreadable", "empty" or "off_size"
    detail: str
    mean: float  # mean intensity (0..255), nan if not decodable
    sha256: str


def check_image(path: Path) -> ImageCheck:
    """Fully decodes an image (a truncated JPEG fails here) and checks size, mode and darkness."""

    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return ImageCheck("empty", "0 bytes", float("nan"), digest)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size, mode = image.size, image.mode
            pixels = np.asarray(image.convert("L"))
    except Exception as e:  # any decoder failure is reported with the file, never raised
        return ImageCheck("unreadable", f"{type(e).__name__}: {e}", float("nan"), digest)
    mean = float(pixels.mean())
    expected = (layout_lib.IMAGE_WIDTH, layout_lib.IMAGE_HEIGHT)
    if size != expected or mode != "L":
        detail = f"{size[0]}x{size[1]} mode {mode}, expected {expected[0]}x{expected[1]} mode L"
        return ImageCheck("off_size", detail, mean, digest)
    return ImageCheck(None, "", mean, digest)


def shortcut_baseline(train: dict[str, tuple[float, int]], test: dict[str, tuple[float, int]]):
    """Scan accuracy on `test` of the best threshold on a scan's mean slice index, fit on `train`.

    Each dict maps scan ID -> (mean slice index, label). The rule predicts AD on one side of a
    threshold; the side and threshold are those with the best train accuracy.
    """
    if not train or not test:
        return None
    x = np.array([v[0] for v in train.values()])
    y = np.array([v[1] for v in train.values()])
    candidates = np.unique(x)
    thresholds = np.concatenate([[candidates[0] - 1], (candidates[1:] + candidates[:-1]) / 2])
    best = (-1.0, 0.0, True)
    for t in thresholds:
        for ad_below in (True, False):
            predicted = (x < t) if ad_below else (x >= t)
            accuracy = float(np.mean(predicted == y))
            if accuracy > best[0]:
                best = (accuracy, float(t), ad_below)
    _, threshold, ad_below = best
    xt = np.array([v[0] for v in test.values()])
    yt = np.array([v[1] for v in test.values()])
    predicted = (xt < threshold) if ad_below else (xt >= threshold)
    return {
        "scan_accuracy": float(np.mean(predicted == yt)),
        "train_scan_accuracy": best[0],
        "rule": f"AD if mean slice index {'<' if ad_below else '>='} {threshold:g}",
        "fit_on": "train folder",
        "scored_on": "test folder",
    }


def _names(paths: Iterable[Path], root: Path) -> list[str]:
    return sorted(str(Path(p).relative_to(root)) for p in paths)


def _duplicate_groups(checks: dict[str, ImageCheck]) -> tuple[list[list[str]], list[list[str]]]:
    """Groups of byte-identical files (all of them, and those spanning train and test)."""
    by_hash: dict[str, list[str]] = collections.defaultdict(list)
    for name, check in checks.items():
        if check.problem != "empty":
            by_hash[check.sha256].append(name)
    groups = [sorted(names) for names in by_hash.values() if len(names) > 1]
    across = [g for g in groups if len({n.split("/")[0] for n in g}) > 1]
    return groups, across


def _image_problems(
    parsed: layout_lib.Layout, checks: dict[str, ImageCheck]
) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """Unusable files by kind, near-black images, and scans that are at least half near-black."""
    problems = {kind: [] for kind in UNUSABLE}
    for name, check in sorted(checks.items()):
        if check.problem:
            problems[check.problem].append(f"{name}: {check.detail}")
    dark_images = sorted(
        n for n, c in checks.items() if c.problem is None and c.mean < NEAR_BLACK_MEAN
    )
    dark_by_scan = collections.Counter(
        r.scan_id for r in parsed.records if r.file_name in set(dark_images)
    )
    images_by_scan = collections.Counter(r.scan_id for r in parsed.records)
    dark_scans = sorted(s for s, n in dark_by_scan.items() if n * 2 >= images_by_scan[s])
    return problems, dark_images, dark_scans


def run(parsed: layout_lib.Layout) -> tuple[dict, dict[str, ImageCheck]]:
    """Audits a parsed folder; returns the JSON-able report and each image's check by file name."""
    root = parsed.root
    checks = {r.file_name: check_image(r.path) for r in parsed.records}
    subject_of = parsed.subject_of_scan

    counts: dict = {}
    for split in layout_lib.SPLIT_FOLDERS:
        counts[split] = {}
        for label, cls in enumerate(layout_lib.CLASS_NAMES):
            rs = [r for r in parsed.records if r.folder_split == split and r.label == label]
            scans = {r.scan_id for r in rs}
            counts[split][cls] = {
                "images": len(rs),
                "scans": len(scans),
                "subjects": len({subject_of[s] for s in scans}),
            }

    folders_of_subject: dict[str, set[str]] = collections.defaultdict(set)
    labels_of_subject: dict[str, set[int]] = collections.defaultdict(set)
    slices_of_scan: dict[str, list[int]] = collections.defaultdict(list)
    scan_info: dict[str, tuple[str, int]] = {}
    for r in parsed.records:
        folders_of_subject[subject_of[r.scan_id]].add(r.folder_split)
        labels_of_subject[subject_of[r.scan_id]].add(r.label)
        slices_of_scan[r.scan_id].append(r.slice_index)
        scan_info[r.scan_id] = (r.folder_split, r.label)
    both = sorted(s for s, f in folders_of_subject.items() if len(f) > 1)
    changed = sorted(s for s, labels in labels_of_subject.items() if len(labels) > 1)

    windows = {}
    for label, cls in enumerate(layout_lib.CLASS_NAMES):
        starts = [min(v) for s, v in slices_of_scan.items() if scan_info[s][1] == label]
        indices = [i for s, v in slices_of_scan.items() if scan_info[s][1] == label for i in v]
        if starts:
            windows[cls] = {
                "scans": len(starts),
                "start_min": int(min(starts)),
                "start_median": float(np.median(starts)),
                "start_max": int(max(starts)),
                "index_min": int(min(indices)),
                "index_max": int(max(indices)),
            }
    per_folder = {
        split: {
            s: (float(np.mean(v)), scan_info[s][1])
            for s, v in slices_of_scan.items()
            if scan_info[s][0] == split
        }
        for split in layout_lib.SPLIT_FOLDERS
    }

    groups, across = _duplicate_groups(checks)
    problems, dark_images, dark_scans = _image_problems(parsed, checks)

    report = {
        "root": str(root),
        "subject_source": parsed.subject_source,
        "subject_coverage": parsed.subject_coverage,
        "counts": counts,
        "subjects_in_train_and_test": {"count": len(both), "subjects": both},
        "subjects_with_label_change": {"count": len(changed), "subjects": changed},
        "slice_windows": windows,
        "shortcut_baseline": shortcut_baseline(per_folder["train"], per_folder["test"]),
        "duplicates": {
            "groups": len(groups),
            "files": sum(len(g) for g in groups),
            "within_a_folder": len(groups) - len(across),
            "across_folders": len(across),
            "examples": groups[:20],
        },
        "unusable": {kind: {"count": len(v), "files": v} for kind, v in problems.items()},
        "near_black": {
            "images": len(dark_images),
            "scans": len(dark_scans),
            "scan_ids": dark_scans,
            "files": dark_images,
        },
        "stray_files": {
            "count": len(parsed.stray_files),
            "files": _names(parsed.stray_files, root),
        },
        "label_conflicts": label_conflicts_entry(parsed),
    }
    return report, checks


def label_conflicts_entry(parsed: layout_lib.Layout) -> dict:
    """The report's label_conflicts: every scan whose metadata label differs from its folder's
    class, and how many scans had a metadata label at all (recognised or not)."""
    conflicts = layout_lib.label_conflicts(parsed)
    return {
        "count": len(conflicts),
        "scans_with_metadata_label": len(parsed.metadata_label_of_scan),
        "unrecognised_labels": len(parsed.unrecognised_labels),
        "scans": conflicts,
    }


def format_conflicts(entry: dict, limit: int = layout_lib.LIST_LIMIT) -> str:
    """'scan (folder, metadata says X), ...' for the first `limit` conflicts, and the rest's
    count."""
    return layout_lib.brief_list(
        [f"{c['scan_id']} (in {c['folder']}, metadata says {c['metadata_label']})"
         for c in entry["scans"]],
        limit,
        "; all in the audit JSON",
    )  # fmt: skip


def _more(entries: list, shown: int) -> list[str]:
    """The table's line for what a list it cut leaves out."""
    if len(entries) <= shown:
        return []
    return [f"  ... and {len(entries) - shown} more; all in the audit JSON"]


def format_table(report: dict) -> str:
    """The audit as a readable text table."""
    lines = [f"Audit of {report['root']} (subjects from {report['subject_source']})", ""]
    lines.append(f"{'folder':<7} {'class':<5} {'images':>7} {'scans':>6} {'subjects':>8}")
    for split, classes in report["counts"].items():
        for cls, c in classes.items():
            lines.append(f"{split:<7} {cls:<5} {c['images']:>7} {c['scans']:>6} {c['subjects']:>8}")
    lines.append("")
    both = report["subjects_in_train_and_test"]
    changed = report["subjects_with_label_change"]
    lines.append(f"subjects in both train and test folders: {both['count']}")
    lines.append(f"subjects whose label differs between visits: {changed['count']}")
    for cls, w in report["slice_windows"].items():
        lines.append(
            f"slice window {cls}: start {w['start_min']}..{w['start_max']} "
            f"(median {w['start_median']:g}), indices {w['index_min']}..{w['index_max']}"
        )
    baseline = report["shortcut_baseline"]
    if baseline:
        lines.append(
            "shortcut baseline (slice indices only): scan accuracy "
            f"{baseline['scan_accuracy']:.3f} on the test folder ({baseline['rule']})"
        )
    d = report["duplicates"]
    lines.append(
        f"duplicate images: {d['groups']} groups, {d['files']} files "
        f"({d['within_a_folder']} groups within a folder, {d['across_folders']} across folders)"
    )
    for kind, entry in report["unusable"].items():
        lines.append(f"{kind} images: {entry['count']}")
        lines.extend(f"  {f}" for f in entry["files"][:20])
        lines.extend(_more(entry["files"], 20))
    nb = report["near_black"]
    lines.append(f"near-black images: {nb['images']} (scans mostly near-black: {nb['scans']})")
    lines.extend(f"  scan {s}" for s in nb["scan_ids"][:20])
    lines.extend(_more(nb["scan_ids"], 20))
    strays = report["stray_files"]
    lines.append(f"stray non-image files: {strays['count']}")
    lines.extend(f"  {f}" for f in strays["files"][:20])
    lines.extend(_more(strays["files"], 20))
    conflicts = report.get("label_conflicts")  # absent from audits stored before it existed
    if conflicts is not None:
        lines.append(
            f"scans whose metadata label contradicts their class folder: {conflicts['count']} "
            f"(of {conflicts['scans_with_metadata_label']} with a recognised label; "
            f"{conflicts['unrecognised_labels']} unrecognised)"
            + (f": {format_conflicts(conflicts)}" if conflicts["count"] else "")
        )
    return "\n".join(lines)
