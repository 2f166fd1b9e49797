"""The volume audit: `inspect` reports what one volume is, or its problem, without raising;
`build_report` counts a listing's subjects, sessions, labels, voxel sizes, shapes,
orientations, formats, unreadable files, label changes and skips exactly; `format_table` shows
it in lines under 100 characters."""

from pathlib import Path

import nibabel as nib
import numpy as np

from alz_jax.tfds_builders.mri_slices.volumes import audit
from alz_jax.tfds_builders.mri_slices.volumes.listing import VolumeListing, VolumeRecord


def test_inspect(tmp_path):
    data = np.random.default_rng(5).uniform(0, 10, (12, 14, 10)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, 1.0, 1.0, 1.0])), tmp_path / "good.nii.gz")
    found = audit.inspect(tmp_path / "good.nii.gz")
    assert found["shape"] == [12, 14, 10] and found["zooms"] == [1.0, 1.0, 1.0]
    assert (found["orientation"], found["format"], found["dtype"]) == ("LAS", "nifti1", "float32")
    low, high = np.percentile(data, [0.5, 99.5])
    assert found["intensity"]["p_low"] == float(f"{low:.4g}")
    assert found["intensity"]["p_high"] == float(f"{high:.4g}")
    assert "problem" not in found
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "big.nii")
    found = audit.inspect(tmp_path / "big.nii")  # reported, not raised; the header still shown
    assert found["problem"] == "voxel size" and found["zooms"] == [2.0, 2.0, 2.0]
    assert "volume_voxels=resample" in found["detail"] and "intensity" not in found
    assert audit.inspect(tmp_path / "big.nii", voxels="resample")["intensity"]["p_high"] > 0
    (tmp_path / "noise.nii").write_bytes(b"not a volume" * 50)
    found = audit.inspect(tmp_path / "noise.nii")
    assert found["problem"] == "unreadable" and "shape" not in found
    assert str(tmp_path / "noise.nii") in found["detail"]


def record(subject: str, session: str, label: int, split: str = "") -> VolumeRecord:
    name = f"sub-{subject}/ses-{session}/t1.nii.gz"
    return VolumeRecord(Path("/caps") / name, name, subject, session, label, split)


def header(zooms=(1.0, 1.0, 1.0), shape=(169, 208, 179), orientation="LAS", fmt="nifti1"):
    intensity = {"p_low": 0.0, "p_high": 300.0, "mean": 50.0, "std": 1.0, "min": 0, "max": 400}
    return {
        "shape": list(shape),
        "zooms": list(zooms),
        "orientation": orientation,
        "format": fmt,
        "dtype": "int16",
        "intensity": intensity,
    }


def hand_made():
    """Five subjects, seven sessions: A changes from NC to AD, D's file is truncated, E has
    2 mm voxels, C is in the test list, two table rows skipped."""
    volumes = [
        record("A", "M00", 0),
        record("A", "M12", 1),
        record("A", "M24", 1),
        record("B", "M00", 0),
        record("C", "M00", 1, "test"),
        record("D", "M00", 1),
        record("E", "M00", 0),
    ]
    inspected = {
        "A_M00": header(),
        "A_M12": header(),
        "A_M24": {**header(shape=(176, 208, 176), orientation="RAS"), "intensity": {
            "p_low": 10.0, "p_high": 500.0, "mean": 70.0, "std": 1.0, "min": 0, "max": 600}},
        "B_M00": {**header(), "intensity": {
            "p_low": 5.0, "p_high": 100.0, "mean": 20.0, "std": 1.0, "min": 0, "max": 200}},
        "C_M00": header(shape=(176, 208, 176), fmt="analyze"),
        "D_M00": {"problem": "truncated", "detail": "/caps/sub-D/ses-M00/t1.nii.gz: truncated"},
        "E_M00": {**header(zooms=(2.0, 2.0, 2.0)), "problem": "voxel size", "detail": "2 mm"},
    }  # fmt: skip
    for key in ("D_M00", "E_M00"):
        inspected[key].pop("intensity", None)
    skipped = {"unknown diagnosis": ["sub-F_ses-M00"], "missing file": ["sub-G_ses-M00"]}
    listing = VolumeListing(
        root=Path("/caps"),
        kind="caps",
        class_names=("NC", "AD"),
        volumes=volumes,
        label_table="/caps/labels.tsv",
        class_mapping={"CN": "NC", "AD": "AD"},
        skipped=skipped,
        folder_splits=("test",),
    )
    return listing, inspected


def test_build_report_counts():
    report = audit.build_report(*hand_made())
    assert report["layout"] == "caps" and report["class_names"] == ["NC", "AD"]
    assert report["label_table"] == "/caps/labels.tsv"
    assert report["class_mapping"] == {"CN": "NC", "AD": "AD"}
    assert report["counts"] == {
        "volumes": 7,
        "subjects": 5,
        "per_class": {"NC": {"sessions": 3, "subjects": 3}, "AD": {"sessions": 4, "subjects": 3}},
        "per_split": {"test": {"NC": {"sessions": 0, "subjects": 0},
                               "AD": {"sessions": 1, "subjects": 1}}},
    }  # fmt: skip
    assert report["subjects_with_several_sessions"] == 1
    assert report["sessions_per_subject"] == {"1": 4, "3": 1}
    assert report["voxel_sizes"] == {"1x1x1": 5, "2x2x2": 1}
    assert report["shapes"] == {"169x208x179": 4, "176x208x176": 2}
    assert report["orientations"] == {"LAS": 5, "RAS": 1}
    assert report["formats"] == {"nifti1": 5, "analyze": 1}
    assert report["unreadable"] == {
        "count": 2,
        "files": [
            {"file": "sub-D/ses-M00/t1.nii.gz", "problem": "truncated",
             "detail": "/caps/sub-D/ses-M00/t1.nii.gz: truncated"},
            {"file": "sub-E/ses-M00/t1.nii.gz", "problem": "voxel size", "detail": "2 mm"},
        ],
    }  # fmt: skip
    assert report["label_changes"] == {
        "count": 1,
        "subjects": [{"subject": "A", "labels": [
            {"session": "M00", "label": "NC"}, {"session": "M12", "label": "AD"},
            {"session": "M24", "label": "AD"}]}],
    }  # fmt: skip
    assert report["skipped"] == {
        "counts": {"unknown diagnosis": 1, "missing file": 1},
        "items": {"unknown diagnosis": ["sub-F_ses-M00"], "missing file": ["sub-G_ses-M00"]},
    }
    # Over the five volumes read in full: p_low 0, 0, 10, 5, 0.
    assert report["intensity"] == {
        "p_low": {"min": 0.0, "median": 0.0, "max": 10.0},
        "p_high": {"min": 100.0, "median": 300.0, "max": 500.0},
        "mean": {"min": 20.0, "median": 50.0, "max": 70.0},
    }


def test_report_names_volumes_not_inspected_and_table():
    listing, inspected = hand_made()
    del inspected["B_M00"]
    listing.skipped["blank CDR"] = [f"OAS1_{i:04d}_MR1" for i in range(40)]
    report = audit.build_report(listing, inspected)
    assert report["unreadable"]["count"] == 3
    assert {"file": "sub-B/ses-M00/t1.nii.gz", "problem": "not inspected", "detail": ""} in (
        report["unreadable"]["files"]
    )
    table = audit.format_table(report)
    lines = table.splitlines()
    assert all(len(line) < 100 for line in lines), max(lines, key=len)
    assert "NC                               3         3" in table
    assert "label changes           1: A (NC AD AD)" in table
    assert "voxel sizes (mm)        1x1x1: 4, 2x2x2: 1" in table
    assert "skipped: blank CDR      40: OAS1_0000_MR1," in table
    assert "... and 30 more" in table
    assert "skipped: unknown diagnosis 1: sub-F_ses-M00" in lines
    assert "  truncated: /caps/sub-D/ses-M00/t1.nii.gz: truncated" in lines
