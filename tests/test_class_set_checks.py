"""Class-set checks: a class without images in a split folder or built split, and class names a
letter from a known stage or from each other, stop a run before training (the audit reports
both), unless data.allow_missing_classes / data.allow_similar_class_names accept them."""

import logging

import cv2
import numpy as np
import pytest

from alz_jax.configs import convnext_t
from alz_jax.data import data_spec, dataset
from alz_jax.data.data_spec import DataSpec
from alz_jax.host.errors import UserError
from alz_jax.tfds_builders.mri_slices import audit
from alz_jax.tfds_builders.mri_slices.layouts import registry
from alz_jax.tfds_builders.mri_slices.layouts.classes import (
    STAGES,
    edit_distance,
    similar_class_names,
)


def _write_images(folder, n: int, seed: int) -> None:
    """n small distinct grayscale JPEGs in folder (created, even for n = 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 255, (16, 16), dtype=np.uint8)
        cv2.imwrite(str(folder / f"img{seed}-{i}.jpg"), pixels)  # free-form: each its own scan


def _four_classes(root, train=STAGES, test=STAGES, empty=()):
    """A four-class folders set: 3 images per class in train/, 2 in test/; the (split, class)
    pairs in `empty` are empty folders."""
    seed = 0
    for split, names, n in (("train", train, 3), ("test", test, 2)):
        for cls in names:
            seed += 1
            _write_images(root / split / cls, 0 if (split, cls) in empty else n, seed)
    return root


def _prepare(root, tmp_path, **data):
    return dataset.prepare(DataSpec(data_dir=str(tmp_path / "tfds"), manual_dir=str(root), **data))


def test_an_empty_train_class_folder_stops_the_run_unless_allowed(tmp_path, caplog):
    root = _four_classes(tmp_path / "data", empty={("train", "MildDemented")})
    with pytest.raises(UserError) as refused:
        _prepare(root, tmp_path)
    message = str(refused.value)
    assert message.startswith(
        "class MildDemented has no images in the train folder (train/MildDemented is empty), "
        "nor in the built train and validation splits. "
    )
    assert "--config.data.allow_missing_classes=true" in message
    caplog.set_level(logging.WARNING)
    data = _prepare(root, tmp_path, allow_missing_classes=True)  # the same build, reused
    assert data.class_names == STAGES
    assert any("Training on it, as configured" in r.getMessage() for r in caplog.records)
    stored = data.metadata["audit"]["missing_classes"]
    assert stored == {"count": 1, "classes": {"MildDemented": {
        "folders": ["train"], "notes": ["train/MildDemented is empty"],
        "built_splits": ["train", "validation"]}}}  # fmt: skip


def test_a_class_folder_only_under_test_is_missing_from_train(tmp_path):
    root = _four_classes(tmp_path / "data", train=STAGES[:3])
    with pytest.raises(UserError, match="allow_missing_classes") as refused:
        _prepare(root, tmp_path)
    assert str(refused.value).startswith(
        "class ModerateDemented has no images in the train folder (there is no "
        "train/ModerateDemented folder), nor in the built train and validation splits. "
    )


def test_a_class_without_any_image_is_named_with_every_split(tmp_path):
    root = _four_classes(
        tmp_path / "data", empty={("train", "ModerateDemented"), ("test", "ModerateDemented")}
    )
    with pytest.raises(UserError, match="allow_missing_classes=true") as refused:
        _prepare(root, tmp_path)
    assert str(refused.value).startswith(
        "class ModerateDemented has no images in the train and test folders "
        "(train/ModerateDemented is empty; test/ModerateDemented is empty), nor in the built "
        "train, validation and test splits. "
    )


def test_the_audit_reports_missing_classes_in_an_entry_and_a_table_line(tmp_path):
    root = _four_classes(tmp_path / "split", train=STAGES[:3])
    report, _ = audit.run(registry.parse(root))
    assert report["missing_classes"] == {"count": 1, "classes": {"ModerateDemented": {
        "folders": ["train"], "notes": ["there is no train/ModerateDemented folder"],
        "built_splits": []}}}  # fmt: skip
    table = audit.format_table(report)
    assert (
        "classes without images in a folder or split: 1\n  class ModerateDemented has no "
        "images in the train folder (there is no train/ModerateDemented folder)\n" in table
    )
    # A layout without split folders: the whole set is the one folder.
    flat = tmp_path / "flat"
    for i, cls in enumerate(STAGES):
        _write_images(flat / cls, 0 if cls == "MildDemented" else 2, i)
    report, _ = audit.run(registry.parse(flat))
    assert audit.format_missing_classes(report["missing_classes"]) == [
        "class MildDemented has no images in any folder (MildDemented is empty)"
    ]
    complete, _ = audit.run(registry.parse(_four_classes(tmp_path / "complete")))
    assert complete["missing_classes"] == {"count": 0, "classes": {}}
    assert "classes without images in a folder or split: 0" in audit.format_table(complete)


def test_a_class_folder_one_letter_from_a_stage_is_refused_before_the_build(tmp_path, caplog):
    # The typo: train/VeryMildDemnted beside the other three stages.
    train = ("NonDemented", "VeryMildDemnted", "MildDemented", "ModerateDemented")
    root = _four_classes(tmp_path / "data", train=train)
    with pytest.raises(UserError) as refused:
        _prepare(root, tmp_path)
    assert str(refused.value).startswith(
        "class 'VeryMildDemnted' is one letter from the stage VeryMildDemented (alias "
        "'verymilddemented'): a typo? Rename the folder (or label), or set "
        "--config.data.allow_similar_class_names=true if the classes "
    )
    assert not list((tmp_path / "tfds").glob("adni-*"))  # nothing was built
    report, _ = audit.run(registry.parse(root))
    assert report["similar_class_names"]["count"] == 1
    assert (
        "class names that look like typos: 1\n  class 'VeryMildDemnted' is one letter "
        "from the stage VeryMildDemented" in audit.format_table(report)
    )
    # Meant as found: five classes, each then missing from a folder.
    caplog.set_level(logging.WARNING)
    with pytest.raises(UserError) as missing:
        _prepare(root, tmp_path, allow_similar_class_names=True)
    assert "kept as found, as configured" in caplog.text
    assert str(missing.value).startswith(
        "class VeryMildDemented has no images in the train folder (there is no "
        "train/VeryMildDemented folder), nor in the built train and validation splits; "
        "class VeryMildDemnted has no images in the test folder (there is no "
        "test/VeryMildDemnted folder), nor in the built test split. "
    )
    data = _prepare(root, tmp_path, allow_similar_class_names=True, allow_missing_classes=True)
    assert len(data.class_names) == 5


@pytest.mark.parametrize("names", [
    STAGES, ("NC", "AD"), ("AD", "CN", "EMCI", "LMCI", "MCI", "SMC"), ("pMCI", "sMCI"),
    ("0", "1", "2", "3"), ("CDR0", "CDR05", "CDR1", "CDR2", "CDR3"), ("stage1", "stage2"),
    ("class_a", "class_b"), ("GroupA", "GroupB"), ("Controls", "Patients"),
    ("Converted", "Demented", "Nondemented"), ("Progressive", "Stable"),
])  # fmt: skip
def test_real_class_sets_pass_the_name_check(names):
    assert similar_class_names(names) == []


def test_probable_typos_name_both_spellings():
    assert similar_class_names(("Alzheimr", "Normal")) == [
        "class 'Alzheimr' is one letter from the label AD (alias 'alzheimer')"
    ]
    assert similar_class_names(("AD", "MCI", "Nomral")) == [  # a swap is one slip
        "class 'Nomral' is one letter from the label NC (alias 'normal')"
    ]
    assert similar_class_names(("Benigm", "Benign", "Malign")) == [
        "classes 'Benigm' and 'Benign' are one letter apart"
    ]
    assert similar_class_names(("NonDemented", "Non_Demented", "Other")) == [
        "classes 'NonDemented' and 'Non_Demented' both spell the stage NonDemented"
    ]
    # Long names allow two slips.
    assert similar_class_names(("ModerateDemntd", "NonDemented", "Other")) == [
        "class 'ModerateDemntd' is 2 letters from the stage ModerateDemented (alias "
        "'moderatedemented')"
    ]
    assert (edit_distance("kitten", "sitting"), edit_distance("ab", "ba")) == (3, 1)


def test_the_settings_are_validated_and_off_by_default():
    config = convnext_t.get_config()
    assert config.data.allow_missing_classes is False
    assert config.data.allow_similar_class_names is False
    spec = data_spec.from_config(config.data)
    assert (spec.allow_missing_classes, spec.allow_similar_class_names) == (False, False)
    with pytest.raises(UserError, match=r"config.data.allow_missing_classes = 'yes': expected "
                                        r"true or false"):  # fmt: skip
        DataSpec(allow_missing_classes="yes")
    with pytest.raises(UserError, match="allow_similar_class_names = 1: expected true or false"):
        DataSpec(allow_similar_class_names=1)


def test_a_build_stored_before_the_entry_is_checked_from_its_counts():
    counts = {"train": {"NC": {"images": 4}, "AD": {"images": 3}},
              "test": {"NC": {"images": 2}, "AD": {"images": 0}}}  # fmt: skip
    built = {"train": {"NC": 3, "AD": 2}, "validation": {"NC": 1, "AD": 1},
             "test": {"NC": 2, "AD": 0}}  # fmt: skip
    metadata = {"audit": {"counts": counts}, "class_distribution": built}
    with pytest.raises(UserError) as refused:
        dataset._check_missing_classes(metadata, ("NC", "AD"), DataSpec())
    assert str(refused.value).startswith(
        "class AD has no images in the test folder, nor in the built test split. "
    )
