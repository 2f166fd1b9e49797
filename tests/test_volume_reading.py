"""Reading a volume: the same anatomy written with different affines, axis orders and formats
(NIfTI, NIfTI .gz, Analyze .hdr/.img, with a trailing singleton dimension) reads as the same RAS
array and cuts into the same slices; each unusable file raises its VolumeError with a one-line
message naming the file; non-1 mm voxels are refused or resampled as volume_voxels says."""

import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from alz_jax.tfds_builders.mri_slices.layouts.base import LayoutError
from alz_jax.tfds_builders.mri_slices.volumes import reading, slicing
from alz_jax.tfds_builders.mri_slices.volumes.settings import AXES, VolumeSettings

SHAPE = (12, 14, 10)  # RAS: x (left to right), y (back to front), z (feet to head)


def anatomy() -> np.ndarray:
    """An asymmetric RAS volume: noise on a blob off the centre, so that every flip or swap of
    axes changes it and the centre of mass is not the middle."""
    rng = np.random.default_rng(26)
    x, y, z = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    blob = 100.0 * np.exp(-((x - 3.0) ** 2 + (y - 9.0) ** 2 + (z - 6.0) ** 2) / 12.0)
    return (blob + rng.uniform(0, 20, SHAPE)).astype(np.float32)


def oriented(volume: np.ndarray, perm: tuple[int, ...], flips: tuple[bool, ...]):
    """(file data, affine) storing a RAS `volume` (world mm = RAS voxel index) with file axis i
    along RAS axis perm[i], reversed where flips[i]."""
    data = volume.transpose(perm)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for i, (ras, flip) in enumerate(zip(perm, flips, strict=True)):
        if flip:
            data = np.flip(data, i)
        affine[ras, i] = -1.0 if flip else 1.0
        affine[ras, 3] = volume.shape[ras] - 1.0 if flip else 0.0
    return np.ascontiguousarray(data), affine


def write_nifti(path: Path, volume, perm=(0, 1, 2), flips=(False,) * 3) -> Path:
    data, affine = oriented(volume, perm, flips)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def write_variants(folder: Path) -> dict[str, Path]:
    """The same anatomy in five files: name -> path (the name is the expected orientation)."""
    volume = anatomy()
    las = np.ascontiguousarray(volume[::-1])  # Analyze: nibabel's affine flips x
    nib.save(nib.AnalyzeImage(las, None), folder / "las.hdr")
    nib.save(nib.AnalyzeImage(las[..., None], None), folder / "las4d.hdr")
    return {
        "RAS": write_nifti(folder / "ras.nii", volume),
        "LPS": write_nifti(folder / "lps.nii.gz", volume, flips=(True, True, False)),
        "PIR": write_nifti(folder / "pir.nii", volume, (1, 2, 0), (True, True, False)),
        "ASL": write_nifti(folder / "asl.nii.gz", volume, (1, 2, 0), (False, False, True)),
        "LAS": folder / "las.hdr",
        "LAS 4D": folder / "las4d.hdr",
    }


def test_same_anatomy_reads_and_cuts_the_same(tmp_path):
    variants = write_variants(tmp_path)
    expected = anatomy()
    volumes = {}
    for name, path in variants.items():
        data, header = reading.read_volume(path)
        assert header.orientation == name.split()[0], name
        assert data.dtype == np.float32 and data.shape == SHAPE, name
        np.testing.assert_array_equal(data, expected, err_msg=name)
        volumes[name] = data
    header = reading.read_header(variants["LAS 4D"])
    assert header.shape == SHAPE and header.format == "analyze"
    assert reading.read_header(variants["PIR"]).shape == (14, 10, 12)
    assert reading.read_header(variants["LPS"]).format == "nifti1"
    for axis in AXES:
        for settings in (
            VolumeSettings(axis=axis, discard=2, step=2, size=16),
            VolumeSettings(axis=axis, window=5, centre="middle", size=16),
            VolumeSettings(axis=axis, window=5, centre="mass", size=16, fit="resize"),
        ):
            cuts = {name: slicing.cut(data, settings) for name, data in volumes.items()}
            first_slices, first_stats = cuts["RAS"]
            assert first_stats["slices"] == len(first_slices) > 0
            for name, (slices, stats) in cuts.items():
                assert [i for i, _ in slices] == [i for i, _ in first_slices], (name, settings)
                for (_, image), (_, reference) in zip(slices, first_slices, strict=True):
                    np.testing.assert_array_equal(image, reference, err_msg=name)
                assert stats == first_stats
    # The mass-centred window follows the blob (RAS x = 3), not the middle (6).
    indices = slicing.slice_indices(volumes["ASL"], VolumeSettings(window=3, centre="mass"))
    assert indices == [3, 4, 5]


def check_error(path: Path, reason: str, *parts: str, read=reading.read_header, **kwargs):
    """The call raises a VolumeError (a LayoutError) with `reason`, in one line naming the
    file and holding each of `parts`; returns it."""
    with pytest.raises(reading.VolumeError) as info:
        read(path, **kwargs)
    message = str(info.value)
    assert isinstance(info.value, LayoutError)
    assert info.value.reason == reason, message
    assert "\n" not in message and str(path) in message, message
    for part in parts:
        assert part in message, message
    return info.value


def test_truncated_and_corrupt_files(tmp_path):
    volume = anatomy()
    whole = write_nifti(tmp_path / "whole.nii", volume).read_bytes()
    (tmp_path / "short.nii").write_bytes(whole[:2000])
    check_error(tmp_path / "short.nii", "truncated", "2000 bytes", "expected 7072")
    check_error(tmp_path / "short.nii", "truncated", read=reading.read_volume)
    packed = write_nifti(tmp_path / "whole.nii.gz", volume).read_bytes()
    (tmp_path / "short.nii.gz").write_bytes(packed[: len(packed) // 2])
    assert reading.read_header(tmp_path / "short.nii.gz").shape == SHAPE  # the header is whole
    check_error(tmp_path / "short.nii.gz", "truncated", "EOFError", read=reading.read_volume)
    # Corrupt in the middle of the stream: the header reads, the data's CRC fails.
    corrupt = bytearray(packed)
    corrupt[len(packed) // 2 : len(packed) // 2 + 4] = b"\x00\xff\x00\xff"
    (tmp_path / "corrupt.nii.gz").write_bytes(bytes(corrupt))
    assert reading.read_header(tmp_path / "corrupt.nii.gz").shape == SHAPE
    check_error(tmp_path / "corrupt.nii.gz", "unreadable", "CRC", read=reading.read_volume)
    (tmp_path / "tail.nii.gz").write_bytes(packed + b"garbage after the gzip stream")
    check_error(tmp_path / "tail.nii.gz", "unreadable", "Not a gzipped", read=reading.read_volume)
    (tmp_path / "noise.nii").write_bytes(np.random.default_rng(0).bytes(600))
    error = check_error(tmp_path / "noise.nii", "unreadable", "expected a NIfTI")
    assert pickle.loads(pickle.dumps(error)).reason == "unreadable"
    check_error(tmp_path / "absent.nii", "missing", "no such file")
    nib.save(nib.AnalyzeImage(volume, None), tmp_path / "pair.hdr")
    (tmp_path / "pair.img").unlink()
    check_error(tmp_path / "pair.hdr", "missing", "pair.img", "expected the .img beside")


def test_wrong_dimensions_and_orientation(tmp_path):
    eye = np.eye(4)
    nib.save(nib.Nifti1Image(np.ones((12, 14), np.float32), eye), tmp_path / "flat.nii")
    check_error(tmp_path / "flat.nii", "2D", "shape 12x14", "expected a 3D volume")
    nib.save(nib.Nifti1Image(np.ones((12, 14, 1), np.float32), eye), tmp_path / "one.nii")
    check_error(tmp_path / "one.nii", "2D", "shape 12x14x1")
    nib.save(nib.Nifti1Image(np.ones((6, 6, 4, 3), np.float32), eye), tmp_path / "four.nii")
    check_error(tmp_path / "four.nii", "4D", "4D with 3 volumes", "expected one 3D volume")
    nib.save(nib.Nifti1Image(anatomy(), None), tmp_path / "unknown.nii")
    header = nib.load(tmp_path / "unknown.nii").header
    assert header["qform_code"] == 0 and header["sform_code"] == 0
    check_error(tmp_path / "unknown.nii", "no orientation", "qform_code and sform_code")
    image = nib.Nifti1Image(anatomy(), None)
    image.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)  # y collapsed: singular
    image.header.set_qform(None, code=0)
    nib.save(image, tmp_path / "singular.nii")
    check_error(tmp_path / "singular.nii", "no orientation", "singular")


def test_voxel_sizes_refused_or_resampled(tmp_path):
    cube = np.random.default_rng(1).uniform(1, 2, (10, 10, 10)).astype(np.float32)
    nib.save(nib.Nifti1Image(cube, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "big.nii")
    error = check_error(
        tmp_path / "big.nii",
        "voxel size",
        "2x2x2 mm",
        "--config.data.volume_voxels=resample",
        read=reading.read_volume,
    )
    assert isinstance(error, reading.VoxelSizeError)
    copy = pickle.loads(pickle.dumps(error))  # as it comes back from a worker process
    assert (type(copy), str(copy), copy.reason) == (type(error), str(error), "voxel size")
    assert reading.read_header(tmp_path / "big.nii").zooms == (2.0, 2.0, 2.0)
    data, _ = reading.read_volume(tmp_path / "big.nii", voxels="resample")
    assert data.dtype == np.float32
    assert all(abs(n - 20) <= 1 for n in data.shape), data.shape
    # Voxels within the tolerance of 1 mm are read as they are.
    nib.save(nib.Nifti1Image(cube, np.diag([1.01, 0.99, 1.0, 1.0])), tmp_path / "near.nii")
    assert reading.read_volume(tmp_path / "near.nii")[0].shape == (10, 10, 10)
    # A PIR file with 2 mm along its first axis (posterior-anterior): RAS y is resampled.
    data, affine = oriented(np.ones((8, 6, 4), np.float32), (1, 2, 0), (True, True, False))
    affine[:3, 0] *= 2.0
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "pir.nii")
    assert reading.read_header(tmp_path / "pir.nii").zooms == (2.0, 1.0, 1.0)
    assert reading.read_volume(tmp_path / "pir.nii", "resample")[0].shape == (8, 12, 4)
