"""Synthetic stand-in for the ADNI "AD_NC" slice set, written in the exact ADNI folder layout.

Each scan is a stack of 20 contiguous sagittal, skull-stripped, brain-like phantom slices
(256 wide x 240 high, 8-bit grayscale JPEG). AD scans carry atrophy (enlarged ventricles, wider
sulci from cortical thinning, a shrunken medial temporal lobe) of varying severity that overlaps
the milder, age-like atrophy of NC scans. Pose, head size, intensity, bias field and noise vary
per scan, so global statistics (mean intensity, brain area) are weak cues. The slice window is
independent of the class. Deterministic by seed.

Command line: `python -m alz_jax.synthetic --out=DIR [--seed=0]` (this package has no commands of
its own).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np

WIDTH, HEIGHT, SLICES_PER_SCAN = 256, 240, 20
_SUBJECT = re.compile(r"\d{3}_S_\d{4}")
# Bump when the images a seed produces change, so that stale generated sets are not reused.
GENERATOR_VERSION = 2
CLASSES = ("AD", "NC")


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Size and difficulty of the synthetic set."""

    train_subjects: int = 150
    test_subjects: int = 60
    min_scans_per_subject: int = 1
    max_scans_per_subject: int = 4
    ad_fraction: float = 0.5
    # Atrophy severity in [0, 1]: NC is age-like, AD is stronger; the tails overlap.
    nc_severity: tuple[float, float] = (0.2, 0.1)
    ad_severity: tuple[float, float] = (0.74, 0.12)
    slice_start_range: tuple[int, int] = (67, 95)
    jpeg_quality: int = 92
    # Traps of the real data set, all off by default (see docs/adni.md and alz_jax.audit):
    class_slice_windows: bool = False  # window start ~N(78, 5) for AD, ~N(88, 5) for NC
    shared_subjects: int = 0  # train subjects that get one visit moved to the test folder
    near_black_scans: int = 0  # whole scans darkened to near black
    truncated_jpegs: int = 0
    empty_jpegs: int = 0  # zero-byte files
    duplicate_images: int = 0  # byte copies under new scan IDs, alternately same/other folder
    off_size_images: int = 0  # re-encoded at 200x180
    stray_files: int = 0  # non-image files in the class folders


def tag(spec: SyntheticSpec, seed: int) -> str:
    """A short name for the set a (spec, seed, generator version) produces."""
    payload = json.dumps([GENERATOR_VERSION, seed, dataclasses.asdict(spec)], sort_keys=True)
    return f"seed{seed}_{hashlib.sha256(payload.encode()).hexdigest()[:8]}"


def _subject_id(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        sid = f"{rng.integers(2, 999):03d}_S_{rng.integers(1, 9999):04d}"
        if sid not in used:
            used.add(sid)
            return sid


def _scan_id(rng: np.random.Generator, used: set[int]) -> int:
    while True:
        scan = int(rng.integers(100000, 999999))
        if scan not in used:
            used.add(scan)
            return scan


def random_anatomy(rng: np.random.Generator, spread: float = 1.0) -> dict:
    """One subject's anatomy (head size, ventricles, hippocampus, midline, gyral pattern), the
    random numbers drawn in this order by every generator; `spread` scales how much head size,
    ventricles and hippocampus vary between subjects (the draws are the same for any spread)."""
    return {
        "scale": rng.normal(1.0, 0.06 * spread),
        "ventricle": rng.normal(1.0, 0.12 * spread),
        "hippocampus": rng.normal(1.0, 0.07 * spread),
        "midline": rng.uniform(95, 115),
        "phase": rng.uniform(0, 2 * np.pi),
        "gyri": int(rng.integers(14, 22)),
    }


def render_scan(
    rng: np.random.Generator, severity: float, anatomy: dict, slice_indices: np.ndarray
) -> np.ndarray:
    """Renders one scan's slices as uint8 (n_slices, HEIGHT, WIDTH) for a given atrophy severity."""
    n = len(slice_indices)
    # Pose: centre, head size, in-plane rotation.
    cx = WIDTH / 2 + rng.normal(0, 5)
    cy = HEIGHT / 2 + rng.normal(0, 5)
    scale = anatomy["scale"] * rng.normal(1.0, 0.015)
    angle = np.deg2rad(rng.normal(0, 5))
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    ca, sa = np.cos(angle), np.sin(angle)
    u0 = ((xx - cx) * ca + (yy - cy) * sa) / (98 * scale)
    v0 = (-(xx - cx) * sa + (yy - cy) * ca) / (82 * scale)

    # Lateral distance from the midline of each slice, in [0, ~1].
    lateral = np.abs(slice_indices.astype(np.float32) - anatomy["midline"]) / 40.0
    lateral = np.clip(lateral, 0.0, 1.0)[:, None, None]
    u, v = u0[None], v0[None]

    # Brain outline with gyral folding; it narrows away from the midline.
    theta = np.arctan2(v, u)
    radius = np.sqrt(u**2 + v**2)
    outline = 1.0 - 0.12 * lateral + 0.035 * np.sin(2 * theta + anatomy["phase"])
    folds = np.sin(anatomy["gyri"] * theta + anatomy["phase"] * 3)
    brain = radius < outline
    # Cerebellum (posterior-inferior) and brainstem.
    cereb = ((u - 0.55) / 0.38) ** 2 + ((v - 0.72) / 0.28) ** 2 < 1.0
    stem = (np.abs(u - 0.15) < 0.11) & (v > 0.45) & (v < 1.15)
    tissue = brain | cereb | stem

    # Cortical ribbon (grey matter) and sulci that widen with atrophy.
    depth = outline - radius
    ribbon = (depth < 0.13 - 0.03 * severity) & brain
    sulcus_width = 0.10 + 0.30 * severity
    sulci = brain & (folds > 1.0 - sulcus_width) & (depth < 0.16 + 0.08 * severity)
    # Lateral ventricle: enlarges with atrophy, smaller away from the midline.
    vent_scale = anatomy["ventricle"] * (1.0 + 1.5 * severity) * (1.0 - 0.6 * lateral)
    vent = ((u + 0.02) / (0.34 * vent_scale)) ** 2 + ((v + 0.08) / (0.09 * vent_scale)) ** 2 < 1.0
    vent |= ((u - 0.22) / (0.10 * vent_scale)) ** 2 + ((v - 0.05) / (0.18 * vent_scale)) ** 2 < 1.0
    # Medial temporal lobe (hippocampus), more visible laterally; shrinks with atrophy, with a
    # CSF-filled temporal horn that grows.
    hip_size = anatomy["hippocampus"] * (1.0 - 0.45 * severity) * (0.6 + 0.4 * lateral)
    hip_r = ((u + 0.05) / (0.22 * hip_size)) ** 2 + ((v - 0.42) / (0.09 * hip_size)) ** 2
    horn = (hip_r < (1.0 + 1.2 * severity) ** 2) & ~(hip_r < 1.0) & brain

    image = np.where(tissue, 0.78, 0.0).astype(np.float32)  # white matter
    image = np.where(ribbon | cereb, 0.52, image)
    image = np.where(hip_r < 1.0, 0.56, image)
    image = np.where(sulci | horn, 0.12, image)
    image = np.where(vent & brain, 0.08, image)

    # Per-scan intensity gain, smooth bias field, blur and noise.
    gain = rng.normal(1.0, 0.12)
    bias = 1.0 + 0.12 * np.sin(u0 * rng.uniform(1, 3) + rng.uniform(0, 6)) * np.cos(
        v0 * rng.uniform(1, 3) + rng.uniform(0, 6)
    )
    image = image * gain * bias[None]
    out = np.empty((n, HEIGHT, WIDTH), np.uint8)
    noise_sigma = rng.uniform(0.015, 0.045)
    for i in range(n):
        sl = cv2.GaussianBlur(image[i], (0, 0), 1.0)
        sl = sl + rng.normal(0, noise_sigma, sl.shape).astype(np.float32) * (sl > 0.02)
        out[i] = np.clip(sl * 255.0, 0, 255).astype(np.uint8)
    return out


def generate(out_dir: str | os.PathLike, seed: int = 0, spec: SyntheticSpec | None = None) -> dict:
    """Writes `<out_dir>/AD_NC/{train,test}/{AD,NC}/<scanID>_<slice>.jpeg` plus metadata JSON.

    Returns a summary: images, scans and subjects per split and class.
    """
    spec = spec or SyntheticSpec()
    rng = np.random.default_rng(seed)
    root = Path(out_dir)
    for split in ("train", "test"):
        for cls in CLASSES:
            (root / "AD_NC" / split / cls).mkdir(parents=True, exist_ok=True)
    used_subjects: set[str] = set()
    used_scans: set[int] = set()
    metadata: dict[str, dict] = {}
    summary: dict = {}
    for split, n_subjects in (("train", spec.train_subjects), ("test", spec.test_subjects)):
        counts = {c: {"images": 0, "scans": 0, "subjects": 0} for c in CLASSES}
        for _ in range(n_subjects):
            label = "AD" if rng.random() < spec.ad_fraction else "NC"
            subject = _subject_id(rng, used_subjects)
            anatomy = random_anatomy(rng)
            mean, sd = spec.ad_severity if label == "AD" else spec.nc_severity
            base_severity = rng.normal(mean, sd)
            n_scans = int(rng.integers(spec.min_scans_per_subject, spec.max_scans_per_subject + 1))
            counts[label]["subjects"] += 1
            for visit in range(n_scans):
                scan = _scan_id(rng, used_scans)
                progression = 0.04 if label == "AD" else 0.01
                severity = float(np.clip(base_severity + progression * visit, 0.0, 1.0))
                if spec.class_slice_windows:
                    low, high = spec.slice_start_range
                    start = int(np.clip(rng.normal(78 if label == "AD" else 88, 5), low, high))
                else:
                    start = int(
                        rng.integers(spec.slice_start_range[0], spec.slice_start_range[1] + 1)
                    )
                slices = np.arange(start, start + SLICES_PER_SCAN)
                images = render_scan(rng, severity, anatomy, slices)
                folder = root / "AD_NC" / split / label
                for index, image in zip(slices, images, strict=True):
                    ok, buf = cv2.imencode(
                        ".jpeg", image, [cv2.IMWRITE_JPEG_QUALITY, spec.jpeg_quality]
                    )
                    assert ok
                    (folder / f"{scan}_{index}.jpeg").write_bytes(buf.tobytes())
                metadata[str(scan)] = {
                    "label": label,
                    "visit": visit,
                    "source_path": f"ADNI/{subject}/MPRAGE/visit_{visit:02d}/S{scan}.nii",
                }
                counts[label]["scans"] += 1
                counts[label]["images"] += SLICES_PER_SCAN
        summary[split] = counts
    traps = _add_traps(root, spec, np.random.default_rng([seed, 1]), metadata, used_scans)
    with open(root / "meta_data_with_label.json", "w") as f:
        json.dump(metadata, f, indent=1, sort_keys=True)
    if traps:
        summary["traps"] = traps
    return summary


def _add_traps(
    root: Path, spec: SyntheticSpec, rng: np.random.Generator, metadata: dict, used_scans: set
) -> dict:
    """Applies the trap switches to the written folder (own random stream: with every switch
    off, the folder is byte-identical to one generated without them). Returns what was done."""
    traps: dict = {}
    data = root / "AD_NC"
    subject_of = {s: _SUBJECT.search(e["source_path"]).group(0) for s, e in metadata.items()}

    if spec.shared_subjects:
        traps["shared_subjects"] = _share_subjects(data, spec.shared_subjects, rng, subject_of)

    scans = sorted(metadata)
    dark = [str(s) for s in rng.choice(scans, spec.near_black_scans, replace=False)]
    for scan in dark:
        for path in _files_of(data, scan):
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            _write_jpeg(path, (image * 0.01).astype(np.uint8), spec.jpeg_quality)
    traps["near_black_scans"] = sorted(dark)

    pool = [p for p in sorted(data.glob("*/*/*.jpeg")) if p.name.split("_")[0] not in dark]
    order = rng.permutation(len(pool))
    wanted = {
        "duplicate_images": spec.duplicate_images,
        "truncated_jpegs": spec.truncated_jpegs,
        "empty_jpegs": spec.empty_jpegs,
        "off_size_images": spec.off_size_images,
    }
    picked, start = {}, 0
    for kind, n in wanted.items():
        picked[kind] = [pool[i] for i in order[start : start + n]]
        start += n
    _duplicate(data, picked["duplicate_images"], rng, metadata, used_scans)
    for path in picked["truncated_jpegs"]:
        data_bytes = path.read_bytes()
        path.write_bytes(data_bytes[: len(data_bytes) * 6 // 10])
    for path in picked["empty_jpegs"]:
        path.write_bytes(b"")
    for path in picked["off_size_images"]:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        _write_jpeg(path, cv2.resize(image, (200, 180)), spec.jpeg_quality)
    for kind, paths in picked.items():
        if paths:
            traps[kind] = [str(p.relative_to(data)) for p in paths]
    for i in range(spec.stray_files):
        folder, cls = rng.choice(["train", "test"]), rng.choice(["AD", "NC"])
        name = ("Thumbs.db", f"notes_{i}.txt", f"scan_list_{i}.csv")[i % 3]
        (data / folder / cls / name).write_text("not an image\n")
        traps.setdefault("stray_files", []).append(f"{folder}/{cls}/{name}")
    return {k: v for k, v in traps.items() if v}


def _files_of(data: Path, scan: str) -> list[Path]:
    return sorted(data.glob(f"*/*/{scan}_*.jpeg"))


def _share_subjects(data: Path, n: int, rng: np.random.Generator, subject_of: dict) -> list[str]:
    """Moves the last visit of n multi-visit train subjects into the test folder."""
    scans_of: dict[str, list[str]] = {}
    for scan in sorted(subject_of):
        if _files_of(data, scan)[0].parts[-3] == "train":
            scans_of.setdefault(subject_of[scan], []).append(scan)
    candidates = sorted(s for s, scans in scans_of.items() if len(scans) >= 2)
    chosen = sorted(str(s) for s in rng.choice(candidates, n, replace=False))
    for subject in chosen:
        for path in _files_of(data, sorted(scans_of[subject])[-1]):
            path.rename(data / "test" / path.parent.name / path.name)
    return chosen


def _duplicate(
    data: Path, sources: list[Path], rng: np.random.Generator, metadata: dict, used_scans: set
) -> None:
    """Byte copies under new scan IDs (own subjects), every other one in the other folder."""
    for i, source in enumerate(sources):
        folder, cls = source.parts[-3], source.parts[-2]
        if i % 2:
            folder = "test" if folder == "train" else "train"
        scan = _scan_id(rng, used_scans)
        target = data / folder / cls / f"{scan}_{source.name.split('_')[1]}"
        target.write_bytes(source.read_bytes())
        metadata[str(scan)] = {
            "label": cls,
            "visit": 0,
            "source_path": f"ADNI/{900 + i:03d}_S_{9000 + i:04d}/duplicate/S{scan}.nii",
        }


def _write_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode(".jpeg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.write_bytes(buf.tobytes())
