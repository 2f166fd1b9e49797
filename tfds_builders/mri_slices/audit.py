"""Audit of a data folder of any layout: counts, leakage, the slice-window shortcut, duplicates and
bad files.

Run by the builder (stored in the data set's metadata) and by `python -m alz_jax.audit`. Reports
images, scans and subjects per folder and class; subjects with visits in both the train and test
folders; subjects whose label differs between visits; the slice-window distribution per class
and the scan accuracy of a classifier that sees only the slice indices (the shortcut baseline);
duplicate images by content hash, within and across folders; every unreadable, empty,
off-size and near-black image, and stray non-image file, by name; every scan whose metadata
label (meta_data_with_label.json) contradicts its class folder; every class without images in
an official folder (the builder adds its built splits); and class names that look like typos of
a known stage or label, or of each other.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from . import near_duplicates, progress
from .layouts import adni, registry
from .layouts.base import (
    LIST_LIMIT,
    ImageRecord,
    Layout,
    brief_list,
)
from .layouts.classes import similar_class_names

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
    size: tuple[int, int] | None = None  # (width, height) as decoded
    mode: str = ""
    # The near-duplicate signature of a decodable image (near_duplicates.signature), else None.
    signature: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)


def check_bytes(
    data: bytes, expected_size: tuple[int, int] | None = (adni.IMAGE_WIDTH, adni.IMAGE_HEIGHT),
    modes: tuple[str, ...] = ("L",),
) -> ImageCheck:  # fmt: skip
    """Fully decodes an image's bytes (a truncated JPEG fails here) and checks size, mode and
    darkness; `expected_size` None leaves the size to `mark_off_size`."""
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
    signature = near_duplicates.signature(pixels)
    wrong_size = expected_size is not None and size != expected_size
    if wrong_size or mode not in modes:
        want = f"{expected_size[0]}x{expected_size[1]} " if expected_size else ""
        detail = f"{size[0]}x{size[1]} mode {mode}, expected {want}mode {'|'.join(modes)}"
        return ImageCheck("off_size", detail, mean, digest, size, mode, signature)
    return ImageCheck(None, "", mean, digest, size, mode, signature)


def check_image(path: Path) -> ImageCheck:
    """`check_bytes` of an ADNI image file."""
    return check_bytes(path.read_bytes())


def common_size(checks: dict[str, ImageCheck]) -> tuple[int, int] | None:
    """The most common (width, height) of the decodable images (ties to the larger area)."""
    sizes = collections.Counter(c.size for c in checks.values() if c.size is not None)
    if not sizes:
        return None
    return max(sizes.items(), key=lambda kv: (kv[1], kv[0][0] * kv[0][1]))[0]


def check_all(parsed: Layout) -> dict[str, ImageCheck]:
    """Each image's check by file name, against its layout's audit hooks: ADNI's fixed size and
    mode; for other layouts any size (the input pipeline pads and resizes every image; the
    audit reports the sizes found) in any gray-readable mode. Logs progress on a long read."""
    plugin = registry.get(parsed.kind)
    counter = progress.Progress("Audit: reading images", len(parsed.records))
    return {
        r.file_name: check_bytes(r.read_bytes(), plugin.image_size, plugin.image_modes)
        for r in counter.track(parsed.records)
    }


def image_sizes(checks: dict[str, ImageCheck], limit: int = 5) -> dict[str, int]:
    """The most common image sizes ("WxH": count), most common first, then "other"."""
    sizes = collections.Counter(c.size for c in checks.values() if c.size is not None)
    out = {f"{w}x{h}": n for (w, h), n in sizes.most_common(limit)}
    rest = sum(sizes.values()) - sum(out.values())
    return {**out, "other": rest} if rest else out


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


def _duplicate_groups(
    checks: dict[str, ImageCheck], folder_of_file: dict[str, str]
) -> tuple[list[list[str]], list[list[str]]]:
    """Groups of byte-identical files (all of them, and those spanning folders)."""
    by_hash: dict[str, list[str]] = collections.defaultdict(list)
    for name, check in checks.items():
        if check.problem != "empty":
            by_hash[check.sha256].append(name)
    groups = [sorted(names) for names in by_hash.values() if len(names) > 1]
    across = [g for g in groups if len({folder_of_file[n] for n in g}) > 1]
    return groups, across


def _image_problems(
    parsed: Layout, checks: dict[str, ImageCheck]
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


def folder_of(record: ImageRecord) -> str:
    """The official folder a record lives in, "all" where the layout has no split folders."""
    return record.folder_split or "all"


def _counts(parsed: Layout) -> dict:
    """Images, scans and subjects per folder and class."""
    subject_of = parsed.subject_of_scan
    counts: dict = {}
    present = {folder_of(r) for r in parsed.records}
    for folder in (f for f in ("train", "validation", "test", "all") if f in present):
        counts[folder] = {}
        for label, cls in enumerate(parsed.class_names):
            rs = [r for r in parsed.records if folder_of(r) == folder and r.label == label]
            scans = {r.scan_id for r in rs}
            counts[folder][cls] = {
                "images": len(rs),
                "scans": len(scans),
                "subjects": len({subject_of[s] for s in scans}),
            }
    return counts


def _slice_windows(parsed: Layout) -> tuple[dict, dict | None]:
    """Per class, where its scans' slice windows start and end; and the shortcut baseline
    (two classes with train and test folders only). Empty without slice indices."""
    if not parsed.has_slice_index:
        return {}, None
    slices_of_scan: dict[str, list[int]] = collections.defaultdict(list)
    scan_info: dict[str, tuple[str, int]] = {}
    for r in parsed.records:
        slices_of_scan[r.scan_id].append(r.slice_index)
        scan_info[r.scan_id] = (r.folder_split, r.label)
    windows = {}
    for label, cls in enumerate(parsed.class_names):
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
    if len(parsed.class_names) != 2:
        return windows, None
    per_folder = {
        split: {
            s: (float(np.mean(v)), scan_info[s][1])
            for s, v in slices_of_scan.items()
            if scan_info[s][0] == split
        }
        for split in ("train", "test")
    }
    return windows, shortcut_baseline(per_folder["train"], per_folder["test"])


def near_duplicate_pairs(parsed: Layout, checks: dict[str, ImageCheck]) -> list[tuple[str, str]]:
    """Pairs of usable images that are near-identical (file names, sorted), of different scans
    or of one scan that the folders divide: adjacent slices of one brain filed as separate
    images or split between folders, and copies (another visit, with a new pose, is rarely
    matched: docs/leakage.md)."""
    usable = sorted(
        (r for r in parsed.records if not checks[r.file_name].problem), key=lambda r: r.file_name
    )
    if len(usable) < 2:
        return []
    signatures = np.stack([checks[r.file_name].signature for r in usable])
    # Slices of one scan are alike by nature and split only where folders divide the scan (no
    # protocol does): pair them only across folders.
    groups = np.array([f"{r.scan_id}\n{r.folder_split}" for r in usable], dtype=object)
    pairs = near_duplicates.pairs_above(signatures, groups, near_duplicates.DEFAULT_THRESHOLD)
    return [(usable[i].file_name, usable[j].file_name) for i, j in pairs]


def cross_split_entry(
    split_of: dict[str, str], subject_of: dict[str, str] | None, pairs: list[tuple[str, str]],
    held_out: str = "test",
) -> dict | None:  # fmt: skip
    """`cross_split_near_duplicates` of a split assignment (file name -> split): how many
    `held_out` images have a near-identical image in another split; with subjects (file name ->
    subject), how the matches agree with subjects found in both. None without a held-out split."""
    names = sorted(split_of)
    position = {n: i for i, n in enumerate(names)}
    test = np.array([i for i, n in enumerate(names) if split_of[n] == held_out], np.int64)
    train = np.array([i for i, n in enumerate(names) if split_of[n] != held_out], np.int64)
    if not len(test) or not len(train):
        return None
    index_pairs = np.array(
        [(position[a], position[b]) for a, b in pairs if a in position and b in position],
        np.int64,
    ).reshape(-1, 2)
    entry = near_duplicates.cross_split_summary(
        test, train, index_pairs, near_duplicates.DEFAULT_THRESHOLD
    )
    entry["held_out_split"] = held_out
    if subject_of is not None:
        train_subjects = {subject_of[names[i]] for i in train}
        flagged = np.zeros(len(names), bool)
        for a, b in index_pairs:
            if (split_of[names[a]] == held_out) != (split_of[names[b]] == held_out):
                flagged[a if split_of[names[a]] == held_out else b] = True
        entry["agreement_with_subject_ids"] = near_duplicates.subject_agreement(
            [subject_of[names[i]] for i in test], flagged[test], train_subjects
        )
    return entry


def _usable_split_of(parsed: Layout, checks: dict[str, ImageCheck]) -> dict:
    return {r.file_name: folder_of(r) for r in parsed.records if not checks[r.file_name].problem}


def run(parsed: Layout) -> tuple[dict, dict[str, ImageCheck]]:
    """Audits a parsed folder; returns the JSON-able report and each image's check by file name.

    The report's `near_duplicate_pairs` lists every pair (the builder stores them, so a report
    can say how its own test split overlaps train), or is None where the layout's images are
    not searched (`Layout.near_duplicate_search`); the other entries are summaries."""
    checks = check_all(parsed)
    subject_of = parsed.subject_of_scan
    folders_of_subject: dict[str, set[str]] = collections.defaultdict(set)
    labels_of_subject: dict[str, set[int]] = collections.defaultdict(set)
    for r in parsed.records:
        folders_of_subject[subject_of[r.scan_id]].add(r.folder_split)
        labels_of_subject[subject_of[r.scan_id]].add(r.label)
    both = sorted(s for s, f in folders_of_subject.items() if len(f) > 1)
    changed = sorted(s for s, labels in labels_of_subject.items() if len(labels) > 1)
    windows, baseline = _slice_windows(parsed)
    groups, across = _duplicate_groups(checks, {r.file_name: folder_of(r) for r in parsed.records})
    problems, dark_images, dark_scans = _image_problems(parsed, checks)
    pairs = near_duplicate_pairs(parsed, checks) if parsed.near_duplicate_search else None
    known = parsed.subject_source != "scan_id"
    subject_of_file = {r.file_name: subject_of[r.scan_id] for r in parsed.records}
    report = {
        "root": str(parsed.root),
        "layout": parsed.kind,
        "class_names": list(parsed.class_names),
        "class_mapping": parsed.class_mapping,
        "folders": list(parsed.folder_splits),
        "image_size": list(common_size(checks) or ()) if parsed.image_size is None
        else list(parsed.image_size),
        "image_sizes": image_sizes(checks),
        "subject_source": parsed.subject_source,
        "subject_coverage": parsed.subject_coverage,
        "counts": _counts(parsed),
        "subjects_in_train_and_test": {"count": len(both), "subjects": both},
        "subjects_with_label_change": {"count": len(changed), "subjects": changed},
        "slice_windows": windows,
        "shortcut_baseline": baseline,
        "duplicates": {
            "groups": len(groups),
            "files": sum(len(g) for g in groups),
            "within_a_folder": len(groups) - len(across),
            "across_folders": len(across),
            "examples": groups[:20],
        },
        "cross_split_near_duplicates": cross_split_entry(
            _usable_split_of(parsed, checks), subject_of_file if known else None, pairs
        ) if "test" in parsed.folder_splits and pairs is not None else None,
        # None where the search is not made (Layout.near_duplicate_search).
        "near_duplicate_pairs": None if pairs is None else [list(p) for p in pairs],
        "unusable": {kind: {"count": len(v), "files": v} for kind, v in problems.items()},
        "near_black": {
            "images": len(dark_images),
            "scans": len(dark_scans),
            "scan_ids": dark_scans,
            "files": dark_images,
        },
        "stray_files": {
            "count": len(parsed.stray_files),
            "files": _names(parsed.stray_files, parsed.root),
        },
        "label_conflicts": label_conflicts_entry(parsed),
        "missing_classes": missing_classes_entry(
            parsed.class_names, _folder_images(parsed), notes=_empty_folder_notes(parsed)
        ),
        "similar_class_names": similar_names_entry(parsed.class_names),
    }  # fmt: skip
    return report, checks


def _folder_images(parsed: Layout) -> dict[str, dict[str, int]]:
    """Images per class of every official folder the layout has ("all" where it has none)."""
    counts = collections.Counter((folder_of(r), r.label) for r in parsed.records)
    return {
        folder: {cls: counts[folder, k] for k, cls in enumerate(parsed.class_names)}
        for folder in parsed.folder_splits or ("all",)
    }


def _empty_folder_notes(parsed: Layout) -> dict[str, dict[str, str]]:
    """Folder -> class -> what its class folder there is ("train/MildDemented is empty", "there
    is no train/MildDemented folder"), for the classes without images in a folder, where the
    layout keeps each class in a folder of its own (not parquet files)."""
    found_names = set(parsed.class_mapping) | set(parsed.class_names)
    notes: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for folder, images in _folder_images(parsed).items():
        homes = {Path(r.file_name).parent for r in parsed.records if folder_of(r) == folder}
        parents = {home.parent for home in homes}
        if len(parents) != 1 or not all(home.name in found_names for home in homes):
            continue
        parent = parents.pop()
        for cls in (c for c, n in images.items() if not n):
            names = [f for f, c in parsed.class_mapping.items() if c == cls] or [cls]
            shown = [(parent / name).as_posix() for name in names]
            if any((parsed.root / p).is_dir() for p in shown):
                verb = "is" if len(shown) == 1 else "are"
                notes[folder][cls] = f"{' and '.join(shown)} {verb} empty"
            else:
                notes[folder][cls] = f"there is no {shown[0]} folder"
    return dict(notes)


def missing_classes_entry(
    class_names: Sequence[str], folders: dict[str, dict[str, int]],
    built: dict[str, dict[str, int]] | None = None, notes: dict | None = None,
) -> dict:  # fmt: skip
    """The report's missing_classes: per class without images in some official folder
    (`folders`: folder -> class -> images; "all" for a layout without split folders) or, once
    built, in some built split (`built`: split -> class -> images), which ones, with what its
    class folder there is (`notes`: folder -> class -> text)."""
    notes = notes or {}
    missing: dict[str, dict] = {}
    for cls in class_names:
        empty = [f for f, images in folders.items() if not images.get(cls, 0)]
        unbuilt = [s for s, images in (built or {}).items() if not images.get(cls, 0)]
        if empty or unbuilt:
            missing[cls] = {
                "folders": empty,
                "notes": [notes[f][cls] for f in empty if cls in notes.get(f, {})],
                "built_splits": unbuilt,
            }
    return {"count": len(missing), "classes": missing}


def _and(items: Sequence[str]) -> str:
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + f" and {items[-1]}"


def format_missing_classes(entry: dict) -> list[str]:
    """One line per class without images in a split: "class MildDemented has no images in the
    train folder (train/MildDemented is empty), nor in the built train and validation splits"."""
    lines = []
    for cls, where in entry["classes"].items():
        parts = []
        folders = [f for f in where["folders"] if f != "all"]
        if folders:
            parts.append(f"in the {_and(folders)} folder{'s' if len(folders) > 1 else ''}")
        elif where["folders"]:
            parts.append("in any folder")
        if where["notes"]:
            parts[-1] += f" ({'; '.join(where['notes'])})"
        splits = where["built_splits"]
        if splits:
            built = f"in the built {_and(splits)} split{'s' if len(splits) > 1 else ''}"
            parts.append(f"nor {built}" if parts else built)
        lines.append(f"class {cls} has no images {', '.join(parts)}")
    return lines


def similar_names_entry(class_names: Sequence[str]) -> dict:
    """The report's similar_class_names: the class names that are probably typos of a known
    stage or label spelling, or of each other (`classes.similar_class_names`)."""
    problems = similar_class_names(class_names)
    return {"count": len(problems), "names": problems}


def label_conflicts_entry(parsed: Layout) -> dict:
    """The report's label_conflicts: every scan whose metadata label differs from its folder's
    class, and how many scans had a metadata label at all (recognised or not)."""
    conflicts = registry.get(parsed.kind).label_conflicts(parsed)
    return {
        "count": len(conflicts),
        "scans_with_metadata_label": len(parsed.metadata_label_of_scan),
        "unrecognised_labels": len(parsed.unrecognised_labels),
        "scans": conflicts,
    }


def format_conflicts(entry: dict, limit: int = LIST_LIMIT) -> str:
    """'scan (folder, metadata says X), ...' for the first `limit` conflicts, and the rest's
    count."""
    return brief_list(
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


LEAKAGE_WARNING = (
    "the test folder shares brains with train; test accuracy is not an estimate of accuracy on "
    "new people"
)
# The share of test images with a near-identical train image above which reports warn.
LEAKAGE_WARN_SHARE = 0.10


def _share(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def format_agreement(agreement: dict) -> str:
    """'flagged 12 of 40 test images whose subject is in train (30.0%), 1 of 2980 whose subject
    is not (0.0%)': near_duplicates.subject_agreement in one short line."""
    others = agreement["test_images"] - agreement["shared_subject_images"]
    return (
        f"flagged {agreement['flagged_shared']} of {agreement['shared_subject_images']} test "
        f"images whose subject is in train ({_share(agreement['flag_rate_shared'])}), "
        f"{agreement['flagged_not_shared']} of {others} whose subject is not "
        f"({_share(agreement['flag_rate_not_shared'])})"
    )


def format_near_duplicates(entry: dict | None) -> list[str]:
    """The lines saying how many held-out images have a near-identical image in train, and the
    warning when that share is high."""
    if not entry:
        return []
    # The method's name only ('bandpass-v1'); its description is in the JSON and docs/leakage.md.
    method = entry["method"].split(":")[0]
    lines = [
        f"{entry['held_out_split']} images with a near-identical image in train: "
        f"{entry['test_images_with_train_match']} of {entry['test_images']} "
        f"({entry['share']:.1%}; {method}, threshold {entry['threshold']:g})"
    ]
    agreement = entry.get("agreement_with_subject_ids")
    if agreement:
        lines.append(f"  agreement with subject IDs: {format_agreement(agreement)}")
    if entry["share"] >= LEAKAGE_WARN_SHARE:
        lines.append(f"Warning: {LEAKAGE_WARNING}.")
    return lines


def format_table(report: dict) -> str:
    """The audit as a readable text table."""
    lines = [f"Audit of {report['root']} (subjects from {report['subject_source']})"]
    if "layout" in report:  # absent from audits stored before layouts existed
        sizes = ", ".join(f"{s} ({n})" for s, n in report["image_sizes"].items()) or "-"
        lines.append(
            f"layout {report['layout']}, classes {', '.join(report['class_names'])}, "
            f"folders {', '.join(report['folders']) or 'none'}, image sizes {sizes}"
        )
        renamed = {k: v for k, v in report["class_mapping"].items() if k != v}
        if renamed:
            lines.append("class names mapped: " + ", ".join(f"{k} -> {v}" for k, v in
                                                           renamed.items()))  # fmt: skip
    width = max([5] + [len(c) for classes in report["counts"].values() for c in classes])
    fw = max([8] + [len(f) + 2 for f in report["counts"]])
    lines += ["", f"{'folder':<{fw}}{'class':<{width}} {'images':>7} {'scans':>6} {'subjects':>8}"]
    for split, classes in report["counts"].items():
        for cls, c in classes.items():
            lines.append(f"{split:<{fw}}{cls:<{width}} {c['images']:>7} {c['scans']:>6} "
                         f"{c['subjects']:>8}")  # fmt: skip
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
    lines += format_near_duplicates(report.get("cross_split_near_duplicates"))
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
    missing = report.get("missing_classes")  # absent from audits stored before it existed
    if missing is not None:
        lines.append(f"classes without images in a folder or split: {missing['count']}")
        lines.extend(f"  {line}" for line in format_missing_classes(missing))
    similar = report.get("similar_class_names")
    if similar is not None:
        lines.append(f"class names that look like typos: {similar['count']}")
        lines.extend(f"  {line}" for line in similar["names"])
    conflicts = report.get("label_conflicts")  # absent from audits stored before it existed
    if conflicts is not None:
        lines.append(
            f"scans whose metadata label contradicts their class folder: {conflicts['count']} "
            f"(of {conflicts['scans_with_metadata_label']} with a recognised label; "
            f"{conflicts['unrecognised_labels']} unrecognised)"
            + (f": {format_conflicts(conflicts)}" if conflicts["count"] else "")
        )
    return "\n".join(lines)
