"""Volumes from the command line: the audit reports the right counts on a new cohort in each of
the three layouts; a run trained on a CAPS cohort is evaluated on an OASIS-1 release in its
Analyze form; bad volume input ends in one `error:` line and exit 2."""

import dataclasses
import json
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from alz_jax.data import dataset
from alz_jax.run import external, train
from alz_jax.tfds_builders.mri_slices import api as slices
from alz_jax.tfds_builders.mri_slices.volumes import reading
from alz_jax.tfds_builders.mri_slices.volumes import synthetic as volume_synthetic
from tests import tiny_config

REPO = Path(__file__).resolve().parents[1]
TINY = volume_synthetic.VolumeCohortSpec(subjects=16, shape=(16, 18, 16))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """A tiny synthetic cohort of each volume layout, with the generator's summary."""
    root = tmp_path_factory.mktemp("volume_cohorts")
    return {
        layout: (root / layout, volume_synthetic.generate(root / layout, 5, layout, TINY))
        for layout in volume_synthetic.LAYOUTS
    }


@pytest.mark.parametrize("layout", volume_synthetic.LAYOUTS)
def test_the_audit_counts_a_new_cohort_in_each_layout(cohorts, layout, tmp_path):
    folder, summary = cohorts[layout]
    out = tmp_path / "audit.json"
    args = ["alz_jax.audit", f"--manual_dir={folder}", f"--json={out}", "--workers=1"]
    if layout == "nifti":
        args.append("--volume_classes=NC,MCI,AD")
    done = _run(*args)
    assert done.returncode == 0, done.stderr
    assert f"Volume layout {layout}" in done.stdout
    report = json.loads(out.read_text())
    # The counts against what the generator wrote: sessions per diagnosis or CDR (CAPS keeps NC
    # and AD by default, leaving MCI out; OASIS-1 keeps the four CDR stages, not blank CDR).
    written = summary["classes"]
    if layout == "caps":
        expected = {"NC": written["CN"], "AD": written["AD"]}
    elif layout == "oasis1":
        cdrs = ("0", "0.5", "1", "2")
        expected = {s: written.get(f"CDR {c}", 0) for s, c in zip(slices.STAGES, cdrs, strict=True)}
    else:
        expected = {"NC": written["CN"], "MCI": written["MCI"], "AD": written["AD"]}
    found = {c: n["sessions"] for c, n in report["counts"]["per_class"].items()}
    assert found == expected
    assert report["counts"]["volumes"] == sum(expected.values())
    assert report["unreadable"]["count"] == 0
    assert sum(report["voxel_sizes"].values()) == sum(expected.values())
    # The audit names the data set a build with these settings makes, as the build does.
    classes = "NC,MCI,AD" if layout == "nifti" else ""
    spec = dataset.DataSpec(manual_dir=str(folder), volume_classes=classes)
    build_listing, _, _ = dataset._check_source(folder, None, spec, lambda _: nullcontext())
    assert report["source_fingerprint"] == slices.folder_fingerprint(build_listing)
    left_out = report["skipped"]["counts"]
    if layout == "caps":
        assert list(left_out.values()) == [written["MCI"]]
    if layout == "oasis1":
        # OASIS-1 stages; blank CDR rows left out and counted; the repeats are MR2 sessions.
        assert [n for r, n in left_out.items() if "blank CDR" in r] == [written["blank"]]
        # The generator's reliability repeats (sessions beyond one per subject) are MR2
        # sessions of their own subjects.
        repeats = summary["sessions"] - summary["subjects"]
        assert report["sessions_per_subject"].get("2", 0) == repeats > 0
        assert set(report["orientations"]) == {"LAS"}
        assert set(report["formats"]) == {"analyze"}


@pytest.fixture(scope="module")
def caps_run(cohorts, tmp_path_factory) -> Path:
    """A 2-step tiny run trained on the tiny CAPS cohort (NC vs AD)."""
    root = tmp_path_factory.mktemp("caps_run")
    config = tiny_config.two_step_config(cohorts["caps"][0], root / "tfds")
    config.data.volume_discard, config.data.volume_step, config.data.volume_size = 4, 2, 32
    config.data.volume_workers = 1
    config.data.allow_missing_classes = True
    workdir = root / "workdir"
    train.train_and_evaluate(config, str(workdir))
    return workdir


def test_a_caps_run_is_evaluated_on_an_oasis1_release(caps_run, cohorts):
    report_test = json.loads((caps_run / "report_test.json").read_text())
    assert report_test["about"]["data"]["folder"] == str(cohorts["caps"][0])
    request = external.Request(
        str(caps_run), {"manual_dir": str(cohorts["oasis1"][0]), "oasis_labels": "binary"},
        bootstrap_samples=40,
    )  # fmt: skip
    report, written = external.evaluate(request)
    assert {p.name for p in written} >= {
        "report_external_oasis1.json", "report_external_oasis1.md",
        "predictions_external_oasis1.csv",
    }  # fmt: skip
    assert report["cohort"]["layout"] == "oasis1"
    assert report["cohort"]["mapping"] == {"NC": "NC", "AD": "AD"}
    assert report["about"]["data"]["folder"] == str(cohorts["oasis1"][0])
    assert report["about"]["data"]["synthetic"] is False
    volumes = report["differences"]["volumes"]
    text = json.dumps(volumes)
    assert "RAS" in text and "LAS" in text  # the two cohorts' orientations, side by side
    rows = (caps_run / "predictions_external_oasis1.csv").read_text().splitlines()
    # Every slice of every NC or AD session of the release (CDR 0.5 and blank CDR left out).
    listing = slices.list_volumes(
        cohorts["oasis1"][0], "oasis1", slices.VolumeSettings(oasis_labels="binary")
    )
    width = reading.read_volume(listing.volumes[0].path)[0].shape[0]  # the RAS sagittal axis
    assert len(rows) - 1 == len(range(4, width - 4, 2)) * len(listing.volumes)


def _nifti_folder(root: Path, zooms=(1.0, 1.0, 1.0), broken: bool = False) -> Path:
    rng = np.random.default_rng(0)
    lines = ["path,subject,session,label"]
    for i in range(12):
        name = f"s{i}.nii.gz"
        if broken:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"\x1f\x8b not really gzip")
        else:
            data = (rng.random((16, 18, 16)) + i % 2).astype(np.float32)
            root.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), root / name)
        lines.append(f"{name},S{i},M0,{'AD' if i % 2 else 'CN'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("voxels", "volume_voxels=resample"),
        ("broken", "none of its 12 volumes could be sliced"),
        ("table", "found labels.csv (file,who,label)"),
    ],
)
def test_bad_volume_input_is_one_error_line_and_exit_2(case, expected, tmp_path):
    folder = _nifti_folder(tmp_path / "nifti", zooms=(1.2, 1.0, 1.0) if case == "voxels" else
                           (1.0, 1.0, 1.0), broken=case == "broken")  # fmt: skip
    if case == "table":
        (folder / "labels.csv").write_text("file,who,label\ns0.nii.gz,S0,AD\n")
    done = _run(
        "alz_jax.main", "--config=tests/tiny_config.py", f"--workdir={tmp_path / 'w'}",
        f"--config.data.manual_dir={folder}", f"--config.data.data_dir={tmp_path / 'tfds'}",
        "--config.data.volume_discard=4", "--config.data.volume_size=32",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    assert expected in errors[0]
    assert len(errors[0]) < 400


def test_another_cohort_is_read_as_its_own_folder_with_the_runs_slicing():
    """The run's layout, label table, parquet names and near-duplicate grouping describe its own
    folder: the other cohort starts from detection and its own table; the slicing stays."""
    run = dataset.DataSpec(
        manual_dir="/train", layout="nifti", labels_tsv="/train/table.csv", label_names="A,B",
        group_near_duplicates=True, volume_discard=8, volume_step=2, volume_size=64,
    )  # fmt: skip
    other = external.external_spec(run, {"manual_dir": "/other"})
    assert (other.layout, other.labels_tsv, other.label_names) == ("auto", "", "")
    assert other.group_near_duplicates is False
    # The same preprocessing: every slicing setting is the run's.
    assert dataclasses.replace(other.volume_settings, labels_table="/train/table.csv") == (
        run.volume_settings
    )
    assert (other.protocol, other.manual_dir) == ("external", "/other")
    flags = {"manual_dir": "/o", "layout": "oasis1", "labels_tsv": "/o/t.csv",
             "volume_workers": "2"}  # fmt: skip
    given = external.external_spec(run, flags)
    assert (given.layout, given.labels_tsv, given.volume_workers) == ("oasis1", "/o/t.csv", 2)
