"""The calibration split (data.calibration_fraction): whole subjects carved out of train,
stratified by class and seeded; train shrinks by exactly them; fraction 0 changes nothing; the
refusals name the setting with counts; the external protocol ignores it."""

import logging

import cv2
import numpy as np
import pytest

from alz_jax.configs import demo
from alz_jax.data import calibration_split, dataset
from alz_jax.data.data_spec import DataSpec
from alz_jax.host.errors import UserError
from alz_jax.run import run_record, specs
from alz_jax.tfds_builders.mri_slices.layouts.classes import STAGES

NAMES = ("A", "B", "C")


def _pooled(train_per_class=(10, 6, 4)):
    """A hand-made pooled data set: per class, that many train subjects (1-3 scans of 2 slices
    each; subject B00 has a scan of class A too: its majority is B), 2 validation and 2 test
    subjects. Returns (pooled, positions)."""
    rows = {k: [] for k in ("subject_id", "scan_id", "label", "slice_index", "builder_split")}
    scan = 0
    for label, n_train in enumerate(train_per_class):
        for split, n in (("train", n_train), ("validation", 2), ("test", 2)):
            for s in range(n):
                subject = f"{split[:2]}{NAMES[label]}{s:02d}"
                scan_labels = [label] * (1 + s % 3)
                if subject == "trB00":
                    scan_labels = [1, 1, 0]
                for scan_label in scan_labels:
                    scan += 1
                    for k in range(2):
                        rows["subject_id"].append(subject)
                        rows["scan_id"].append(f"scan{scan}")
                        rows["label"].append(scan_label)
                        rows["slice_index"].append(k)
                        rows["builder_split"].append(split)
    pooled = {k: np.asarray(v, dtype=np.int64 if k in ("label", "slice_index") else object)
              for k, v in rows.items()}  # fmt: skip
    positions = {s: np.flatnonzero(pooled["builder_split"] == s)
                 for s in ("train", "validation", "test")}  # fmt: skip
    return pooled, positions


def _subjects(pooled, positions):
    return {split: set(pooled["subject_id"][pos]) for split, pos in positions.items()}


def test_whole_subjects_stratified_exact_counts_and_train_shrinks_by_them():
    pooled, positions = _pooled()
    out, counts = calibration_split.carve(pooled, positions, 0.25, 0, NAMES)
    # round(0.25 x n) per class, halves up: 10 -> 3 (2.5), 6 -> 2 (1.5), 4 -> 1.
    assert counts == {"A": {"subjects": 10, "calibration": 3},
                      "B": {"subjects": 6, "calibration": 2},
                      "C": {"subjects": 4, "calibration": 1}}  # fmt: skip
    subjects = _subjects(pooled, out)
    calib = subjects["calibration"]
    assert [sum(s.startswith(f"tr{c}") for s in calib) for c in NAMES] == [3, 2, 1]
    for a in subjects:
        for b in subjects:
            if a < b:
                assert not subjects[a] & subjects[b], (a, b)
    # Train loses exactly the carved subjects' records, every one of them; the rest is untouched.
    assert sorted(np.concatenate([out["train"], out["calibration"]])) == sorted(positions["train"])
    assert subjects["train"] == _subjects(pooled, positions)["train"] - calib
    carved = np.isin(pooled["subject_id"], sorted(calib))
    assert sorted(out["calibration"]) == sorted(np.flatnonzero(carved))
    for split in ("validation", "test"):
        assert out[split] is positions[split]


def test_a_subject_of_two_classes_moves_whole_by_its_majority():
    pooled, positions = _pooled()
    records_of_b00 = np.flatnonzero(pooled["subject_id"] == "trB00")  # 3 scans, one of class A
    drawn = 0
    for seed in range(20):
        out, counts = calibration_split.carve(pooled, positions, 0.5, seed, NAMES)
        assert counts["A"] == {"subjects": 10, "calibration": 5}  # B00 is not an A subject
        in_calib = np.isin(records_of_b00, out["calibration"])
        assert in_calib.all() or not in_calib.any()
        drawn += in_calib.all()
    assert 0 < drawn < 20


def test_deterministic_for_a_seed_and_different_for_another():
    pooled, positions = _pooled()
    first, _ = calibration_split.carve(pooled, positions, 0.3, 7, NAMES)
    again, _ = calibration_split.carve(pooled, positions, 0.3, 7, NAMES)
    other, _ = calibration_split.carve(pooled, positions, 0.3, 8, NAMES)
    assert np.array_equal(first["calibration"], again["calibration"])
    assert np.array_equal(first["train"], again["train"])
    assert _subjects(pooled, first)["calibration"] != _subjects(pooled, other)["calibration"]
    # Independent of record order: the draw is over sorted subject IDs.
    order = np.random.default_rng(0).permutation(len(pooled["label"]))
    shuffled = {k: v[order] for k, v in pooled.items()}
    back = {s: np.flatnonzero(shuffled["builder_split"] == s) for s in positions}
    moved, _ = calibration_split.carve(shuffled, back, 0.3, 7, NAMES)
    assert _subjects(shuffled, moved)["calibration"] == _subjects(pooled, first)["calibration"]


def test_fraction_zero_changes_nothing():
    pooled, positions = _pooled()
    out, counts = calibration_split.carve(pooled, positions, 0.0, 0, NAMES)
    assert out is positions and counts == {} and "calibration" not in out


def test_a_class_left_without_train_subjects_is_refused_with_counts():
    pooled, positions = _pooled((10, 6, 2))
    with pytest.raises(UserError) as e:
        calibration_split.carve(pooled, positions, 0.8, 0, NAMES)
    text = str(e.value)
    assert text.startswith("data.calibration_fraction = 0.8: ")
    # A: round(8) of 10 keeps 2; B: round(4.8) = 5 of 6 keeps 1; C: round(1.6) = 2 of 2: none.
    assert "class C would keep no train subject (it has 2, calibration takes 2; " in text
    assert "a fraction below 0.75 keeps one)" in text
    assert "class A" not in text and "class B" not in text
    assert "set it to 0 to calibrate on validation" in text


def test_a_class_without_calibration_subjects_is_refused_with_counts():
    pooled, positions = _pooled((10, 6, 4))
    with pytest.raises(UserError) as e:
        calibration_split.carve(pooled, positions, 0.1, 0, NAMES)
    text = str(e.value)
    # A: round(1.0) = 1; B: round(0.6) = 1; C: round(0.4) = 0.
    assert ("data.calibration_fraction = 0.1: class C would have no calibration subject "
            "(round(0.1 x 4 train subjects) = 0; it needs at least 0.13)") in text  # fmt: skip
    assert "class A" not in text and "class B" not in text


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_the_setting_is_checked(value):
    with pytest.raises(UserError, match=r"config\.data\.calibration_fraction = .*: expected in "
                                        r"\[0, 1\)"):  # fmt: skip
        DataSpec(calibration_fraction=value)


def _spec(root, tmp_path, **kwargs) -> DataSpec:
    return DataSpec(manual_dir=str(root), data_dir=str(tmp_path / "tfds"), **kwargs)


def test_fraction_zero_keeps_todays_manifest_and_fingerprint(tiny_synthetic, tmp_path):
    root, _ = tiny_synthetic
    today = dataset.prepare(_spec(root, tmp_path))
    zero = dataset.prepare(_spec(root, tmp_path, calibration_fraction=0.0))
    assert zero.split_names == ("train", "validation", "test")
    assert not zero.has_split("calibration")
    assert zero.manifest() == today.manifest()
    assert set(zero.manifest()) == {"protocol", "train", "validation", "test"}
    assert zero.fingerprint() == today.fingerprint()
    assert zero.report_metadata() == today.report_metadata()
    assert "test_subjects_also_in_calibration" not in zero.report_metadata()


def test_a_built_data_set_gets_a_calibration_split(tiny_synthetic, tmp_path, caplog):
    root, _ = tiny_synthetic
    today = dataset.prepare(_spec(root, tmp_path))
    with caplog.at_level(logging.INFO):
        data = dataset.prepare(_spec(root, tmp_path, calibration_fraction=0.5))
    assert data.has_split("calibration") and data.split_names[-1] == "calibration"
    manifest = data.manifest()
    subjects = {s: set(manifest[s]["subjects"]) for s in data.split_names}
    assert subjects["calibration"]
    assert subjects["train"] | subjects["calibration"] == set(today.manifest()["train"]["subjects"])
    assert not subjects["train"] & subjects["calibration"]
    assert not subjects["validation"] & subjects["calibration"]
    assert data.num_examples("train") + data.num_examples("calibration") == today.num_examples(
        "train"
    )
    # Every class in both train and calibration; records and source line up.
    for split in ("train", "calibration"):
        assert set(data.records(split)["label"].tolist()) == {0, 1}
    source = data.source("calibration")
    assert len(source) == data.num_examples("calibration")
    assert source[0]["file_name"].decode() == data.records("calibration")["file_name"][0]
    assert manifest["protocol"]["calibration_fraction"] == 0.5
    assert manifest["protocol"]["calibration_unit"] == "subject"
    assert data.fingerprint() != today.fingerprint()
    meta = data.report_metadata()
    assert set(meta["class_distribution"]) == {"train", "validation", "test", "calibration"}
    assert sum(meta["class_distribution"]["calibration"].values()) == data.num_examples(
        "calibration"
    )
    assert meta["test_subjects_also_in_calibration"] == len(
        set(manifest["test"]["subjects"]) & subjects["calibration"]
    )
    n = len(subjects["calibration"])
    line = f"Calibration split: {n} subjects, {data.num_examples('calibration')} images"
    assert any(r.getMessage().startswith(line) for r in caplog.records)
    assert f"calibration {data.num_examples('calibration')} images ({n} subjects)" in (
        data.split_sizes()
    )


def test_the_external_protocol_ignores_it_and_says_why(tiny_synthetic, tmp_path, caplog):
    root, _ = tiny_synthetic
    with caplog.at_level(logging.INFO):
        data = dataset.prepare(_spec(root, tmp_path, protocol="external",
                                     calibration_fraction=0.3))  # fmt: skip
    assert not data.has_split("calibration")
    assert "calibration_fraction" not in data.manifest()["protocol"]
    assert any("data.calibration_fraction = 0.3 ignored: the external protocol" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def _stages_without_subjects(root):
    """root/{train,test}/<stage>/<n>.png: 6 train and 2 test images per stage, distinct tiny
    images named without scan IDs (each image stands in for its subject)."""
    for s, (split, n) in enumerate((("train", 6), ("test", 2))):
        for c, stage in enumerate(STAGES):
            (root / split / stage).mkdir(parents=True)
            for i in range(n):
                value = 10 + 100 * s + 20 * c + 3 * i
                png = cv2.imencode(".png", np.full((8, 8), value, np.uint8))[1].tobytes()
                (root / split / stage / f"{i}.png").write_bytes(png)
    return root


def test_without_subject_ids_it_carves_by_scan_and_says_so(tmp_path, caplog):
    root = _stages_without_subjects(tmp_path / "stages")
    with caplog.at_level(logging.INFO):
        data = dataset.prepare(_spec(root, tmp_path, calibration_fraction=0.4))
    assert data.metadata["subject_source"] == "scan_id"
    assert data.manifest()["protocol"]["calibration_unit"] == "scan"
    # Validation takes 1 of each stage's 6; calibration round(0.4 x 5) = 2 of the other 5.
    counts = data.class_distribution()
    assert counts["calibration"] == {name: 2 for name in data.class_names}
    assert counts["train"] == {name: 3 for name in data.class_names}
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Calibration split: 8 scans, 8 images") for m in messages)
    assert any("no subject IDs, so the calibration split is carved by scan" in m for m in messages)


def test_a_runs_identity_leaves_it_out_at_zero_and_names_it_otherwise():
    """A run recorded before the setting existed still resumes; a resume that changes it (so
    train changes) is refused, as for data.validation_fraction."""
    config = demo.get_config()
    assert config.data.calibration_fraction == 0.0
    assert "calibration_fraction" not in run_record.identity(specs.resolve(config), "fp")["data"]
    config.data.calibration_fraction = 0.2
    assert run_record.identity(specs.resolve(config), "fp")["data"]["calibration_fraction"] == 0.2
