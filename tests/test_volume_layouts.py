"""The volume layouts (caps, oasis1, nifti): volumes listed with subject, session and label from
their tables, every left-out row or file counted by reason, one-line errors naming the file and
the setting, and detection beside the 2D layouts. Listing reads no volume data, so most folders
here hold empty files with the right names; detection runs on the synthetic cohorts."""

import dataclasses

import pytest

from alz_jax.tfds_builders.mri_slices import (
    api,  # noqa: F401  (registers the volume layouts)
    synthetic,
    synthetic_stages,
)
from alz_jax.tfds_builders.mri_slices.layouts import registry
from alz_jax.tfds_builders.mri_slices.layouts.base import LayoutError
from alz_jax.tfds_builders.mri_slices.volumes import caps, nifti, oasis1
from alz_jax.tfds_builders.mri_slices.volumes import synthetic as volume_synthetic
from alz_jax.tfds_builders.mri_slices.volumes.settings import VolumeSettings

STAGES = ("NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented")
OASIS_HEADER = "ID,M/F,Hand,Age,Educ,SES,MMSE,CDR,eTIV,nWBV,ASF,Delay"
T88 = "PROCESSED/MPRAGE/T88_111"
NO_ROW = "no row in oasis_cross-sectional.csv"


def _touch(path, text=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- oasis1


def _oasis_session(root, sid, images=("masked_gfc", "gfc")):
    for kind in images:
        for suffix in (".hdr", ".img"):
            _touch(root / sid / T88 / f"{sid}_mpr_n4_anon_111_t88_{kind}{suffix}")


def _oasis_release(tmp_path, rows=None):
    """disc1/disc2 with sessions 0001 MR1+MR2, 0002..0005 MR1 and 0007 MR1 (no row); CSV rows
    CDR 0, 0.5, 1, 2, blank, the repeat's blank CDR, and 0006 (no volume)."""
    root = tmp_path / "oasis"
    for sid in ("OAS1_0001_MR1", "OAS1_0001_MR2", "OAS1_0002_MR1", "OAS1_0003_MR1"):
        _oasis_session(root / "disc1", sid)
    for sid in ("OAS1_0004_MR1", "OAS1_0005_MR1", "OAS1_0007_MR1"):
        _oasis_session(root / "disc2", sid)
    rows = rows or [
        "OAS1_0001_MR1,F,R,74,2,3,29,0,1344,0.743,1.306,",
        "OAS1_0002_MR1,F,R,55,4,1,29,0.5,1147,0.810,1.531,",
        "OAS1_0003_MR1,F,R,73,4,3,27,1,1454,0.708,1.207,",
        "OAS1_0004_MR1,M,R,28,,,,2,1588,0.803,1.105,",
        "OAS1_0005_MR1,M,R,18,,,,,1737,0.848,1.010,",
        "OAS1_0006_MR1,M,R,80,,,,0,1737,0.848,1.010,",
        "OAS1_0001_MR2,F,R,74,,,,,1333,0.745,1.317,12",
    ]
    _touch(root / "oasis_cross-sectional.csv", "\n".join([OASIS_HEADER, *rows]) + "\n")
    return root


def _by_scan(listing):
    return {r.scan_id: listing.class_names[r.label] for r in listing.volumes}


def test_oasis_stages_map_cdr_and_count_blank_rows_and_unmatched_files(tmp_path):
    listing = oasis1.list_volumes(_oasis_release(tmp_path), VolumeSettings())
    assert listing.kind == "oasis1" and listing.class_names == STAGES
    assert _by_scan(listing) == {
        "OAS1_0001_MR1": "NonDemented",
        "OAS1_0001_MR2": "NonDemented",
        "OAS1_0002_MR1": "VeryMildDemented",
        "OAS1_0003_MR1": "MildDemented",
        "OAS1_0004_MR1": "ModerateDemented",
    }
    assert listing.skipped == {
        oasis1.SKIP_BLANK: ["OAS1_0005_MR1"],
        NO_ROW: ["OAS1_0007_MR1"],
        "row without a volume file": ["OAS1_0006_MR1"],
    }
    assert listing.class_mapping == {
        "CDR 0": "NonDemented",
        "CDR 0.5": "VeryMildDemented",
        "CDR 1": "MildDemented",
        "CDR 2": "ModerateDemented",
    }
    assert listing.folder_splits == ()
    assert listing.label_table.endswith("oasis_cross-sectional.csv")


def test_an_mr2_repeat_belongs_to_its_subject_and_takes_its_mr1_cdr(tmp_path):
    listing = oasis1.list_volumes(_oasis_release(tmp_path), VolumeSettings())
    repeat = next(r for r in listing.volumes if r.scan_id == "OAS1_0001_MR2")
    first = next(r for r in listing.volumes if r.scan_id == "OAS1_0001_MR1")
    assert (repeat.subject, repeat.session) == ("OAS1_0001", "MR2")
    assert first.subject == repeat.subject and first.session == "MR1"
    assert repeat.info["CDR from"] == "OAS1_0001_MR1" and repeat.info["CDR"] == "0"
    assert repeat.info["Delay"] == "12" and "CDR from" not in first.info
    assert first.info == {
        "age": "74",
        "sex": "F",
        "MMSE": "29",
        "CDR": "0",
        "eTIV": "1344",
        "nWBV": "0.743",
    }


@pytest.mark.parametrize(
    "ad_cdr, labels, skipped",
    [
        (
            (1.0, 2.0),
            {"0001_MR1": "NC", "0001_MR2": "NC", "0003_MR1": "AD", "0004_MR1": "AD"},
            {"CDR 0.5 not mapped (data.oasis_ad_cdr=1,2)": ["OAS1_0002_MR1"]},
        ),
        (
            (0.5, 1.0, 2.0),
            {
                "0001_MR1": "NC",
                "0001_MR2": "NC",
                "0002_MR1": "AD",
                "0003_MR1": "AD",
                "0004_MR1": "AD",
            },
            {},
        ),
        (
            (2.0,),
            {"0001_MR1": "NC", "0001_MR2": "NC", "0004_MR1": "AD"},
            {
                "CDR 0.5 not mapped (data.oasis_ad_cdr=2)": ["OAS1_0002_MR1"],
                "CDR 1 not mapped (data.oasis_ad_cdr=2)": ["OAS1_0003_MR1"],
            },
        ),
    ],
)
def test_oasis_binary_maps_cdr_0_to_nc_and_the_chosen_cdrs_to_ad(tmp_path, ad_cdr, labels, skipped):
    settings = VolumeSettings(oasis_labels="binary", oasis_ad_cdr=ad_cdr)
    listing = oasis1.list_volumes(_oasis_release(tmp_path), settings)
    assert listing.class_names == ("NC", "AD")
    assert _by_scan(listing) == {f"OAS1_{k}": v for k, v in labels.items()}
    assert {k: v for k, v in listing.skipped.items() if k.startswith("CDR")} == skipped
    assert listing.skipped[oasis1.SKIP_BLANK] == ["OAS1_0005_MR1"]


def test_oasis_blank_cdr_kept_as_control(tmp_path):
    settings = VolumeSettings(oasis_blank_cdr="control")
    listing = oasis1.list_volumes(_oasis_release(tmp_path), settings)
    assert _by_scan(listing)["OAS1_0005_MR1"] == "NonDemented"
    assert oasis1.SKIP_BLANK not in listing.skipped
    assert listing.class_mapping["blank CDR"] == "NonDemented"


@pytest.mark.parametrize("image, other", [("masked", "_t88_gfc"), ("unmasked", "_t88_masked_gfc")])
def test_oasis_image_setting_picks_the_masked_or_unmasked_file(tmp_path, image, other):
    root = _oasis_release(tmp_path)
    # A session folder holding only the other image is skipped under a reason naming the setting.
    ending = "masked_gfc" if image == "unmasked" else "gfc"
    _oasis_session(root / "disc2", "OAS1_0008_MR1", images=(ending,))
    listing = oasis1.list_volumes(root, VolumeSettings(oasis_image=image))
    wanted = "_t88_masked_gfc.hdr" if image == "masked" else "_t88_gfc.hdr"
    assert len(listing.volumes) == 5
    assert all(r.path.name.endswith(wanted) for r in listing.volumes)
    assert listing.volumes[0].file_name == (
        f"disc1/OAS1_0001_MR1/{T88}/OAS1_0001_MR1_mpr_n4_anon_111{wanted[:-4]}.hdr"
    )
    (reason,) = [k for k in listing.skipped if k.startswith("session folder without")]
    assert listing.skipped[reason] == ["disc2/OAS1_0008_MR1"]
    assert f"{other}" in reason and "data.oasis_image=" in reason


def test_oasis_sessions_without_disc_folders_cdr3_and_a_lone_hdr(tmp_path):
    root = tmp_path / "flat"
    _oasis_session(root, "OAS1_0001_MR1")
    _oasis_session(root, "OAS1_0002_MR1")
    (root / "OAS1_0002_MR1" / T88 / "OAS1_0002_MR1_mpr_n4_anon_111_t88_masked_gfc.img").unlink()
    _touch(
        root.parent / "oasis_cross-sectional.csv",  # the folder above is looked in too
        f"{OASIS_HEADER}\nOAS1_0001_MR1,F,R,90,,,,3,1,1,1,\nOAS1_0002_MR1,F,R,90,,,,0,1,1,1,\n",
    )
    listing = oasis1.list_volumes(root, VolumeSettings())
    assert listing.volumes == []
    assert listing.skipped == {
        "CDR 3 not among the four stages (data.oasis_labels=binary can count it as AD with "
        "data.oasis_ad_cdr)": ["OAS1_0001_MR1"],
        oasis1.SKIP_NO_IMG: [
            f"OAS1_0002_MR1/{T88}/OAS1_0002_MR1_mpr_n4_anon_111_t88_masked_gfc.hdr"
        ],
    }
    binary = oasis1.list_volumes(root, VolumeSettings(oasis_labels="binary", oasis_ad_cdr=(3.0,)))
    assert _by_scan(binary) == {"OAS1_0001_MR1": "AD"}


def test_oasis_csv_errors_name_the_file_and_what_is_missing(tmp_path):
    root = _oasis_release(tmp_path)
    (root / "oasis_cross-sectional.csv").write_text("ID,M/F,Age\nOAS1_0001_MR1,F,74\n")
    with pytest.raises(
        LayoutError,
        match=r"oasis_cross-sectional\.csv: the label table lacks "
        r"the columns CDR \(expected ID,CDR; found ID,M/F,Age\)",
    ):
        oasis1.list_volumes(root, VolumeSettings())
    (root / "oasis_cross-sectional.csv").unlink()
    with pytest.raises(LayoutError, match=r"no oasis_cross-sectional\.csv .*labels_tsv=FILE"):
        oasis1.list_volumes(root, VolumeSettings())
    _touch(root / "clinical.csv", f"{OASIS_HEADER}\nOAS1_0001_MR1,F,R,74,,,,1.5,1,1,1,\n")
    with pytest.raises(LayoutError, match=r"clinical\.csv: 1 rows .* \(OAS1_0001_MR1 CDR='1.5'\)"):
        oasis1.list_volumes(root, VolumeSettings(labels_table="clinical.csv"))


# ---------------------------------------------------------------- caps


def _caps_volume(root, sub, ses, name=None):
    name = name or f"{sub}_{ses}{caps.CROPPED}"
    return _touch(root / "subjects" / sub / ses / "t1_linear" / name)


def _caps(tmp_path, rows, header="participant_id\tsession_id\tdiagnosis\tage\tsex"):
    root = tmp_path / "CAPS"
    for sub, ses in [
        ("sub-01", "ses-M000"),
        ("sub-01", "ses-M012"),
        ("sub-02", "ses-M000"),
        ("sub-03", "ses-M000"),
        ("sub-04", "ses-M000"),
    ]:
        _caps_volume(root, sub, ses)
    _touch(root / "labels.tsv", "\n".join([header, *rows]) + "\n")
    return root


CAPS_ROWS = [
    "sub-01\tses-M000\tCN\t70\tF",
    "sub-01\tses-M012\tcontrol\t71\tF",
    "sub-02\tses-M000\tAlzheimer's Disease\t75\tM",
    "sub-03\tses-M000\tEMCI\t72\tM",
    "sub-05\tses-M000\tHC\t60\tF",
]


def test_caps_aliases_default_classes_and_every_skip_counted(tmp_path):
    root = _caps(tmp_path, CAPS_ROWS)
    # ClinicaDL's tensors and Clinica's other t1_linear files are counted, not complained of.
    _touch(root / "subjects/sub-01/ses-M000/deeplearning_prepare_data/x_slice-0.pt")
    _caps_volume(
        root,
        "sub-02",
        "ses-M000",
        "sub-02_ses-M000_T1w_space-MNI152NLin2009cSym_res-1x1x1_T1w.nii.gz",
    )
    listing = caps.list_volumes(root, VolumeSettings())
    assert listing.class_names == ("NC", "AD")
    assert _by_scan(listing) == {
        "sub-01_ses-M000": "NC",
        "sub-01_ses-M012": "NC",
        "sub-02_ses-M000": "AD",
    }
    assert listing.volumes[2].path.name.endswith("desc-Crop_res-1x1x1_T1w.nii.gz")
    assert listing.volumes[0].info == {"age": "70", "sex": "F"}
    assert listing.class_mapping == {
        "Alzheimer's Disease": "AD",
        "CN": "NC",
        "EMCI": "MCI",
        "HC": "NC",
        "control": "NC",
    }
    assert listing.skipped == {
        caps.SKIP_NOT_VOLUME: ["subjects/sub-01/ses-M000/deeplearning_prepare_data/x_slice-0.pt"],
        caps.SKIP_OTHER_VOLUME: [
            "subjects/sub-02/ses-M000/t1_linear/sub-02_ses-M000_T1w_space-"
            "MNI152NLin2009cSym_res-1x1x1_T1w.nii.gz"
        ],
        "diagnosis MCI not among the classes NC,AD (--config.data.volume_classes)": [
            "sub-03_ses-M000"
        ],
        "no row in labels.tsv": ["sub-04_ses-M000"],
        "row without a volume file": ["sub-05 ses-M000"],
    }
    assert listing.folder_splits == () and {r.folder_split for r in listing.volumes} == {""}


def test_caps_classes_setting_keeps_mci_in_its_order(tmp_path):
    listing = caps.list_volumes(
        _caps(tmp_path, CAPS_ROWS), VolumeSettings(classes=("CN", "MCI", "AD"))
    )
    assert listing.class_names == ("NC", "MCI", "AD")
    assert _by_scan(listing)["sub-03_ses-M000"] == "MCI"
    assert [r.label for r in listing.volumes] == [0, 0, 2, 1]


def test_caps_unknown_diagnosis_is_an_error_naming_the_spelling_and_the_aliases(tmp_path):
    root = _caps(tmp_path, [*CAPS_ROWS, "sub-04\tses-M000\tSMC\t70\tF"])
    with pytest.raises(LayoutError) as raised:
        caps.list_volumes(root, VolumeSettings())
    message = str(raised.value)
    assert "labels.tsv: 1 diagnoses are not known: 'SMC'" in message and "\n" not in message
    assert "NC: CN, HC, control" in message and "EMCI" in message and "volume_classes" in message
    # Kept by its own name when the classes setting names it.
    listing = caps.list_volumes(root, VolumeSettings(classes=("NC", "SMC")))
    assert _by_scan(listing)["sub-04_ses-M000"] == "SMC"


def test_caps_table_found_beside_caps_or_given_and_several_are_an_error(tmp_path):
    root = _caps(tmp_path, CAPS_ROWS)
    (root / "labels.tsv").rename(tmp_path / "participants.tsv")
    assert len(caps.list_volumes(tmp_path, VolumeSettings()).volumes) == 3  # CAPS/ and the TSV
    _touch(tmp_path / "other.tsv", "participant_id\tsession_id\tdiagnosis\n")
    with pytest.raises(
        LayoutError,
        match=r"2 tables could be the CAPS label TSV in .*other\.tsv, "
        r".*participants\.tsv; name the one to use with --config\.data\.labels_tsv",
    ):
        caps.list_volumes(tmp_path, VolumeSettings())
    _touch(
        tmp_path / "tables" / "mine.tsv",
        "participant_id\tsession_id\tdiagnosis\nsub-02\tses-M000\tAD\n",
    )
    listing = caps.list_volumes(tmp_path, VolumeSettings(labels_table="tables/mine.tsv"))
    assert _by_scan(listing) == {"sub-02_ses-M000": "AD"}
    assert listing.label_table == str(tmp_path / "tables" / "mine.tsv")
    with pytest.raises(LayoutError, match=r"labels_tsv=nope\.tsv: no such file"):
        caps.list_volumes(tmp_path, VolumeSettings(labels_table="nope.tsv"))


def test_caps_split_column_gives_train_and_test_as_split_folders(tmp_path):
    header = "participant_id\tsession_id\tdiagnosis\tsplit"
    rows = [
        "sub-01\tses-M000\tCN\ttrain",
        "sub-01\tses-M012\tCN\ttrain",
        "sub-02\tses-M000\tAD\ttest",
        "sub-03\tses-M000\tAD\tTrain",
    ]
    listing = caps.list_volumes(_caps(tmp_path, rows, header), VolumeSettings())
    assert listing.folder_splits == ("train", "test")
    assert {r.scan_id: r.folder_split for r in listing.volumes} == {
        "sub-01_ses-M000": "train",
        "sub-01_ses-M012": "train",
        "sub-02_ses-M000": "test",
        "sub-03_ses-M000": "train",
    }
    (tmp_path / "CAPS" / "labels.tsv").write_text(
        "\n".join([header, *rows[:1], "sub-01\tses-M012\tCN\ttest", *rows[2:]]) + "\n"
    )
    with pytest.raises(
        LayoutError,
        match=r"puts sessions of 1 subjects in both train and test "
        r"\(sub-01\)",
    ):
        caps.list_volumes(tmp_path / "CAPS", VolumeSettings())


def test_caps_missing_columns_and_duplicate_rows_are_errors(tmp_path):
    root = _caps(tmp_path, ["sub-01\tses-M000\tCN"], header="participant_id\tsession\tdiagnosis")
    with pytest.raises(
        LayoutError,
        match=r"labels\.tsv: the label table lacks the columns "
        r"session_id \(expected participant_id,session_id,diagnosis; found "
        r"participant_id,session,diagnosis\)",
    ):
        caps.list_volumes(root, VolumeSettings())
    _caps(tmp_path, ["sub-01\tses-M000\tCN\t1\tF", "sub-01\tses-M000\tAD\t1\tF"])
    with pytest.raises(
        LayoutError,
        match=r"1 sessions are on more than one row "
        r"\(sub-01 ses-M000\)",
    ):
        caps.list_volumes(root, VolumeSettings())


# ---------------------------------------------------------------- nifti


def _nifti(tmp_path, table_rows, table="labels.csv"):
    root = tmp_path / "cohort"
    for name in ("a.nii", "site/b.nii.gz", "c.hdr", "c.img", "lone.img", "extra.nii"):
        _touch(root / name)
    if table_rows is not None:
        _touch(root / table, "\n".join(["path,subject,session,label", *table_rows]) + "\n")
    return root


NIFTI_ROWS = [
    "a.nii,s1,ses1,CN",
    "site/b.nii.gz,s2,ses1,AD",
    "c.img,s3,ses1,MCI",
    "gone.nii,s4,ses1,AD",
]


def test_nifti_mixed_formats_are_one_volume_each_and_leftovers_counted(tmp_path):
    listing = nifti.list_volumes(_nifti(tmp_path, NIFTI_ROWS), VolumeSettings())
    assert listing.class_names == ("NC", "MCI", "AD")
    assert [
        (r.file_name, r.subject, r.session, listing.class_names[r.label]) for r in listing.volumes
    ] == [
        ("a.nii", "s1", "ses1", "NC"),
        ("site/b.nii.gz", "s2", "ses1", "AD"),
        ("c.hdr", "s3", "ses1", "MCI"),
    ]
    assert listing.skipped == {
        nifti.SKIP_LONE_IMG: ["lone.img"],
        nifti.SKIP_MISSING: ["gone.nii"],
        "volume without a row in labels.csv": ["extra.nii"],
    }
    assert listing.class_mapping == {"AD": "AD", "CN": "NC", "MCI": "MCI"}


def test_nifti_rows_naming_unusable_files_are_counted_once(tmp_path):
    root = _nifti(
        tmp_path,
        [*NIFTI_ROWS, "lone.img,s5,ses1,CN", "notes.txt,s6,ses1,CN", "half.hdr,s7,ses1,AD"],
    )
    _touch(root / "notes.txt")
    _touch(root / "half.hdr")
    listing = nifti.list_volumes(root, VolumeSettings())
    assert len(listing.volumes) == 3
    assert listing.skipped[nifti.SKIP_LONE_IMG] == ["lone.img"]
    assert listing.skipped[nifti.SKIP_NO_IMG] == ["half.hdr"]
    assert listing.skipped[nifti.SKIP_NOT_VOLUME] == ["notes.txt"]


def test_nifti_classes_setting_and_stage_labels(tmp_path):
    listing = nifti.list_volumes(_nifti(tmp_path, NIFTI_ROWS), VolumeSettings(classes=("NC", "AD")))
    assert _by_scan(listing) == {"s1_ses1": "NC", "s2_ses1": "AD"}
    assert listing.skipped[
        "label MCI not among the classes NC,AD (--config.data.volume_classes)"
    ] == ["s3_ses1"]
    rows = ["a.nii,s1,ses1,Mild Dementia", "site/b.nii.gz,s2,ses1,Non Demented"]
    staged = nifti.list_volumes(_nifti(tmp_path / "x", rows), VolumeSettings())
    assert staged.class_names == ("NonDemented", "MildDemented")


def test_nifti_duplicate_rows_and_a_missing_table_are_errors(tmp_path):
    root = _nifti(tmp_path, [*NIFTI_ROWS, "extra.nii,s1,ses1,CN"])
    with pytest.raises(
        LayoutError,
        match=r"labels\.csv: 1 sessions are on more than one row "
        r"\(s1 ses1\)",
    ):
        nifti.list_volumes(root, VolumeSettings())
    bare = _nifti(tmp_path / "bare", None)
    _touch(bare / "notes.csv", "file,group\n")
    assert nifti.detect(bare) == 0.5 and registry.detect(bare) == "nifti"
    with pytest.raises(LayoutError) as raised:
        nifti.list_volumes(bare, VolumeSettings())
    assert str(raised.value) == (
        f"{bare}: no label table with the columns path,subject,session,label (a .csv or .tsv in "
        "the folder); found notes.csv (file,group). Add one, or give it with "
        "--config.data.labels_tsv=FILE."
    )


# ---------------------------------------------------------------- detection

TINY = volume_synthetic.VolumeCohortSpec(subjects=6, shape=(12, 14, 12))


@pytest.mark.parametrize("layout", volume_synthetic.LAYOUTS)
def test_each_synthetic_cohort_is_detected_as_its_layout(tmp_path, layout):
    volume_synthetic.generate(tmp_path / layout, seed=0, layout=layout, spec=TINY)
    assert registry.detect(tmp_path / layout) == layout
    plugin = registry.get(layout)
    assert plugin.is_volume
    with pytest.raises(LayoutError, match="volumes are sliced first"):
        plugin.parse(tmp_path / layout, ())


def test_the_2d_synthetic_sets_are_detected_as_before(tmp_path):
    stages = dataclasses.replace(synthetic_stages.StagesSpec(), subjects=4, slices_per_subject=2)
    for layout in synthetic_stages.LAYOUTS:
        synthetic_stages.generate(tmp_path / layout, seed=0, spec=stages, layout=layout)
        assert registry.detect(tmp_path / layout) == layout
    spec = synthetic.SyntheticSpec(train_subjects=2, test_subjects=2, max_scans_per_subject=1)
    synthetic.generate(tmp_path / "adni", seed=0, spec=spec)
    assert registry.detect(tmp_path / "adni") == "adni"
    for path in [tmp_path / k for k in (*synthetic_stages.LAYOUTS, "adni")]:
        assert [p.detect(path) for p in registry.plugins() if p.is_volume] == [0.0, 0.0, 0.0]
