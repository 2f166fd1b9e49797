"""The `adni` TFDS builder: layouts, subjects, subject-aware splits, exact counts, clear errors."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from alz_jax.tfds_builders.mri_slices import Builder, config_for, splits, synthetic
from alz_jax.tfds_builders.mri_slices.layouts import adni
from alz_jax.tfds_builders.mri_slices.layouts.base import LayoutError


def build(manual_dir, data_dir, validation_fraction=0.1, split_seed=0):
    builder = Builder(
        data_dir=str(data_dir),
        config=config_for(validation_fraction, split_seed),
        file_format="array_record",
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def read_split(builder, split):
    source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    return [source[i] for i in range(len(source))]


def folder_count(root, split):
    return sum(1 for _ in (Path(root) / split).glob("*/*.jpeg"))


@pytest.fixture(scope="module")
def built_synthetic(tiny_synthetic, tmp_path_factory):
    root, summary = tiny_synthetic
    return root, summary, build(root, tmp_path_factory.mktemp("tfds_synth"))


def test_synthetic_split_sizes_equal_folder_counts(built_synthetic):
    root, summary, builder = built_synthetic
    n = {s: builder.info.splits[s].num_examples for s in ("train", "validation", "test")}
    train_images = sum(c["images"] for c in summary["train"].values())
    test_images = sum(c["images"] for c in summary["test"].values())
    assert n["train"] + n["validation"] == train_images == folder_count(root / "AD_NC", "train")
    assert n["test"] == test_images == folder_count(root / "AD_NC", "test")
    assert n["validation"] > 0


def test_train_and_validation_disjoint_by_subject(built_synthetic):
    _, _, builder = built_synthetic
    subjects = {
        s: {ex["subject_id"] for ex in read_split(builder, s)} for s in ("train", "validation")
    }
    assert subjects["train"] and subjects["validation"]
    assert not subjects["train"] & subjects["validation"]
    # Subjects come from the metadata JSON, not the scan IDs.
    assert all(s.decode().count("_S_") == 1 for s in subjects["train"])
    # Stratified: both classes are in validation.
    labels = {ex["label"] for ex in read_split(builder, "validation")}
    assert labels == {0, 1}


def test_images_are_the_original_jpeg_bytes(built_synthetic):
    root, _, builder = built_synthetic
    for example in read_split(builder, "test")[:25]:
        name = example["file_name"].decode()
        assert (root / "AD_NC" / name).read_bytes() == example["image"]
        scan, index = adni.parse_file_name(Path(name).name)
        assert example["scan_id"].decode() == scan and example["slice_index"] == index
        assert example["label"] == (1 if "/AD/" in name else 0)


def test_manifest_matches_the_records(built_synthetic):
    _, _, builder = built_synthetic
    manifest = builder.info.metadata["manifest"]
    for split in ("train", "validation", "test"):
        records = read_split(builder, split)
        scans = {ex["scan_id"].decode() for ex in records}
        assert scans == set(manifest[split])
        assert sum(e["images"] for e in manifest[split].values()) == len(records)


def test_adni_layout_without_ad_nc_level(adni_like, tmp_path):
    root, spec = adni_like
    builder = build(root, tmp_path, validation_fraction=0.25)
    n = {s: builder.info.splits[s].num_examples for s in ("train", "validation", "test")}
    assert n["train"] + n["validation"] == spec.images["train"] == folder_count(root, "train")
    assert n["test"] == spec.images["test"] == folder_count(root, "test")
    meta = builder.info.metadata
    assert meta["subject_source"] == "meta_data_with_label.json"
    assert meta["test_subjects_also_in_train"] == 1
    # Every scan of a multi-scan subject lands in the same train-folder split.
    split_of_scan = {
        scan: split for split in ("train", "validation") for scan in meta["manifest"][split]
    }
    for subject, scans in spec.scans_of_subject.items():
        in_train_folder = [s for s in scans if spec.folder_of_scan[s] == "train"]
        assert len({split_of_scan[s] for s in in_train_folder}) <= 1, subject
        for split in ("train", "validation", "test"):
            for s in scans:
                if s in meta["manifest"][split]:
                    assert meta["manifest"][split][s]["subject"] == subject
    val_subjects = {e["subject"] for e in meta["manifest"]["validation"].values()}
    assert len(val_subjects) == 2  # round(0.25 * 4) per class, 4 AD and 4 NC + shared in train


def test_validation_split_is_deterministic_and_seeded(adni_like):
    root, _ = adni_like
    parsed = adni.parse(root)
    train = parsed.records_in("train")
    a = splits.validation_subjects(train, parsed.subject_of_scan, 0.25, seed=0)
    b = splits.validation_subjects(list(reversed(train)), parsed.subject_of_scan, 0.25, seed=0)
    seeds = {frozenset(splits.validation_subjects(train, parsed.subject_of_scan, 0.25, s))
             for s in range(6)}  # fmt: skip
    assert a == b
    assert len(seeds) > 1


def test_subjects_csv_and_scan_id_fallback(adni_like, tmp_path, caplog):
    root, spec = adni_like
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "meta_data_with_label.json").unlink()
    parsed = adni.parse(copy)
    assert parsed.subject_source == "scan_id"
    assert all(k == v for k, v in parsed.subject_of_scan.items())
    assert "straddle" in caplog.text
    rows = ["scan_id,subject_id"] + [
        f"{scan},{subject}" for subject, scans in spec.scans_of_subject.items() for scan in scans
    ]
    (copy / "subjects.csv").write_text("\n".join(rows) + "\n")
    parsed = adni.parse(copy)
    assert parsed.subject_source == "subjects.csv"
    assert parsed.subject_of_scan[spec.scans_of_subject["011_S_0003"][1]] == "011_S_0003"


def test_metadata_naming_no_scan_falls_back_to_scan_ids(adni_like, tmp_path):
    root, _ = adni_like
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "meta_data_with_label.json").write_text('{"I1": {"path": "ADNI/011_S_0002/x"}}')
    parsed = adni.parse(copy)
    assert parsed.subject_source == "scan_id" and parsed.subject_coverage == 0.0
    meta = build(copy, tmp_path / "tfds").info.metadata
    assert meta["subject_source"] == "scan_id" and meta["test_subjects_also_in_train"] is None


def _minimal(root):
    scan = 100
    for split in ("train", "test"):
        for cls in ("AD", "NC"):
            d = root / "AD_NC" / split / cls
            d.mkdir(parents=True)
            _, buf = cv2.imencode(".jpeg", np.zeros((240, 256), np.uint8))
            (d / f"{scan}_1.jpeg").write_bytes(buf.tobytes())
            scan += 1
    return root


def test_layout_errors_say_what_was_expected(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        adni.parse(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="expected AD_NC/train"):
        adni.parse(tmp_path / "empty")

    root = _minimal(tmp_path / "unknown_class")
    (root / "AD_NC" / "train" / "MCI").mkdir()
    with pytest.raises(LayoutError, match=r"unknown \['MCI'\]"):
        adni.parse(root)

    root = _minimal(tmp_path / "bad_name")
    (root / "AD_NC" / "test" / "NC" / "scan-7.jpeg").write_bytes(b"x")
    with pytest.raises(LayoutError, match=r"scan-7\.jpeg"):
        adni.parse(root)

    root = _minimal(tmp_path / "missing_class")
    shutil.rmtree(root / "AD_NC" / "test" / "AD")
    with pytest.raises(LayoutError, match=r"missing \['AD'\]"):
        adni.parse(root)


def test_unusable_images_are_skipped_and_an_all_bad_folder_stops(tmp_path):
    root = _minimal(tmp_path / "bad_images")
    with pytest.raises(LayoutError, match="validation split would be empty"):
        build(root, tmp_path / "tfds0")  # one subject per class: nothing to validate on
    _, buf = cv2.imencode(".jpeg", np.zeros((240, 256), np.uint8))
    for cls, scan in (("AD", 300), ("NC", 301)):
        (root / "AD_NC" / "train" / cls / f"{scan}_1.jpeg").write_bytes(buf.tobytes())
    _, buf = cv2.imencode(".jpeg", np.zeros((100, 100), np.uint8))
    (root / "AD_NC" / "train" / "AD" / "555_3.jpeg").write_bytes(buf.tobytes())
    (root / "AD_NC" / "train" / "NC" / "556_3.jpeg").write_bytes(b"")
    meta = build(root, tmp_path / "tfds").info.metadata
    assert meta["skipped"]["off_size"] == 1 and meta["skipped"]["empty"] == 1
    assert meta["images_per_split"]["train"] + meta["images_per_split"]["validation"] == 4
    for path in (root / "AD_NC" / "test").glob("*/*.jpeg"):
        path.write_bytes(b"")
    with pytest.raises(LayoutError, match="holds no usable image"):
        build(root, tmp_path / "tfds2")


class AdniBuilderHarnessTest(tfds.testing.DatasetBuilderTestCase):
    """TFDS's own builder test harness, on dummy data generated at test time."""

    DATASET_CLASS = Builder
    SKIP_CHECKSUMS = True

    @classmethod
    def setUpClass(cls):
        import tempfile

        cls._dummy = tempfile.mkdtemp()
        spec = synthetic.SyntheticSpec(train_subjects=6, test_subjects=2, max_scans_per_subject=1)
        summary = synthetic.generate(cls._dummy, seed=11, spec=spec)
        cls.EXAMPLE_DIR = cls._dummy
        parsed = adni.parse(cls._dummy)
        train_folder = parsed.records_in("train")
        val = splits.validation_subjects(train_folder, parsed.subject_of_scan, 0.1, 0)
        n_val = sum(parsed.subject_of_scan[r.scan_id] in val for r in train_folder)
        train = sum(c["images"] for c in summary["train"].values())
        test = sum(c["images"] for c in summary["test"].values())
        assert n_val % 20 == 0 and 0 < n_val < train
        cls.SPLITS = {"train": train - n_val, "validation": n_val, "test": test}
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls._dummy, ignore_errors=True)
