"""The audit on a synthetic folder with every trap switched on, and on the default set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from alz_jax.tfds_builders.mri_slices import Builder, audit, synthetic
from alz_jax.tfds_builders.mri_slices.layouts import adni
from tests.xla_flags import ONE_DEVICE_XLA_FLAGS

REPO = Path(__file__).resolve().parents[1]
TRAPS = {
    "class_slice_windows": True,
    "shared_subjects": 3,
    "near_black_scans": 2,
    "truncated_jpegs": 3,
    "empty_jpegs": 2,
    "duplicate_images": 4,
    "off_size_images": 2,
    "stray_files": 3,
}


@pytest.fixture(scope="module")
def trap_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("traps")
    spec = synthetic.SyntheticSpec(train_subjects=30, test_subjects=12, **TRAPS)
    summary = synthetic.generate(root, seed=0, spec=spec)
    return root, summary


def test_every_trap_reported_by_name_with_exact_counts(trap_folder):
    root, summary = trap_folder
    report, _ = audit.run(adni.parse(root))
    traps = summary["traps"]
    assert report["subjects_in_train_and_test"]["count"] == 3
    assert report["subjects_in_train_and_test"]["subjects"] == traps["shared_subjects"]
    assert report["near_black"]["scans"] == 2
    assert report["near_black"]["scan_ids"] == traps["near_black_scans"]
    assert report["near_black"]["images"] == 2 * synthetic.SLICES_PER_SCAN
    for kind, trap in (("unreadable", "truncated_jpegs"), ("empty", "empty_jpegs"),
                       ("off_size", "off_size_images")):  # fmt: skip
        entry = report["unusable"][kind]
        assert entry["count"] == TRAPS[trap], kind
        assert sorted(f.split(":")[0] for f in entry["files"]) == sorted(traps[trap])
    dup = report["duplicates"]
    assert (dup["groups"], dup["files"]) == (4, 8)
    assert (dup["within_a_folder"], dup["across_folders"]) == (2, 2)
    assert report["stray_files"]["files"] == sorted(traps["stray_files"])
    assert report["subjects_with_label_change"]["count"] == 0
    assert report["shortcut_baseline"]["scan_accuracy"] >= 0.65
    table = audit.format_table(report)
    for name in traps["truncated_jpegs"] + traps["stray_files"]:
        assert name in table


def test_shortcut_baseline_is_chance_on_the_default_set(tmp_path):
    spec = synthetic.SyntheticSpec(train_subjects=40, test_subjects=40)
    synthetic.generate(tmp_path, seed=2, spec=spec)
    report, _ = audit.run(adni.parse(tmp_path))
    assert 0.35 <= report["shortcut_baseline"]["scan_accuracy"] <= 0.65
    assert report["duplicates"]["groups"] == 0 and report["stray_files"]["count"] == 0
    assert all(v["count"] == 0 for v in report["unusable"].values())


def test_label_change_is_reported(adni_like, tmp_path):
    import shutil

    root, spec = adni_like
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    # Move one AD visit of subject 011_S_0003 to NC: its label now differs between visits.
    scan = spec.scans_of_subject["011_S_0003"][0]
    for path in (copy / "train" / "AD").glob(f"{scan}_*.jpeg"):
        path.rename(copy / "train" / "NC" / path.name)
    report, _ = audit.run(adni.parse(copy))
    assert report["subjects_with_label_change"]["subjects"] == ["011_S_0003"]


def test_build_skips_unusable_files_naming_each(trap_folder, tmp_path, caplog):
    root, summary = trap_folder
    builder = Builder(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    meta = builder.info.metadata
    skipped = TRAPS["truncated_jpegs"] + TRAPS["empty_jpegs"] + TRAPS["off_size_images"]
    images = sum(1 for _ in (root / "AD_NC").glob("*/*/*.jpeg"))
    assert sum(meta["images_per_split"].values()) == images - skipped
    assert meta["skipped"] == {"unreadable": 3, "empty": 2, "off_size": 2, "stray_files": 3}
    assert meta["audit"]["duplicates"]["groups"] == 4
    for name in summary["traps"]["truncated_jpegs"] + summary["traps"]["empty_jpegs"]:
        assert name.split("/")[-1] in caplog.text
    assert "Thumbs.db" in caplog.text


def test_audit_command_prints_and_writes_json(trap_folder, tmp_path):
    root, _ = trap_folder
    out = tmp_path / "audit.json"
    result = subprocess.run(
        [sys.executable, "-m", "alz_jax.audit", f"--manual_dir={root}", f"--json={out}"],
        cwd=REPO, capture_output=True, text=True,
        env=dict(os.environ, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS),
        timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "shortcut baseline" in result.stdout and "stray non-image files: 3" in result.stdout
    assert json.loads(out.read_text())["unusable"]["empty"]["count"] == 2
