"""What a user chooses when slices are cut from volumes: the axis, the slice range, the step,
the per-volume intensity normalisation, the stored slice size, what to do with voxels that are
not 1 mm, and how each volume layout's table becomes labels.

The choice is part of the data set's name (a different choice is a different build) and is
recorded in its metadata (`as_dict`). `problems` lists what is wrong with a choice, as the
config checks show it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

AXES = ("sagittal", "coronal", "axial")  # RAS axes 0 (left-right), 1 (back-front), 2 (feet-head)
CENTRES = ("middle", "mass")  # the window's centre: the volume's middle or the brain's
FITS = ("pad", "resize")  # keep the aspect (scale the longer side, pad) or stretch to a square
VOXEL_POLICIES = ("refuse", "resample")
OASIS_IMAGES = ("masked", "unmasked")  # ..._t88_masked_gfc or ..._t88_gfc
OASIS_LABELS = ("stages", "binary")  # CDR 0/0.5/1/2 as four stages, or NC vs AD
OASIS_BLANK_CDR = ("skip", "control")  # rows without a CDR (young controls): left out, or CDR 0
# Voxel sizes within this of 1 mm count as 1 mm (headers store rounded floats).
VOXEL_TOLERANCE_MM = 0.02


@dataclasses.dataclass(frozen=True)
class VolumeSettings:
    """How slices are cut from volumes and how volumes are labelled (config.data.volume_* and
    the layouts' own fields; docs/volumes.md says what each does)."""

    axis: str = "sagittal"
    # ClinicaDL's slice range: drop this many slices at each end of the axis...
    discard: int = 20
    # ... or, when > 0, keep a window of this many slices around `centre` instead.
    window: int = 0
    centre: str = "middle"
    step: int = 1  # every step-th slice of the range
    # Per-volume percentile clipping (low, high), then scaling into 0..255.
    clip: tuple[float, float] = (0.5, 99.5)
    size: int = 224  # stored slices are size x size
    fit: str = "pad"
    voxels: str = "refuse"
    # The classes kept, in label order, for a layout labelled by diagnosis (caps, nifti);
    # empty: the layout's default (caps: NC,AD; nifti: every label found, in name order).
    classes: tuple[str, ...] = ()
    labels_table: str = ""  # a label table given by path instead of the layout's own
    oasis_image: str = "masked"
    oasis_labels: str = "stages"
    oasis_ad_cdr: tuple[float, ...] = (1.0, 2.0)  # CDR values that are AD in the binary mapping
    oasis_blank_cdr: str = "skip"

    def as_dict(self) -> dict:
        """The settings as JSON values (the data set's metadata, the build's name)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def describe(self) -> str:
        """The slicing in words, e.g. 'sagittal, 20 dropped at each end, every slice'."""
        if self.window > 0:
            where = "the brain's centre of mass" if self.centre == "mass" else "the middle"
            span = f"{self.window} around {where}"
        else:
            span = f"{self.discard} dropped at each end"
        every = "every slice" if self.step == 1 else f"1 slice in {self.step}"
        return f"{self.axis}, {span}, {every}"

    def digest(self) -> str:
        """12 hex digits naming these settings."""
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def problems(self) -> list[tuple[str, object, bool, str]]:
        """(field, value, ok, expected) for each field, as `host.errors.check_fields` takes
        them (field names as config.data spells them)."""
        low, high = self.clip if len(self.clip) == 2 else (-1.0, -1.0)
        return [
            ("volume_axis", self.axis, self.axis in AXES, "|".join(AXES)),
            ("volume_discard", self.discard, self.discard >= 0, ">= 0"),
            ("volume_window", self.window, self.window >= 0, ">= 0 (0: use volume_discard)"),
            ("volume_centre", self.centre, self.centre in CENTRES, "|".join(CENTRES)),
            ("volume_step", self.step, self.step >= 1, ">= 1"),
            ("volume_clip", self.clip, len(self.clip) == 2 and 0.0 <= low < high <= 100.0,
             "two percentiles, 0 <= low < high <= 100"),
            ("volume_size", self.size, 16 <= self.size <= 1024, "in [16, 1024] pixels"),
            ("volume_fit", self.fit, self.fit in FITS, "|".join(FITS)),
            ("volume_voxels", self.voxels, self.voxels in VOXEL_POLICIES,
             "|".join(VOXEL_POLICIES)),
            ("oasis_image", self.oasis_image, self.oasis_image in OASIS_IMAGES,
             "|".join(OASIS_IMAGES)),
            ("oasis_labels", self.oasis_labels, self.oasis_labels in OASIS_LABELS,
             "|".join(OASIS_LABELS)),
            ("oasis_ad_cdr", self.oasis_ad_cdr,
             bool(self.oasis_ad_cdr) and set(self.oasis_ad_cdr) <= {0.5, 1.0, 2.0, 3.0},
             "CDR values among 0.5,1,2,3 (e.g. 1,2)"),
            ("oasis_blank_cdr", self.oasis_blank_cdr, self.oasis_blank_cdr in OASIS_BLANK_CDR,
             "|".join(OASIS_BLANK_CDR)),
        ]  # fmt: skip
