"""The synthetic stand-in: exact layout, determinism, and a class signal that global cues miss."""

import collections
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from alz_jax.tfds_builders.mri_slices import synthetic
from alz_jax.tfds_builders.mri_slices.layouts import adni


def test_layout_and_metadata(tiny_synthetic):
    root, summary = tiny_synthetic
    parsed = adni.parse(root)  # the builder's own parser accepts it
    assert parsed.root == root / "AD_NC"
    assert parsed.subject_source == "meta_data_with_label.json"
    scans = collections.defaultdict(list)
    for r in parsed.records:
        scans[r.scan_id].append(r.slice_index)
    for indices in scans.values():  # 20 contiguous slices per scan
        assert sorted(indices) == list(range(min(indices), min(indices) + 20))
    per_subject = collections.Counter(parsed.subject_of_scan[s] for s in scans)
    assert set(per_subject.values()) <= {1, 2}  # max_scans_per_subject=2 in the fixture
    image = cv2.imread(str(parsed.records[0].path), cv2.IMREAD_UNCHANGED)
    assert image.shape == (240, 256) and image.dtype == np.uint8
    assert sum(c["images"] for c in summary["train"].values()) == len(parsed.records_in("train"))


def test_deterministic_by_seed(tmp_path):
    spec = synthetic.SyntheticSpec(train_subjects=2, test_subjects=1, max_scans_per_subject=1)
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        synthetic.generate(tmp_path / name, seed=seed, spec=spec)

    def contents(d):
        return {p.relative_to(d): p.read_bytes() for p in sorted(Path(d).rglob("*.jpeg"))}

    assert contents(tmp_path / "a") == contents(tmp_path / "b")
    assert contents(tmp_path / "a") != contents(tmp_path / "c")
    meta = json.loads((tmp_path / "a" / "meta_data_with_label.json").read_text())
    assert all(adni.SUBJECT_PATTERN.search(e["source_path"]) for e in meta.values())


@pytest.fixture(scope="module")
def scan_features(tmp_path_factory):
    """Per-scan mean intensity, brain area, slice-window start and label, train and test."""
    root = tmp_path_factory.mktemp("synthetic_lr")
    spec = synthetic.SyntheticSpec(train_subjects=60, test_subjects=40)
    synthetic.generate(root, seed=7, spec=spec)
    out = {}
    for split in ("train", "test"):
        feats = collections.defaultdict(list)
        labels, starts = {}, collections.defaultdict(lambda: 10**6)
        for path in (root / "AD_NC" / split).glob("*/*.jpeg"):
            scan, index = adni.parse_file_name(path.name)
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            feats[scan].append((image.mean(), (image > 20).mean()))
            labels[scan] = int(path.parent.name == "AD")
            starts[scan] = min(starts[scan], index)
        keys = sorted(feats)
        out[split] = (
            np.array([np.mean(feats[k], axis=0) for k in keys]),
            np.array([labels[k] for k in keys]),
            np.array([starts[k] for k in keys]),
        )
    return out


def test_mean_intensity_and_brain_area_are_weak_cues(scan_features):
    (x_train, y_train, _), (x_test, y_test, _) = scan_features["train"], scan_features["test"]
    mean, std = x_train.mean(0), x_train.std(0)
    classifier = LogisticRegression().fit((x_train - mean) / std, y_train)
    accuracy = classifier.score((x_test - mean) / std, y_test)
    assert accuracy <= 0.75, accuracy


def test_slice_window_is_independent_of_class(scan_features):
    x, y, starts = scan_features["train"]
    del x
    # The shortcut baseline: the slice-window start alone predicts the class at chance.
    classifier = LogisticRegression().fit(starts[:, None], y)
    _, y_test, starts_test = scan_features["test"]
    assert classifier.score(starts_test[:, None], y_test) <= 0.65
    assert abs(starts[y == 1].mean() - starts[y == 0].mean()) < 4
