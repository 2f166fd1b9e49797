"""Test helper: writes a small folder in the ADNI layout, independent of the synthetic generator.

Differences from the generator on purpose: no AD_NC level, a different scan-ID range (7 digits),
5 slices per scan, a metadata JSON whose entries map 2-4 scans to one subject, and one subject
with visits in both the train and test folders.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np

SLICES = 5


@dataclasses.dataclass
class FolderSpec:
    """What the helper wrote: counts per folder and subject membership."""

    images: dict[str, int]  # per folder split
    scans_of_subject: dict[str, list[str]]
    folder_of_scan: dict[str, str]
    label_of_scan: dict[str, str]
    shared_subject: str


def _image(rng: np.random.Generator, label: str) -> bytes:
    image = np.zeros((240, 256), np.uint8)
    radius = 60 if label == "AD" else 80
    cv2.circle(image, (128, 120), radius, int(rng.integers(120, 200)), -1)
    image = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpeg", image)
    assert ok
    return buf.tobytes()


def make(root: Path, seed: int = 0) -> FolderSpec:
    """Writes train/ and test/ (with AD/ and NC/) plus meta_data_with_label.json under root."""
    rng = np.random.default_rng(seed)
    # (subject, label, scans in train, scans in test)
    subjects = [
        ("011_S_0002", "NC", 2, 0),
        ("011_S_0003", "AD", 3, 0),
        ("022_S_0004", "NC", 4, 0),
        ("022_S_0005", "AD", 2, 0),
        ("033_S_0006", "NC", 3, 0),
        ("033_S_0007", "AD", 4, 0),
        ("044_S_0008", "NC", 2, 0),
        ("044_S_0009", "AD", 2, 0),
        ("055_S_0010", "AD", 1, 2),  # the shared subject: visits in both folders
        ("066_S_0011", "NC", 0, 2),
        ("066_S_0012", "AD", 0, 3),
    ]
    scan_counter = 2_000_000
    spec = FolderSpec({"train": 0, "test": 0}, {}, {}, {}, shared_subject="055_S_0010")
    metadata = {}
    for subject, label, n_train, n_test in subjects:
        for folder, n in (("train", n_train), ("test", n_test)):
            (root / folder / label).mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                scan_counter += int(rng.integers(1, 50))
                scan = str(scan_counter)
                for s in range(60, 60 + SLICES):
                    (root / folder / label / f"{scan}_{s}.jpeg").write_bytes(_image(rng, label))
                spec.images[folder] += SLICES
                spec.scans_of_subject.setdefault(subject, []).append(scan)
                spec.folder_of_scan[scan] = folder
                spec.label_of_scan[scan] = label
                metadata[scan] = {
                    "label": label,
                    "paths": {"source": f"/data/ADNI/{subject}/MP-RAGE/2007-01-01/S{scan}/x.nii"},
                }
    for folder in ("train", "test"):
        for label in ("AD", "NC"):
            (root / folder / label).mkdir(parents=True, exist_ok=True)
    (root / "meta_data_with_label.json").write_text(json.dumps(metadata))
    return spec
