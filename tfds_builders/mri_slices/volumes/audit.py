"""The audit of a volume collection: each volume inspected (header, full read, intensities), then
one report of the listing: subjects, sessions and labels, the voxel sizes, shapes, orientations
and formats found, every unreadable file, the subjects whose label changes between sessions and
what the layout left out; and that report as a console table.
"""

from __future__ import annotations

import collections
import statistics
from pathlib import Path

from ..layouts.base import brief_list
from .listing import VolumeListing, VolumeRecord
from .reading import VolumeError, read_header, read_volume
from .settings import VolumeSettings
from .slicing import normalise

# The intensity statistics the report summarises over volumes.
INTENSITY_KEYS = ("p_low", "p_high", "mean")
TABLE_WIDTH = 99


def inspect(path: Path | str, voxels: str = "refuse") -> dict:
    """What one volume is: {"shape", "zooms", "orientation", "format", "dtype", "intensity":
    normalise's stats at the default clip}. Where the volume cannot be used, "problem" (the
    VolumeError's reason) and "detail" (its one-line message) instead of what could not be
    read; the header's fields stay where the header was read (non-1 mm voxels, truncated
    data). The audit reports, it never raises VolumeError."""
    try:
        header = read_header(path)
    except VolumeError as e:
        return {"problem": e.reason, "detail": str(e)}
    found: dict = {
        "shape": list(header.shape),
        "zooms": [round(z, 4) for z in header.zooms],
        "orientation": header.orientation,
        "format": header.format,
        "dtype": header.dtype,
    }
    try:
        data, _ = read_volume(path, voxels)
        _, found["intensity"] = normalise(data, VolumeSettings().clip, str(path))
    except VolumeError as e:
        found.update(problem=e.reason, detail=str(e))
    return found


def _size_key(zooms: list[float]) -> str:
    return "x".join(f"{z:.3g}" for z in zooms)


def _tally(values: list[str]) -> dict[str, int]:
    """Each value's count, the most common first (then by name)."""
    counts = collections.Counter(values)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _class_counts(records: list[VolumeRecord], class_names: tuple[str, ...]) -> dict:
    """Sessions (volumes) and subjects of each class; a subject whose label changes counts in
    each of its classes."""
    return {
        name: {
            "sessions": sum(r.label == label for r in records),
            "subjects": len({r.subject for r in records if r.label == label}),
        }
        for label, name in enumerate(class_names)
    }


def _label_changes(records: list[VolumeRecord], class_names: tuple[str, ...]) -> dict:
    """The subjects whose sessions carry more than one label, with each session's label."""
    sessions = collections.defaultdict(list)
    for r in records:
        sessions[r.subject].append(r)
    changing = [
        {
            "subject": subject,
            "labels": [
                {"session": r.session, "label": class_names[r.label]}
                for r in sorted(rows, key=lambda r: r.session)
            ],
        }
        for subject, rows in sorted(sessions.items())
        if len({r.label for r in rows}) > 1
    ]
    return {"count": len(changing), "subjects": changing}


def _intensity(found: list[dict]) -> dict:
    """Min, median and max over the volumes of each INTENSITY_KEYS statistic."""
    stats = [f["intensity"] for f in found if "intensity" in f]
    if not stats:
        return {}
    return {
        key: {
            "min": min(s[key] for s in stats),
            "median": float(f"{statistics.median(s[key] for s in stats):.4g}"),
            "max": max(s[key] for s in stats),
        }
        for key in INTENSITY_KEYS
    }


def build_report(listing: VolumeListing, inspected: dict[str, dict]) -> dict:
    """The audit of a volume listing as JSON values, from `inspect`'s result for each volume
    keyed by scan_id (a volume without one is listed as unreadable, "not inspected").

    Voxel sizes, shapes, orientations and formats count every volume whose header was read, the
    ones with a problem in their data included; intensity covers the volumes read in full.
    """
    records = listing.volumes
    found = [inspected.get(r.scan_id, {"problem": "not inspected"}) for r in records]
    names = listing.class_names
    per_subject = collections.Counter(r.subject for r in records)
    with_header = [f for f in found if "shape" in f]
    report = {
        "layout": listing.kind,
        "root": str(listing.root),
        "label_table": listing.label_table,
        "class_names": list(names),
        "class_mapping": dict(listing.class_mapping),
        "counts": {
            "volumes": len(records),
            "subjects": len(per_subject),
            "per_class": _class_counts(records, names),
        },
        "subjects_with_several_sessions": sum(n > 1 for n in per_subject.values()),
        "sessions_per_subject": {
            str(n): c for n, c in sorted(collections.Counter(per_subject.values()).items())
        },
        "voxel_sizes": _tally([_size_key(f["zooms"]) for f in with_header]),
        "shapes": _tally(["x".join(str(n) for n in f["shape"]) for f in with_header]),
        "orientations": _tally([f["orientation"] for f in with_header]),
        "formats": _tally([f["format"] for f in with_header]),
        "unreadable": _unreadable(records, found),
        "label_changes": _label_changes(records, names),
        "skipped": {"counts": listing.skipped_counts(), "items": dict(listing.skipped)},
        "intensity": _intensity(found),
    }
    splits = sorted({r.folder_split for r in records if r.folder_split})
    if splits:
        report["counts"]["per_split"] = {
            split: _class_counts([r for r in records if r.folder_split == split], names)
            for split in splits
        }
    return report


def _unreadable(records: list[VolumeRecord], found: list[dict]) -> dict:
    """Every volume with a problem: its file, the problem and the one-line detail."""
    files = [
        {"file": r.file_name, "problem": f["problem"], "detail": f.get("detail", "")}
        for r, f in zip(records, found, strict=True)
        if "problem" in f
    ]
    return {"count": len(files), "files": files}


def _counts_line(counts: dict) -> str:
    return ", ".join(f"{n}: {c}" for n, c in counts.items()) or "none"


def _wrapped(label: str, text: str) -> list[str]:
    """`label` and `text` on lines under TABLE_WIDTH characters (text split at ", ")."""
    lines: list[str] = []
    line, empty = f"{label:<23} ", True
    for part in text.split(", "):
        if not empty and len(line) + len(part) + 3 > TABLE_WIDTH:
            lines.append(line + ",")
            line, empty = " " * 24, True
        line += part if empty else f", {part}"
        empty = False
    return [*lines, line]


def format_table(report: dict) -> str:
    """The audit report as a console table: lines under 100 characters, long lists cut."""
    counts = report["counts"]
    lines = [
        f"Volume layout {report['layout']} in {report['root']}",
        f"Labels from {report['label_table'] or '(the layout)'}",
        f"{'class':<24}{'sessions':>10}{'subjects':>10}",
    ]
    for name, c in counts["per_class"].items():
        lines.append(f"{name:<24}{c['sessions']:>10}{c['subjects']:>10}")
    lines.append(f"{'all':<24}{counts['volumes']:>10}{counts['subjects']:>10}")
    for split, per_class in counts.get("per_split", {}).items():
        text = ", ".join(
            f"{n} {c['sessions']} ({c['subjects']} subj.)" for n, c in per_class.items()
        )
        lines += _wrapped(f"folder split {split}", text)
    mapping = [f"{k} -> {v}" for k, v in report["class_mapping"].items()]
    rows = [
        ("class mapping", brief_list(mapping) or "none"),
        ("sessions per subject", _counts_line(report["sessions_per_subject"])),
        ("voxel sizes (mm)", _counts_line(report["voxel_sizes"])),
        ("shapes", _counts_line(report["shapes"])),
        ("orientations", _counts_line(report["orientations"])),
        ("formats", _counts_line(report["formats"])),
    ]
    for key, stat in report["intensity"].items():
        rows.append((f"intensity {key}", _counts_line(stat)))
    unreadable = report["unreadable"]
    rows.append(("unreadable", str(unreadable["count"])))
    changes = report["label_changes"]
    changed = [
        f"{s['subject']} ({' '.join(x['label'] for x in s['labels'])})" for s in changes["subjects"]
    ]
    listed = f": {brief_list(changed)}" if changed else ""
    rows.append(("label changes", f"{changes['count']}{listed}"))
    for reason, n in report["skipped"]["counts"].items():
        rows.append(
            (f"skipped: {reason}", f"{n}: {brief_list(report['skipped']['items'][reason])}")
        )
    for label, text in rows:
        lines += _wrapped(label, text)
    for entry in unreadable["files"][:10]:
        lines.append(f"  {entry['problem']}: {entry['detail'] or entry['file']}")
    if unreadable["count"] > 10:
        lines.append(f"  ... and {unreadable['count'] - 10} more (all in the JSON report)")
    return "\n".join(_cut(line) for line in lines)


def _cut(line: str) -> str:
    """A line cut to TABLE_WIDTH characters (an ellipsis where it was longer)."""
    return line if len(line) <= TABLE_WIDTH else line[: TABLE_WIDTH - 3] + "..."
