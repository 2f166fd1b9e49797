"""One volume file read with nibabel and checked: its header (shape, voxel sizes, orientation,
format), then its data as float32 reoriented to RAS, so that an axis index means the same
anatomical direction for every file whatever its affine or format says.

A file that cannot be used raises VolumeError (a LayoutError) with a one-line message naming the
file and what was expected and found, and a short `reason` the caller counts skips by. Nothing is
cached: one volume is in memory at a time.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import scipy.ndimage
from nibabel import orientations

from ..layouts.base import LayoutError
from .settings import VOXEL_TOLERANCE_MM

# Files read as a stream whose stored size says nothing of the data's (no cheap truncation check).
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst")
# |det| of the affine's 3x3 part below this is singular: no orientation can be read from it.
SINGULAR_DET = 1e-6


class VolumeError(LayoutError):
    """A volume that cannot be used: a one-line message naming the file, what was expected and
    what was found; `reason` is a short name for counting skips ("unreadable", "truncated",
    "2D", "4D", "no orientation", "voxel size", "missing", "blank volume", "slice range")."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever nibabel's text held
        self.reason = reason

    def __reduce__(self):
        # Pickled with its reason, so that it crosses from a worker process intact.
        return (type(self), (str(self), self.reason))


class VolumeIOError(LayoutError):
    """The system failed to read a volume (an I/O error, no permission): not the file's content,
    so it is never skipped as unusable; the build stops, naming the file, and a rerun keeps the
    volumes already sliced."""


def _io_error(path: Path, error: OSError) -> VolumeIOError | None:
    """A VolumeIOError for an error of the system (one with an errno), None for the content's
    (nibabel's short reads and gzip's CRC failures carry no errno)."""
    if error.errno is None:
        return None
    return VolumeIOError(
        f"{path}: cannot be read ({error.strerror or error}); nothing was skipped: check the "
        "disk and the file's permissions, then run again (volumes already sliced are kept)."
    )


class VoxelSizeError(VolumeError):
    """Voxels that are not 1 mm under volume_voxels=refuse: a run refuses these (the other
    VolumeErrors are skipped and named)."""

    def __init__(self, message: str, reason: str = "voxel size") -> None:
        super().__init__(message, reason)


@dataclasses.dataclass(frozen=True)
class VolumeHeader:
    """What a volume file's header says, as stored (before reorientation)."""

    shape: tuple[int, int, int]  # trailing singleton dimensions dropped (OASIS-1: 176x208x176x1)
    zooms: tuple[float, float, float]  # voxel sizes in mm along the stored axes
    orientation: str  # the stored axes' directions, nibabel's axis codes, e.g. "LAS"
    dtype: str  # the stored data type, e.g. "int16"
    format: str  # "nifti1", "nifti2" or "analyze"


def _format_name(image: nib.spatialimages.SpatialImage) -> str:
    """The file format: nifti2 before nifti1 (a NIfTI-2 class derives from NIfTI-1's)."""
    if isinstance(image, (nib.Nifti2Image, nib.Nifti2Pair)):
        return "nifti2"
    if isinstance(image, (nib.Nifti1Image, nib.Nifti1Pair)):
        return "nifti1"
    return "analyze"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def _load(path: Path) -> nib.spatialimages.SpatialImage:
    """nibabel's image (header read, data not yet); VolumeError if it is not a volume file."""
    if not os.path.exists(path):
        raise VolumeError(f"{path}: no such file; expected a volume file there", "missing")
    try:
        image = nib.load(os.fspath(path))
    except OSError as e:
        if (io_error := _io_error(path, e)) is not None:
            raise io_error from e
        raise VolumeError(
            f"{path}: unreadable ({type(e).__name__}: {e}); expected a NIfTI "
            "(.nii, .nii.gz) or Analyze (.hdr/.img) volume",
            "unreadable",
        ) from e
    # Any failure to parse a user's bytes (nibabel raises many kinds) is an unreadable file.
    except Exception as e:
        raise VolumeError(
            f"{path}: unreadable ({type(e).__name__}: {e}); expected a NIfTI (.nii, .nii.gz) or "
            "Analyze (.hdr/.img) volume",
            "unreadable",
        ) from e
    if not isinstance(image, nib.analyze.AnalyzeImage):  # MGH, MINC, ...: not a layout's format
        raise VolumeError(
            f"{path}: a {type(image).__name__}; expected a NIfTI (.nii, .nii.gz) or Analyze "
            "(.hdr/.img) volume",
            "unreadable",
        )
    return image


def _volume_shape(path: Path, stored: tuple[int, ...]) -> tuple[int, int, int]:
    """The stored shape without trailing singleton dimensions; VolumeError unless it is one 3D
    volume (a singleton among the first three axes is a 2D image too)."""
    shape = list(stored)
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    if len(shape) > 3:
        count = int(np.prod(shape[3:]))
        raise VolumeError(
            f"{path}: {len(shape)}D with {count} volumes (shape {_shape_text(stored)}); "
            "expected one 3D volume",
            "4D",
        )
    if len(shape) < 3 or min(shape) <= 1:
        raise VolumeError(
            f"{path}: a 2D image (shape {_shape_text(stored)}); expected a 3D volume", "2D"
        )
    return (shape[0], shape[1], shape[2])


def _orientation(path: Path, image: nib.spatialimages.SpatialImage) -> str:
    """The axis codes of the image's affine; VolumeError where the affine is unknown (NIfTI with
    qform_code and sform_code both 0), not finite or singular."""
    header = image.header
    # NIfTI-2's header derives from NIfTI-1's; an Analyze header has no such codes.
    nifti = isinstance(header, nib.Nifti1Header)
    if nifti and int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        raise VolumeError(
            f"{path}: orientation unknown (qform_code and sform_code are both 0); expected "
            "a NIfTI header with a qform or sform (set one, e.g. with fslorient)",
            "no orientation",
        )
    affine = np.asarray(image.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < SINGULAR_DET:
        raise VolumeError(
            f"{path}: the affine is not finite or is singular ({affine[:3].tolist()}); expected "
            "an affine that maps voxels to millimetres",
            "no orientation",
        )
    codes = orientations.aff2axcodes(affine)
    if None in codes:
        raise VolumeError(
            f"{path}: the affine has no clear direction for some axes ({codes}); expected an "
            "affine that maps voxels to millimetres",
            "no orientation",
        )
    return "".join(codes)


def _check_size(path: Path, image: nib.spatialimages.SpatialImage) -> None:
    """VolumeError "truncated" where an uncompressed data file is shorter than its header says
    (compressed files are checked when their data is read)."""
    data_file = image.file_map["image"].filename
    if data_file is None or data_file.lower().endswith(COMPRESSED_SUFFIXES):
        return
    if not os.path.exists(data_file):
        raise VolumeError(
            f"{path}: its data file {data_file} is missing; expected the .img beside the .hdr",
            "missing",
        )
    stored = image.header.get_data_shape()
    expected = image.dataobj.offset + int(np.prod(stored)) * image.get_data_dtype().itemsize
    found = os.path.getsize(data_file)
    if found < expected:
        raise VolumeError(
            f"{path}: truncated: {found} bytes in {data_file}; expected {expected} for "
            f"{_shape_text(stored)} {image.get_data_dtype()} voxels",
            "truncated",
        )


def _header(path: Path, image: nib.spatialimages.SpatialImage) -> VolumeHeader:
    """The checked header of a loaded image."""
    shape = _volume_shape(path, tuple(int(n) for n in image.header.get_data_shape()))
    orientation = _orientation(path, image)
    _check_size(path, image)
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return VolumeHeader(
        shape=shape,
        zooms=(zooms[0], zooms[1], zooms[2]),
        orientation=orientation,
        dtype=str(image.get_data_dtype()),
        format=_format_name(image),
    )


def read_header(path: Path | str) -> VolumeHeader:
    """A volume's header, checked, without reading its data: VolumeError for a file that is not a
    readable volume, an Analyze .hdr without its .img, a 2D image, a 4D file of several volumes,
    an unknown, non-finite or singular affine, or an uncompressed file shorter than its data.

    Analyze 7.5 headers have no orientation field: their affine is nibabel's (x flipped, i.e.
    LAS, voxel sizes from the header, the origin where SPM stored one), which is how the OASIS-1
    release's images are meant to be read.
    """
    path = Path(path)
    return _header(path, _load(path))


def _read_data(path: Path, image: nib.spatialimages.SpatialImage) -> np.ndarray:
    """The stored data as float32, scaled as the header says; VolumeError where it cannot be
    read (or is not numbers, e.g. RGB voxels).

    A single gzipped NIfTI file is decompressed whole, once, so that gzip checks its CRC: read
    through nibabel, a stream corrupted in the middle can decode into wrong voxels unnoticed.
    """
    try:
        if _is_gzipped_nifti(image):
            image = type(image).from_bytes(gzip.decompress(Path(path).read_bytes()))
        return image.get_fdata(caching="unchanged", dtype=np.float32)
    except OSError as e:
        if (io_error := _io_error(path, e)) is not None:
            raise io_error from e
        raise _data_error(path, e) from e
    except Exception as e:
        raise _data_error(path, e) from e


def _data_error(path: Path, error: Exception) -> VolumeError:
    """The VolumeError of data that cannot be decoded: truncated where the stream ends early
    (EOFError, nibabel's "Expected N bytes"), unreadable otherwise (corrupt)."""
    truncated = isinstance(error, EOFError) or "Expected" in str(error)
    return VolumeError(
        f"{path}: {'truncated' if truncated else 'unreadable'} data ({type(error).__name__}: "
        f"{error}); expected the complete volume its header describes",
        "truncated" if truncated else "unreadable",
    )


def _is_gzipped_nifti(image: nib.spatialimages.SpatialImage) -> bool:
    """Whether the image is one gzipped file (.nii.gz), which nibabel can read from bytes."""
    data_file = image.file_map["image"].filename or ""
    single = isinstance(image, (nib.Nifti1Image, nib.Nifti2Image))
    return single and data_file.lower().endswith(".gz")


def read_volume(path: Path | str, voxels: str = "refuse") -> tuple[np.ndarray, VolumeHeader]:
    """The volume as float32 in RAS order (axis 0 towards the patient's right, 1 anterior, 2
    superior), non-finite values set to 0, with its header as stored.

    Voxels must be 1 mm (within settings.VOXEL_TOLERANCE_MM) on every axis: otherwise
    voxels="refuse" raises VoxelSizeError, voxels="resample" resamples the reoriented volume to
    1 mm isotropic (linear interpolation). Other problems raise VolumeError (`read_header`), and
    truncated or corrupt data too.
    """
    path = Path(path)
    image = _load(path)
    header = _header(path, image)
    data = _read_data(path, image).reshape(header.shape)
    ornt = orientations.io_orientation(image.affine)
    data = orientations.apply_orientation(data, ornt)
    zooms = [0.0] * 3
    for axis, (target, _flip) in enumerate(ornt):
        zooms[int(target)] = abs(header.zooms[axis])
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    if all(abs(z - 1.0) <= VOXEL_TOLERANCE_MM for z in zooms):
        return np.ascontiguousarray(data), header
    sizes = "x".join(f"{z:g}" for z in header.zooms)
    if voxels != "resample":
        raise VoxelSizeError(
            f"{path}: voxels of {sizes} mm; expected 1 mm on every axis "
            f"(--config.data.volume_voxels=resample resamples to 1 mm)"
        )
    resampled = scipy.ndimage.zoom(data, zooms, order=1)
    return np.ascontiguousarray(resampled, dtype=np.float32), header
