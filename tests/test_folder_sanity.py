"""Folder sanity before anything is built: one split of a set given as the whole set is refused
naming the parent, an ADNI set in a wrapping folder is found, `<scanID>_<slice>` names group a
class-folder set by scan, a scan in two class or split folders is refused in every layout, and a
scan mapped to two subjects (subjects.csv, or a duplicated key in the metadata JSON) is refused."""

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from alz_jax.data import dataset
from alz_jax.data.data_spec import DataSpec
from alz_jax.host.errors import UserError
from alz_jax.tfds_builders.mri_slices.layouts import registry
from alz_jax.tfds_builders.mri_slices.layouts.base import LayoutError, SplitFolderError
from alz_jax.tfds_builders.mri_slices.layouts.classes import STAGES

PIXELS = np.full((8, 8), 90, np.uint8)


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), PIXELS)


def _adni(root: Path) -> dict[str, str]:
    """root/AD_NC/{train,test}/{AD,NC}/<scan>_<slice>.jpeg, 2 scans of 2 slices per folder;
    returns scan -> subject (two scans per subject)."""
    subjects, scan = {}, 1000
    for split in ("train", "test"):
        for cls in ("AD", "NC"):
            for _ in range(2):
                scan += 1
                subjects[str(scan)] = f"011_S_{scan // 2:04d}"
                for index in (60, 61):
                    _image(root / "AD_NC" / split / cls / f"{scan}_{index}.jpeg")
    return subjects


def _metadata(subjects: dict[str, str]) -> str:
    return json.dumps({s: {"label": "AD", "source": f"/ADNI/{subj}/x.nii"}
                       for s, subj in subjects.items()})  # fmt: skip


# ---- 1a. One split of a set, given as the whole set. ----


@pytest.mark.parametrize("kind", ["auto", "folders", "adni"])
def test_adni_train_folder_is_refused_in_one_line_naming_its_parent(tmp_path, kind):
    _adni(tmp_path)
    train = tmp_path / "AD_NC" / "train"
    expected = (
        f"{train} looks like the train split of a data set (class folders AD, NC), not the whole "
        f"set: set --config.data.manual_dir={tmp_path / 'AD_NC'} (the folder holding train/ and "
        "test/)"
    )
    for call in (registry.parse, registry.describe):
        with pytest.raises(SplitFolderError) as error:
            call(train, kind)
        assert str(error.value).startswith(expected) and "\n" not in str(error.value)
    with pytest.raises(SplitFolderError, match=r"looks like the test split"):
        registry.parse(tmp_path / "AD_NC" / "test", kind)


def test_a_four_class_train_folder_is_refused_and_a_root_with_only_train_is_read(tmp_path):
    for stage in STAGES:
        for n in range(2):
            _image(tmp_path / "Alzheimer_s Dataset" / "train" / stage / f"{stage[:4]}{n}.jpg")
    train = tmp_path / "Alzheimer_s Dataset" / "train"
    with pytest.raises(SplitFolderError, match=r"the folder holding train/\)"):
        registry.parse(train)
    with pytest.raises(SplitFolderError, match=r"class folders MildDemented, ModerateDemented"):
        registry.parse(train, "folders")
    # The root holding train/ alone (inside a wrapping folder): train/ is its split, not a wrapper.
    parsed = registry.parse(tmp_path)
    assert parsed.kind == "folders" and parsed.folder_splits == ("train",)
    assert parsed.class_names == STAGES and len(parsed.records_in("train")) == 8


def test_check_source_gives_the_split_folder_error_alone_and_others_with_instructions(tmp_path):
    _adni(tmp_path)
    train = tmp_path / "AD_NC" / "train"
    with pytest.raises(UserError) as error:
        dataset._check_source(train, None, DataSpec(manual_dir=str(train)), None)
    assert len(str(error.value).splitlines()) == 1
    assert f"--config.data.manual_dir={tmp_path / 'AD_NC'}" in str(error.value)
    (tmp_path / "other").mkdir()
    with pytest.raises(UserError, match="has no layout alz_jax reads") as error:
        dataset._check_source(tmp_path / "other", None, DataSpec(), None)
    # Other errors: their line and a one-line hint (not ADNI's: the folder is not ADNI's).
    assert str(error.value).splitlines()[1] == registry.LAYOUTS_HINT
    assert len(str(error.value).splitlines()) == 2


# ---- 1c. An ADNI set inside a wrapping folder. ----


def test_an_adni_set_in_a_wrapping_folder_is_found_with_its_metadata(tmp_path):
    subjects = _adni(tmp_path / "download" / "ADNI")
    (tmp_path / "download" / "ADNI" / "meta_data_with_label.json").write_text(_metadata(subjects))
    assert registry.detect(tmp_path / "download") == "adni"
    parsed = registry.parse(tmp_path / "download")
    assert parsed.kind == "adni" and parsed.root == tmp_path / "download" / "ADNI" / "AD_NC"
    assert parsed.subject_source == "meta_data_with_label.json"
    assert parsed.subject_of_scan == subjects and len(parsed.records) == 16


# ---- 1b. <scanID>_<slice> names in the class-folder layout. ----


def test_class_folders_with_adni_names_are_grouped_by_scan(tmp_path, caplog):
    for split, scans in (("train", range(3)), ("test", range(3, 5))):
        for cls in ("CN", "MCI", "AD"):
            for scan in scans:
                for index in (70, 71, 72):
                    _image(tmp_path / split / cls / f"{cls}{scan}x_{index}.png")
    with caplog.at_level(logging.WARNING):
        parsed = registry.parse(tmp_path)
    assert parsed.kind == "folders" and len(parsed.records) == 45
    assert len({r.scan_id for r in parsed.records}) == 15 and parsed.subject_source == "scan_id"
    assert {r.slice_index for r in parsed.records} == {70, 71, 72}
    assert "45 images are read as 15 scans" in caplog.text
    # A scan in both split folders is refused, naming the folders.
    _image(tmp_path / "test" / "AD" / "AD0x_73.png")
    with pytest.raises(LayoutError, match=r"AD0x in test/AD and train/AD\. .*Scan IDs come"):
        registry.parse(tmp_path, "folders")
    # Free-form names stay one scan per image (cn_0.jpg: one "scan" per class is no scan ID).
    free = tmp_path / "free"
    for cls in ("CN", "MCI"):
        for n in range(3):
            _image(free / cls / f"{cls.lower()}_{n}.jpg")
            _image(free / cls / f"{cls} ({n}).jpg")
    parsed = registry.parse(free)
    assert len({r.scan_id for r in parsed.records}) == len(parsed.records) == 12


# ---- 2c. A scan in two class folders, in the OASIS layout. ----


def test_an_oasis_scan_in_two_class_folders_is_refused(tmp_path):
    data = tmp_path / "Data"
    for number, cls in ((2, "Non Demented"), (3, "Mild Dementia")):
        _image(data / cls / f"OAS1_{number:04d}_MR1_mpr-1_100.jpg")
    _image(data / "Non Demented" / "OAS1_0001_MR1_mpr-1_100.jpg")
    assert len(registry.parse(tmp_path).records) == 3
    _image(data / "Mild Dementia" / "OAS1_0001_MR1_mpr-1_101.jpg")
    with pytest.raises(LayoutError) as error:
        registry.parse(tmp_path)
    assert str(error.value).startswith(
        f"{data}: 1 scan IDs appear in more than one split or class folder (a scan must live in "
        "exactly one): OAS1_0001_MR1_mpr-1 in Mild Dementia and Non Demented."
    )


# ---- 3. A scan mapped to two subjects. ----


def test_subjects_csv_mapping_a_scan_to_two_subjects_is_refused(tmp_path):
    _adni(tmp_path)
    csv = tmp_path / "subjects.csv"
    csv.write_text("scan_id,subject_id\n1001,S1\n1002,S1\n1001,S1\n")
    assert registry.parse(tmp_path).subject_of_scan["1001"] == "S1"  # the same pair twice
    csv.write_text("scan_id,subject_id\n1001,S1\n1002,S1\n1003,S3\n1001,S2\n")
    expected = r"subjects\.csv: 1 scans are mapped to two subjects \(1001: S1 \(line 2\) and S2"
    with pytest.raises(LayoutError, match=expected + r" \(line 5\)\)"):
        registry.parse(tmp_path)


def test_metadata_json_with_a_duplicated_scan_key_is_refused_unless_identical(tmp_path, caplog):
    subjects = _adni(tmp_path)
    meta = tmp_path / "meta_data_with_label.json"
    body = _metadata(subjects)[1:-1]

    def entry(subject: str, label: str = "AD") -> str:
        return json.dumps({"label": label, "source": f"/ADNI/{subject}/x.nii"})

    meta.write_text(f'{{{body}, "1001": {entry("099_S_0999")}}}')
    conflict = r"1 scan IDs are listed more than once with different entries \(1001 \(subjects"
    with pytest.raises(LayoutError, match=conflict + r" 011_S_0500 and 099_S_0999\)"):
        registry.parse(tmp_path)
    meta.write_text(f'{{{body}, "1001": {entry("011_S_0500", "NC")}}}')
    with pytest.raises(LayoutError, match=r'1001 \(label: "AD" vs "NC"\)'):
        registry.parse(tmp_path)
    meta.write_text(f'{{{body}, "1001": {entry("011_S_0500")}}}')
    with caplog.at_level(logging.WARNING):
        parsed = registry.parse(tmp_path)
    assert parsed.subject_of_scan == subjects
    assert "lists 1 scan IDs more than once, with identical entries (e.g. 1001)" in caplog.text
