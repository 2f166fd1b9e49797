"""Volume layouts built into the slice data set: splits by subject (a subject's sessions never
cross splits), records carrying subject, session, volume and slice, the settings recorded and
part of the build's name, resumable and parallel slicing with the same bytes, and bad volumes
refused or skipped by name with a count."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from alz_jax.data import bags, dataset
from alz_jax.host.errors import UserError
from alz_jax.tfds_builders.mri_slices import api as slices
from alz_jax.tfds_builders.mri_slices.volumes import sliced
from alz_jax.tfds_builders.mri_slices.volumes import synthetic as volume_synthetic

TINY = volume_synthetic.VolumeCohortSpec(subjects=16, shape=(16, 18, 16))
# Sagittal slices 4..11 of 16 (4 dropped at each end), every second: 4 per volume, 32 px.
VOLUME_FIELDS = {
    "volume_discard": 4, "volume_step": 2, "volume_size": 32, "volume_workers": 1,
    "allow_missing_classes": True,  # 16 subjects: a rare class may miss a split
}  # fmt: skip


def _spec(manual_dir, data_dir, **fields) -> dataset.DataSpec:
    return dataset.DataSpec(
        manual_dir=str(manual_dir), data_dir=str(data_dir), **{**VOLUME_FIELDS, **fields}
    )


@pytest.fixture(scope="module")
def caps_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("caps")
    volume_synthetic.generate(out, 0, "caps", TINY)
    return out


@pytest.fixture(scope="module")
def caps_built(caps_cohort, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    return dataset.prepare(_spec(caps_cohort, data_dir)), data_dir


def test_caps_build_splits_by_subject_with_every_session_together(caps_built, caps_cohort):
    data, _ = caps_built
    listing = slices.list_volumes(caps_cohort, "caps", _spec(caps_cohort, "/x").volume_settings)
    subjects_of = {}
    for split in dataset.SPLITS:
        records = data.records(split)
        subjects_of[split] = set(records["subject_id"])
        for scan, subject in zip(records["scan_id"], records["subject_id"], strict=True):
            assert scan.startswith(subject + "_ses-")  # the scan unit is the session
    assert not subjects_of["train"] & subjects_of["validation"]
    assert not subjects_of["train"] & subjects_of["test"]
    assert not subjects_of["validation"] & subjects_of["test"]
    # Every volume listed is there, 4 slices each, none twice.
    total = sum(data.num_examples(split) for split in dataset.SPLITS)
    assert total == 4 * len(listing.volumes)
    meta = data.metadata
    assert sorted(meta["volumes"]) == sorted(v.scan_id for v in listing.volumes)
    assert meta["volume_settings"]["discard"] == 4
    assert meta["volume_settings"]["axis"] == "sagittal"
    some = next(iter(meta["volumes"].values()))
    assert some["slices"] == [4, 6, 8, 10]
    assert some["file"].endswith("_T1w.nii.gz")
    assert meta["layout"] == "caps"
    assert data.class_names == ("NC", "AD")
    # Registered brains look alike across people: no near-identical pair search (the subjects
    # measure leakage), so no pairs stored and no look-alike entry in the reports.
    assert meta["near_duplicate_pairs"] is None
    assert data.cross_split_near_duplicates() is None


def test_records_name_their_volume_and_slice(caps_built):
    data, _ = caps_built
    records = data.records("train")
    volumes = data.metadata["volumes"]
    for name, scan, subject, index in zip(
        records["file_name"], records["scan_id"], records["subject_id"], records["slice_index"],
        strict=True,
    ):  # fmt: skip
        session = scan.removeprefix(subject + "_")
        volume = f"subjects/{subject}/{session}/t1_linear/{subject}_{session}_T1w"
        assert name.startswith(volume) and name == f"{volumes[scan]['file']}#sagittal_{index:03d}"


def test_settings_are_part_of_the_build_name(caps_built, caps_cohort):
    data, data_dir = caps_built
    again = dataset.prepare(_spec(caps_cohort, data_dir))
    assert again.source_fingerprint == data.source_fingerprint
    other = dataset.prepare(_spec(caps_cohort, data_dir, volume_step=4))
    assert other.source_fingerprint != data.source_fingerprint
    assert sum(other.num_examples(s) for s in dataset.SPLITS) * 2 == sum(
        data.num_examples(s) for s in dataset.SPLITS
    )


def _slice_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_slicing_resumes_and_parallel_slices_are_the_same_bytes(caps_cohort, tmp_path, caplog):
    settings = _spec(caps_cohort, tmp_path).volume_settings
    listing = slices.list_volumes(caps_cohort, "caps", settings)
    serial = tmp_path / "serial"
    slices.slice_volumes(listing, settings, serial, workers=1)
    # An interrupted slicing: two volumes done, one half-written temporary folder, no manifest.
    resumed = tmp_path / "resumed"
    first = listing.volumes[:2]
    part = slices.VolumeListing(**{**vars(listing), "volumes": first})
    slices.slice_volumes(part, settings, resumed, workers=1)
    (resumed / sliced.MANIFEST).unlink()
    (resumed / f".tmp-{listing.volumes[2].scan_id}-99").mkdir()
    done_before = {v.scan_id: (resumed / v.scan_id).stat().st_mtime_ns for v in first}
    with caplog.at_level(logging.INFO):
        manifest = slices.slice_volumes(listing, settings, resumed, workers=2)
    assert "2 kept from an interrupted build" in caplog.text
    assert not list(resumed.glob(".tmp-*"))  # the half-written folder is gone
    assert {v.scan_id: (resumed / v.scan_id).stat().st_mtime_ns for v in first} == done_before
    assert len(manifest["volumes"]) == len(listing.volumes)
    assert _slice_files(resumed) == _slice_files(serial)


def _write(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> None:
    image = nib.Nifti1Image(data.astype(np.float32), np.diag([*zooms, 1.0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


def _nifti_cohort(root: Path, subjects: int = 14) -> list[str]:
    """A nifti-layout cohort of small random brains, half AD; returns the table's lines."""
    rng = np.random.default_rng(0)
    lines = ["path,subject,session,label"]
    for i in range(subjects):
        data = rng.random((16, 18, 16)) + (i % 2)
        _write(root / f"s{i}.nii.gz", data)
        lines.append(f"s{i}.nii.gz,S{i},M0,{'AD' if i % 2 else 'CN'}")
    return lines


def test_bad_volumes_are_skipped_by_name_and_counted(tmp_path, caplog):
    root = tmp_path / "nifti"
    lines = _nifti_cohort(root)
    (root / "broken.nii").write_bytes(b"not a volume at all" * 10)
    _write(root / "flat.nii", np.ones((16, 18)))
    lines += ["broken.nii,S90,M0,AD", "flat.nii,S91,M0,CN", "gone.nii.gz,S92,M0,CN"]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        data = dataset.prepare(_spec(root, tmp_path / "tfds"))
    meta = data.metadata
    unusable = {e["file"]: e["problem"] for e in meta["volume_unusable"]}
    assert set(unusable) == {"broken.nii", "flat.nii"}
    assert "2D" in unusable["flat.nii"]
    assert sum(len(v) for v in meta["volume_skipped"].values()) == 1  # gone.nii.gz
    assert "broken.nii" in caplog.text and "flat.nii" in caplog.text
    assert len(meta["volumes"]) == 14


def test_voxels_not_1mm_are_refused_in_one_line_or_resampled(tmp_path):
    root = tmp_path / "nifti"
    lines = _nifti_cohort(root)
    _write(root / "s0.nii.gz", np.random.default_rng(1).random((8, 9, 8)), zooms=(2.0, 2.0, 2.0))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as refused:
        dataset.prepare(_spec(root, tmp_path / "tfds"))
    message = str(refused.value).splitlines()[0]
    assert "s0.nii.gz (2x2x2 mm)" in message and "volume_voxels=resample" in message
    assert not list((tmp_path / "tfds").glob("adni-*/slices/*/volume.json"))  # nothing sliced
    data = dataset.prepare(_spec(root, tmp_path / "tfds", volume_voxels="resample"))
    assert data.metadata["volumes"]["S0_M0"]["zooms"] == [2.0, 2.0, 2.0]
    assert data.metadata["volumes"]["S0_M0"]["ras_shape"] == [16, 18, 16]


def test_a_wrong_volume_setting_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"config\.data\.volume_axis = 'sideways': expected "
                                        r"sagittal\|coronal\|axial"):  # fmt: skip
        dataset.DataSpec(volume_axis="sideways")
    with pytest.raises(UserError, match=r"config\.data\.volume_clip"):
        dataset.DataSpec(volume_clip=(99.0, 1.0))


def test_oasis1_release_builds_with_mr2_in_its_subjects_split(tmp_path):
    root = tmp_path / "oasis"
    volume_synthetic.generate(root, 3, "oasis1", TINY)
    data = dataset.prepare(_spec(root, tmp_path / "tfds"))
    split_of_subject = {}
    for split in dataset.SPLITS:
        for subject in data.records(split)["subject_id"]:
            assert split_of_subject.setdefault(subject, split) == split
    sessions = {scan.rsplit("_", 1)[1] for scan in data.metadata["volumes"]}
    assert "MR2" in sessions
    assert data.class_names == slices.STAGES
    assert os.fspath(root) in data.metadata["volume_source"]
    assert json.loads(json.dumps(data.metadata["volume_skipped"]))  # blank CDR rows, counted


def test_slicing_workers_do_not_import_the_commands_modules(tmp_path):
    """Spawned workers import the parent's __main__ first; the slicing starts them with a blank
    one, so a worker holds what slicing needs, not the JAX that `python -m alz_jax.main`
    imports. The parent here is a script that imports JAX, as `main` does."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import jax\n"
        "from alz_jax.tfds_builders.mri_slices.volumes import extraction\n"
        "from tests import volume_worker_probe\n"
        "if __name__ == '__main__':\n"
        "    probe = volume_worker_probe.imported\n"
        "    print(list(extraction.parallel_map(probe, ['jax', 'sys'], 2)))\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=120,
    )
    assert done.stdout.strip().splitlines()[-1] == "[False, True]"


def test_slicing_shows_volumes_per_second_and_an_eta(caps_cohort, tmp_path, caplog, monkeypatch):
    from alz_jax.tfds_builders.mri_slices import progress

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    settings = _spec(caps_cohort, tmp_path).volume_settings
    listing = slices.list_volumes(caps_cohort, "caps", settings)
    with caplog.at_level(logging.INFO):
        slices.slice_volumes(listing, settings, tmp_path / "out", workers=1)
    total = len(listing.volumes)
    messages = [r.getMessage() for r in caplog.records]
    lines = [m for m in messages if m.startswith("Slicing volumes:")]
    assert lines[0].startswith(f"Slicing volumes: 1/{total} (")
    assert "volumes/s, ETA 0:00:" in lines[0]
    assert lines[-1].startswith(f"Slicing volumes: {total}/{total} in ")


def _table(root: Path, rows: list[tuple[str, str, str, str]]) -> None:
    lines = ["path,subject,session,label"] + [",".join(r) for r in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def test_ids_that_cannot_name_a_folder_or_that_collide_are_refused(tmp_path):
    root = tmp_path / "nifti"
    _nifti_cohort(root, subjects=2)
    _table(root, [("s0.nii.gz", "002_S_0295", "11/02/2006", "CN"), ("s1.nii.gz", "S1", "M0", "AD")])
    with pytest.raises(UserError, match=r"1 subjects or sessions cannot name a folder "
                                        r"\('002_S_0295_11/02/2006'\)"):  # fmt: skip
        dataset.prepare(_spec(root, tmp_path / "tfds"))
    _table(root, [("s0.nii.gz", "A_B", "C", "CN"), ("s1.nii.gz", "A", "B_C", "AD")])
    with pytest.raises(UserError, match=r"shared by two sessions \(A B_C and A_B C -> A_B_C\)"):
        dataset.prepare(_spec(root, tmp_path / "tfds"))


def test_a_table_matching_no_volume_says_what_it_left_out(tmp_path):
    root = tmp_path / "nifti"
    _nifti_cohort(root, subjects=2)
    _table(root, [("gone0.nii.gz", "S0", "M0", "CN"), ("gone1.nii.gz", "S1", "M0", "AD")])
    with pytest.raises(UserError) as raised:
        dataset.prepare(_spec(root, tmp_path / "tfds"))
    text = str(raised.value)
    assert "no volume with a label to use" in text
    assert "2 row names a missing file" in text and "2 volume without a row" in text


def test_a_cohort_only_evaluated_on_is_built_whole_however_small(tmp_path):
    """The external protocol builds every image into test: four subjects (too few to split),
    and a split column saying test everywhere."""
    root = tmp_path / "nifti"
    _nifti_cohort(root, subjects=4)
    _table(root, [(f"s{i}.nii.gz", f"S{i}", "M0", "AD" if i % 2 else "CN") for i in range(4)])
    with pytest.raises(UserError, match="split would be empty"):
        dataset.prepare(_spec(root, tmp_path / "tfds"))
    data = dataset.prepare(_spec(root, tmp_path / "tfds", protocol="external"))
    assert {s: data.num_examples(s) for s in dataset.SPLITS} == {
        "train": 0, "validation": 0, "test": 4 * 4}  # fmt: skip
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text(
        "\n".join([lines[0] + ",split"] + [f"{line},test" for line in lines[1:]]) + "\n"
    )
    data = dataset.prepare(_spec(root, tmp_path / "tfds", protocol="external"))
    assert data.num_examples("test") == 16


def test_a_read_error_of_the_system_stops_the_build_and_skips_nothing(tmp_path, monkeypatch):
    import errno

    from alz_jax.tfds_builders.mri_slices.volumes import reading

    root = tmp_path / "nifti"
    (root / "labels.csv").parent.mkdir(parents=True, exist_ok=True)
    lines = _nifti_cohort(root)
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    load = reading.nib.load

    def failing(name, *args, **kwargs):
        if name.endswith("s3.nii.gz"):
            raise OSError(errno.EIO, "Input/output error")
        return load(name, *args, **kwargs)

    monkeypatch.setattr(reading.nib, "load", failing)
    with pytest.raises(UserError, match=r"s3\.nii\.gz: cannot be read \(Input/output error\); "
                                        "nothing was skipped"):  # fmt: skip
        dataset.prepare(_spec(root, tmp_path / "tfds"))
    assert not list((tmp_path / "tfds").glob("adni-*/source.json"))  # no build made of it
    monkeypatch.setattr(reading.nib, "load", load)
    data = dataset.prepare(_spec(root, tmp_path / "tfds"))
    assert "S3_M0" in data.metadata["volumes"]


def test_the_slices_folder_goes_once_built_and_a_change_says_what_changed(
    tmp_path, caplog
):  # fmt: skip
    root = tmp_path / "nifti"
    outside = tmp_path / "elsewhere.nii.gz"
    _write(outside, np.random.default_rng(3).random((16, 18, 16)) + 1)
    lines = [*_nifti_cohort(root), f"{outside},S99,M0,AD"]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    first = dataset.prepare(_spec(root, tmp_path / "tfds"))
    assert not list((tmp_path / "tfds").glob("adni-*/slices"))
    assert "S99_M0" in first.metadata["volumes"]
    # A volume outside the folder, rewritten: another build, never the old one.
    _write(outside, np.random.default_rng(4).random((16, 18, 16)) + 1)
    with caplog.at_level(logging.WARNING):
        second = dataset.prepare(_spec(root, tmp_path / "tfds"))
    assert second.source_fingerprint != first.source_fingerprint
    assert "volumes outside the folder changed" in caplog.text
    with caplog.at_level(logging.WARNING):
        dataset.prepare(_spec(root, tmp_path / "tfds", volume_step=4))
    assert "slicing settings changed" in caplog.text


def test_a_session_is_one_bag_and_its_2_5d_neighbours_are_its_own_slices(caps_built):
    """Scan models and 2.5D on a volume layout: each session's slices form one bag in slice
    order, and a slice's neighbours are the adjacent slices of its own volume (clamped)."""
    data, _ = caps_built
    records = data.records("test")
    scans = bags.ScanIndex.from_records(records, "test")
    assert set(scans.counts.tolist()) == {4}  # 4 sagittal slices per volume (VOLUME_FIELDS)
    assert len(scans) == len(set(records["scan_id"]))
    index = scans.neighbour_index(1)
    for i, row in enumerate(index):
        assert {records["scan_id"][j] for j in row} == {records["scan_id"][i]}
        steps = np.diff(records["slice_index"][row])
        assert set(steps.tolist()) <= {0, 2} and row[1] == i  # every second slice kept
