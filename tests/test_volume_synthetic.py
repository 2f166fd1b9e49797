"""The synthetic 3D cohorts: deterministic by seed, fast, each layout's files and tables as the
real collections have them, every stored form (RAS, LPS, permuted axes, Analyze) giving the same
RAS anatomy back through nibabel, and atrophy that grows with the class."""

import csv
import time

import nibabel as nib
import numpy as np
import pytest

from alz_jax.tfds_builders.mri_slices.volumes import caps, nifti, oasis1, synthetic
from alz_jax.tfds_builders.mri_slices.volumes.settings import VolumeSettings

SMALL = synthetic.VolumeCohortSpec(subjects=12, shape=(16, 18, 16))


def _rows(path, delimiter=","):
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def _canonical(path) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj).squeeze()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthetic.generate(tmp_path / name, seed=seed, layout="caps", spec=SMALL)
    volume = f"subjects/sub-SYN001/ses-M000/t1_linear/sub-SYN001_ses-M000{synthetic.CAPS_SUFFIX}"
    first, again, other = ((tmp_path / n / volume).read_bytes() for n in "abc")
    assert first == again and first != other
    assert (tmp_path / "a/labels.tsv").read_bytes() == (tmp_path / "b/labels.tsv").read_bytes()
    assert synthetic.tag(SMALL, 3, "caps") != synthetic.tag(SMALL, 4, "caps")


def test_a_48_subject_cohort_is_written_within_10_seconds(tmp_path):
    start = time.perf_counter()
    summary = synthetic.generate(tmp_path, seed=0, layout="caps")
    assert time.perf_counter() - start < 10
    assert summary["subjects"] == 48 and summary["files"] == summary["sessions"] == 60


@pytest.mark.parametrize(
    "form, name",
    [("ras", "a.nii.gz"), ("lps", "b.nii"), ("permuted", "c.nii.gz"), ("analyze", "d.hdr")],
)
def test_every_stored_form_reads_back_as_the_same_ras_anatomy(tmp_path, form, name):
    # An asymmetric array: a flip or a permutation the reader undid wrongly shows.
    ras = np.random.default_rng(0).random((6, 7, 5)).astype(np.float32)
    integer = form == "analyze"
    synthetic.write_volume(
        tmp_path / name, ras, form, np.int16 if integer else np.float32, 1000.0 if integer else 1.0
    )
    image = nib.load(str(tmp_path / name))
    assert nib.aff2axcodes(image.affine) != ("R", "A", "S") or form == "ras"
    back = _canonical(tmp_path / name)
    assert back.shape == ras.shape
    np.testing.assert_allclose(back / (1000.0 if integer else 1.0), ras, atol=6e-4)


def test_oasis_release_form_header_blank_cdr_and_repeats(tmp_path):
    summary = synthetic.generate(tmp_path, seed=1, layout="oasis1", spec=SMALL)
    text = (tmp_path / "oasis_cross-sectional.csv").read_text().splitlines()
    assert text[0] == "ID,M/F,Hand,Age,Educ,SES,MMSE,CDR,eTIV,nWBV,ASF,Delay"
    rows = _rows(tmp_path / "oasis_cross-sectional.csv")
    first = [r for r in rows if r["ID"].endswith("_MR1")]
    repeats = [r for r in rows if r["ID"].endswith("_MR2")]
    assert len(first) == 12 and len(repeats) == 3
    assert all(r["Delay"] and not r["CDR"] for r in repeats)
    blank = [r for r in first if not r["CDR"]]
    assert len(blank) == 2 and all(int(r["Age"]) < 60 for r in blank)
    assert sorted({r["CDR"] for r in first if r["CDR"]}) == ["0", "0.5", "1", "2"]
    assert summary["sessions"] == 15 and summary["files"] == 15 * 4  # two .hdr/.img pairs each
    hdr = next(tmp_path.glob("disc1/*_MR1/PROCESSED/MPRAGE/T88_111/*_t88_masked_gfc.hdr"))
    image = nib.load(str(hdr))
    assert isinstance(image, nib.AnalyzeImage) and image.shape[-1] == 1 and len(image.shape) == 4
    assert image.get_data_dtype() == np.int16 and nib.aff2axcodes(image.affine)[0] == "L"
    masked, skull = _canonical(hdr), _canonical(str(hdr).replace("_masked_gfc", "_gfc"))
    assert masked.max() < 1300 and (skull > 0).sum() > (masked > 0).sum()  # the skull ring
    listing = oasis1.list_volumes(tmp_path, VolumeSettings())
    assert len(listing.volumes) == 13 and listing.skipped_counts() == {oasis1.SKIP_BLANK: 2}


def test_caps_cohort_has_one_converter_and_nifti_mixed_forms(tmp_path):
    synthetic.generate(tmp_path / "caps", seed=2, layout="caps", spec=SMALL)
    rows = _rows(tmp_path / "caps/labels.tsv", "\t")
    by_subject = {}
    for row in rows:
        by_subject.setdefault(row["participant_id"], []).append(row["diagnosis"])
    changed = {s: d for s, d in by_subject.items() if len(set(d)) > 1}
    assert list(changed.values()) == [["CN", "MCI"]]
    assert sum(len(d) == 2 for d in by_subject.values()) == round(12 * 0.25)
    listing = caps.list_volumes(tmp_path / "caps", VolumeSettings(classes=("NC", "MCI", "AD")))
    assert len(listing.volumes) == len(rows) and listing.skipped == {}
    synthetic.generate(tmp_path / "nifti", seed=2, layout="nifti", spec=SMALL)
    listing = nifti.list_volumes(tmp_path / "nifti", VolumeSettings())
    suffixes = {r.path.name.split(".", 1)[1] for r in listing.volumes}
    assert suffixes == {"nii", "nii.gz", "hdr"} and listing.skipped == {}
    assert any("/" in r.file_name for r in listing.volumes)
    shapes = {_canonical(r.path).shape for r in listing.volumes}
    assert shapes == {SMALL.shape}  # every affine and format gives the RAS shape back


def _ventricle_voxels(volume: np.ndarray) -> int:
    """Dark (CSF) voxels in the central box that holds the ventricles and no cortex."""
    half = np.asarray(volume.shape) // 2
    x, y, z = (
        slice(h - int(f * h), h + int(g * h))
        for h, f, g in zip(half, (0.3, 0.45, 0.1), (0.3, 0.5, 0.4), strict=True)
    )
    box = volume[x, y, z]
    return int((box < 0.35 * np.median(volume[volume > 0])).sum())


def test_ventricles_are_larger_in_ad_than_in_cn(tmp_path):
    spec = synthetic.VolumeCohortSpec(subjects=24, shape=(24, 28, 24), second_session_share=0)
    synthetic.generate(tmp_path, seed=5, layout="caps", spec=spec)
    listing = caps.list_volumes(tmp_path, VolumeSettings())
    sizes = {0: [], 1: []}
    for record in listing.volumes:
        sizes[record.label].append(_ventricle_voxels(_canonical(record.path)))
    cn, ad = np.mean(sizes[0]), np.mean(sizes[1])
    assert ad > 1.3 * cn, (cn, ad)
    # ... and the classes overlap: the smallest AD ventricles are not above every CN's.
    assert min(sizes[1]) < max(sizes[0])
