"""A new layout takes one registration: a toy plug-in, registered here and nowhere else, is then
detected ("auto"), accepted by the config, audited, built into the TFDS data set with subject-
aware splits and trained on, by the same machinery as the built-in layouts. The training test
also registers a toy model family (tests/test_family_plugins.py): both new pieces, one
registration each, go through the audit and training together."""

import collections
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from alz_jax.data import dataset
from alz_jax.data.data_spec import DataSpec
from alz_jax.host.errors import UserError
from alz_jax.models import registry as model_registry
from alz_jax.run import run_record, train
from alz_jax.tfds_builders.mri_slices import api
from alz_jax.tfds_builders.mri_slices.layouts import registry
from alz_jax.tfds_builders.mri_slices.layouts.base import (
    ImageRecord,
    Layout,
    LayoutError,
    LayoutPlugin,
)
from alz_jax.tfds_builders.mri_slices.layouts.classes import class_order
from tests import test_families
from tests import tiny_config as tiny_config_file
from tests.test_family_plugins import TOY as TOY_FAMILY

BUILT_IN = ("adni", "folders", "oasis", "parquet", "caps", "oasis1", "nifti")

# The toy layout: one flat folder of `<subject>_<label>_<slice>.png`, 24x24 grayscale.
TOY = "toy_flat"
TOY_PATTERN = re.compile(r"^(?P<subject>s\d+)_(?P<label>[A-Za-z]+)_(?P<slice>\d+)\.png$")
TOY_SIZE = (24, 24)
SUBJECTS_PER_CLASS, SLICES = 8, 4
OFF_SIZE_FILE = "s00_NC_9.png"  # one image of another size: the audit hook's catch


def _toy_files(manual_dir: Path) -> list[Path]:
    return sorted(p for p in manual_dir.iterdir() if not p.name.startswith("."))


def _toy_detect(manual_dir: Path) -> float:
    files = _toy_files(manual_dir)
    return 1.0 if files and all(TOY_PATTERN.match(p.name) for p in files) else 0.0


def _toy_describe(manual_dir: Path, label_names: Sequence[str] = ()) -> tuple[str, ...]:
    found = {TOY_PATTERN.match(p.name)["label"] for p in _toy_files(manual_dir)}
    return class_order(found)[0]


def _toy_parse(manual_dir: Path, label_names: Sequence[str] = ()) -> Layout:
    if not _toy_detect(manual_dir):
        raise LayoutError(f"{manual_dir} is not a flat folder of <subject>_<label>_<n>.png")
    class_names, mapping = class_order(
        {TOY_PATTERN.match(p.name)["label"] for p in _toy_files(manual_dir)}
    )
    records = []
    for path in _toy_files(manual_dir):
        match = TOY_PATTERN.match(path.name)
        # One scan per subject: the scan is named after it.
        records.append(
            ImageRecord(
                path=path,
                file_name=path.name,
                folder_split="",
                label=class_names.index(mapping[match["label"]]),
                scan_id=f"{match['subject']}_scan",
                slice_index=int(match["slice"]),
            )
        )
    return Layout(
        root=manual_dir,
        records=records,
        subject_of_scan={r.scan_id: r.scan_id.removesuffix("_scan") for r in records},
        subject_source="file_name",
        kind=TOY,
        class_names=class_names,
        folder_splits=(),
        image_size=TOY_SIZE,
        class_mapping=mapping,
    )


@pytest.fixture
def toy_layout():
    """The toy plug-in, registered for the test: the one line a new layout needs."""
    plugin = api.register_layout(
        LayoutPlugin(
            name=TOY,
            summary="<subject>_<label>_<n>.png (toy)",
            detect=_toy_detect,
            describe=_toy_describe,
            parse=_toy_parse,
            image_size=TOY_SIZE,
            image_modes=("L",),
        )
    )
    yield plugin
    api.unregister_layout(TOY)


def _write_toy(folder: Path) -> dict[str, dict[str, int]]:
    """The toy folder: per class, SUBJECTS_PER_CLASS subjects of SLICES images (AD brighter),
    and the off-size image; returns the usable images and subjects per class."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    written = collections.defaultdict(lambda: {"images": 0, "subjects": 0})
    for k, label in enumerate(("NC", "AD")):
        for s in range(SUBJECTS_PER_CLASS):
            subject = f"s{k * SUBJECTS_PER_CLASS + s:02d}"
            written[label]["subjects"] += 1
            for i in range(SLICES):
                image = rng.integers(40, 90, TOY_SIZE, dtype=np.uint8) + 80 * k
                cv2.imwrite(str(folder / f"{subject}_{label}_{i}.png"), image)
                written[label]["images"] += 1
    cv2.imwrite(str(folder / OFF_SIZE_FILE), np.full((30, 20), 60, np.uint8))
    return dict(written)


def test_the_registry_is_the_one_list_of_layouts(tmp_path, adni_like, toy_layout):
    assert api.layout_names() == ("auto", *BUILT_IN, TOY)
    with pytest.raises(ValueError, match="already registered"):
        api.register_layout(toy_layout)
    with pytest.raises(LayoutError, match=r"\|".join(("auto", *BUILT_IN, TOY)) + r"\."):
        registry.get("nope")
    # A more specific layout keeps its folders: the toy layout takes none of ADNI's.
    assert api.detect_layout(adni_like[0]) == "adni"
    # Nothing fits: the message names every registered layout's folder shape.
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    with pytest.raises(LayoutError, match=r"\(ADNI\);.*\(toy\)\. Found \['notes.txt'\]"):
        api.detect_layout(tmp_path / "empty")


def test_unregistering_takes_the_layout_out_of_the_config(toy_layout):
    api.unregister_layout(TOY)
    assert api.layout_names() == ("auto", *BUILT_IN)
    with pytest.raises(UserError, match=r"\|".join(("auto", *BUILT_IN)) + r"\."):
        DataSpec(layout=TOY)


@pytest.fixture
def toy_family():
    """The toy model family, registered for the test."""
    model_registry.register(TOY_FAMILY)
    yield TOY_FAMILY
    model_registry.unregister(TOY_FAMILY.name)


@pytest.mark.slow
def test_a_registered_toy_layout_is_detected_audited_built_and_trained(
    tmp_path, toy_layout, toy_family
):
    folder = tmp_path / "toy"
    written = _write_toy(folder)
    # Detection and the config's choices come from the registry.
    assert api.detect_layout(folder) == TOY
    assert TOY in api.layout_names()
    assert DataSpec(layout=TOY).layout == TOY
    with pytest.raises(UserError, match=TOY):  # the message lists the registered names
        DataSpec(layout="no_such_layout")
    assert api.describe_layout(folder) == (TOY, ("NC", "AD"))

    # The audit: counts per class, subjects from the names, and the toy's size check.
    report, _ = api.audit_folder(api.parse_layout(folder))
    assert report["layout"] == TOY and report["subject_source"] == "file_name"
    assert report["unusable"]["off_size"]["count"] == 1
    assert report["unusable"]["off_size"]["files"][0].startswith(OFF_SIZE_FILE)
    counts = report["counts"]["all"]
    assert counts["NC"]["images"] == written["NC"]["images"] + 1  # the off-size one is NC
    assert counts["AD"]["images"] == written["AD"]["images"]
    assert {c: counts[c]["subjects"] for c in counts} == {"NC": 8, "AD": 8}
    assert {c: counts[c]["scans"] for c in counts} == {"NC": 8, "AD": 8}
    assert "toy" in api.format_audit(report)

    # Training the toy family on it through the generic machinery ("auto" finds the layout).
    config = test_families.with_test_model(tiny_config_file.get_config(), toy_family.name)
    config.data.manual_dir = str(folder)
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.layout = "auto"
    config.num_train_steps = config.eval_every_steps = 2
    result = train.train_and_evaluate(config, str(tmp_path / "work"))
    assert result["subject_source"] == "file_name" and result["subjects_known"]
    record = run_record.load(str(tmp_path / "work"))
    assert record["identity"]["model"]["family"] == toy_family.name

    # The build the run used: subject-aware splits of exactly the usable toy images.
    data = dataset.prepare(config.data)
    assert data.metadata["layout"] == TOY and data.metadata["skipped"]["off_size"] == 1
    subjects = {s: set(data.records(s)["subject_id"]) for s in dataset.SPLITS}
    assert all(subjects.values())
    assert not (subjects["train"] & subjects["validation"])
    assert not (subjects["test"] & (subjects["train"] | subjects["validation"]))
    distribution = data.class_distribution()
    for label in ("NC", "AD"):
        assert sum(d[label] for d in distribution.values()) == written[label]["images"]
    assert sum(len(v) for v in subjects.values()) == 2 * SUBJECTS_PER_CLASS
    assert result["class_distribution_by_split"] == distribution
    assert result["num_images"] == data.num_examples("test")
    assert result["subject"]["n"] == len(subjects["test"])
    assert data.protocol["official_split"] == "by subject 0.7/0.15/0.15 at build"
    assert sum(data.num_examples(s) for s in dataset.SPLITS) == 2 * SUBJECTS_PER_CLASS * SLICES


def test_the_old_package_name_serves_the_same_modules_and_names():
    """Users' imports of alz_jax.tfds_builders.adni keep working (docs/data.md): the same module
    objects, so a monkeypatch of one is a patch of the other, and the old names."""
    from alz_jax.tfds_builders.adni import audit as old_audit
    from alz_jax.tfds_builders.adni import layout as old_layout
    from alz_jax.tfds_builders.adni import stages as old_stages
    from alz_jax.tfds_builders.mri_slices import audit
    from alz_jax.tfds_builders.mri_slices.layouts import adni

    assert old_audit is audit
    assert old_layout.parse is adni.parse and old_layout.LayoutError is LayoutError
    assert old_stages.class_order is class_order
    assert api.layout_names() == old_stages.LAYOUTS
