"""The data section of a run's spec: which data set, where TFDS keeps its build, and the split
protocol. Apart from `dataset.py` (which imports TFDS) so that the run spec, the train step and
the benchmarks load where TFDS and TensorFlow are not installed; `dataset.DataSpec` is this one.
"""

from __future__ import annotations

import dataclasses

from alz_jax.host.errors import check_fields
from alz_jax.tfds_builders.mri_slices import api as slices

# What data.synthetic_layout accepts; data.layout accepts what the layout registry holds when
# the spec is made (slices.layout_names()), so that a registered plug-in is a valid layout.
SYNTHETIC_LAYOUTS = slices.SYNTHETIC_LAYOUTS


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which data set a run reads and how it is split (config.data, less the input pipeline's
    fields): the user's folder or a synthetic stand-in, where TFDS keeps the build, and the
    protocol."""

    data_dir: str = "~/tensorflow_datasets"
    manual_dir: str | None = None
    synthetic_seed: int | None = None
    synthetic_train_subjects: int = 150
    synthetic_test_subjects: int = 60
    validation_fraction: float = 0.1
    # A calibration split (for conformal calibration): this share of each class's train
    # subjects, after validation's, carved out at load time; 0: none (calibrate on validation).
    calibration_fraction: float = 0.0
    split_seed: int = 0
    protocol: str = "official"
    resplit_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    num_folds: int = 5
    fold: int = 0
    slice_range: str = ""
    # Scans whose metadata label contradicts their class folder: the share (of scans with a
    # metadata label) above which the data set is refused; or trust the folders whatever it is.
    max_label_conflicts: float = 0.0
    trust_folder_labels: bool = False
    # The folder's layout (detected with 'auto'), names of integer parquet labels in order
    # ("A,B,C"), and the layout of the synthetic stand-in: 'adni' (AD vs NC) or a four-stage
    # collection ('folders', 'oasis', 'parquet') of synthetic_subjects subjects.
    layout: str = "auto"
    label_names: str = ""
    synthetic_layout: str = "adni"
    synthetic_subjects: int = 160
    # The four-stage stand-in's difficulty: 'standard', or 'hard' (closer stages, more
    # between-subject anatomy: what the small-data recipes are tuned on).
    synthetic_difficulty: str = "standard"
    # Where a layout has no subject IDs: let each group of near-identical images (a brain's
    # adjacent slices, found by the build's near-duplicate check) stand in for a subject, so
    # that validation, `resplit` and `kfold` keep a brain's slices together.
    group_near_duplicates: bool = False
    # Gates on the class set (checked before training): accept a class without images in an
    # official folder or built split, and class names a letter or two from a known stage or
    # label or from each other (probable typos), with a warning instead of refusing.
    allow_missing_classes: bool = False
    allow_similar_class_names: bool = False
    # Volume layouts (caps, oasis1, nifti; docs/volumes.md): the label table given by path,
    # how slices are cut (the RAS axis; ClinicaDL's "discard N at each end" or a window of K
    # slices around the middle or the brain's centre of mass; the step), the per-volume
    # percentile clipping, the stored slice size and fit, voxels that are not 1 mm (refused or
    # resampled), the classes kept (caps, nifti) and OASIS-1's image and CDR mapping.
    labels_tsv: str = ""
    volume_axis: str = "sagittal"
    volume_discard: int = 20
    volume_window: int = 0
    volume_centre: str = "middle"
    volume_step: int = 1
    volume_clip: tuple[float, float] = (0.5, 99.5)
    volume_size: int = 224
    volume_fit: str = "pad"
    volume_voxels: str = "refuse"
    volume_classes: str = ""
    oasis_image: str = "masked"
    oasis_labels: str = "stages"
    oasis_ad_cdr: str = "1,2"
    oasis_blank_cdr: str = "skip"
    volume_workers: int = 0  # processes that slice volumes (0: the cores, up to 8)

    @property
    def label_name_list(self) -> tuple[str, ...]:
        """`label_names` split at commas."""
        return tuple(n.strip() for n in self.label_names.split(",") if n.strip())

    @property
    def volume_settings(self) -> slices.VolumeSettings:
        """How a volume layout's volumes are sliced and labelled (data.volume_*, labels_tsv,
        oasis_*)."""
        return slices.VolumeSettings(
            axis=self.volume_axis, discard=self.volume_discard, window=self.volume_window,
            centre=self.volume_centre, step=self.volume_step,
            clip=tuple(float(x) for x in self.volume_clip), size=self.volume_size,
            fit=self.volume_fit, voxels=self.volume_voxels,
            classes=tuple(c.strip() for c in self.volume_classes.split(",") if c.strip()),
            labels_table=self.labels_tsv, oasis_image=self.oasis_image,
            oasis_labels=self.oasis_labels, oasis_ad_cdr=_cdr_values(self.oasis_ad_cdr),
            oasis_blank_cdr=self.oasis_blank_cdr,
        )  # fmt: skip

    def __post_init__(self):
        f = self.validation_fraction
        check_fields("data", [
            ("validation_fraction", f, 0.0 < f < 1.0,
             "in (0, 1): validation picks the best checkpoint"),
            ("calibration_fraction", self.calibration_fraction,
             0.0 <= self.calibration_fraction < 1.0,
             "in [0, 1): the share of train's subjects held out for calibration (0: none)"),
            ("max_label_conflicts", self.max_label_conflicts,
             0.0 <= self.max_label_conflicts <= 1.0, "a share in [0, 1]"),
            ("split_seed", self.split_seed, self.split_seed >= 0, ">= 0"),
            ("allow_missing_classes", self.allow_missing_classes,
             isinstance(self.allow_missing_classes, bool), "true or false"),
            ("allow_similar_class_names", self.allow_similar_class_names,
             isinstance(self.allow_similar_class_names, bool), "true or false"),
            ("synthetic_seed", self.synthetic_seed,
             self.synthetic_seed is None or self.synthetic_seed >= 0, ">= 0 (or unset)"),
            ("synthetic_train_subjects", self.synthetic_train_subjects,
             self.synthetic_train_subjects >= 2, ">= 2 (validation takes some)"),
            ("synthetic_test_subjects", self.synthetic_test_subjects,
             self.synthetic_test_subjects >= 1, ">= 1"),
            ("resplit_fractions", self.resplit_fractions,
             len(self.resplit_fractions) == 3 and all(x >= 0 for x in self.resplit_fractions)
             and sum(self.resplit_fractions) > 0,
             "three shares (train, validation, test), each >= 0, with a positive sum"),
            ("num_folds", self.num_folds, self.num_folds >= 2, ">= 2"),
            ("fold", self.fold, 0 <= self.fold < max(self.num_folds, 1),
             f"in [0, data.num_folds = {self.num_folds})"),
            ("protocol", self.protocol, self.protocol in slices.PROTOCOLS,
             "|".join(slices.PROTOCOLS)),
            ("layout", self.layout, self.layout in slices.layout_names(),
             "|".join(slices.layout_names())),
            ("synthetic_layout", self.synthetic_layout,
             self.synthetic_layout in SYNTHETIC_LAYOUTS, "|".join(SYNTHETIC_LAYOUTS)),
            ("synthetic_difficulty", self.synthetic_difficulty,
             self.synthetic_difficulty in slices.SYNTHETIC_DIFFICULTIES,
             "|".join(slices.SYNTHETIC_DIFFICULTIES)),
            ("synthetic_subjects", self.synthetic_subjects, self.synthetic_subjects >= 8,
             ">= 8 (at least one subject per stage; ~50 put every stage in every split)"),
            ("volume_workers", self.volume_workers, self.volume_workers >= 0,
             ">= 0 (0: the cores, up to 8)"),
        ])  # fmt: skip
        check_fields("data", self.volume_settings.problems())


def _cdr_values(text: str) -> tuple[float, ...]:
    """data.oasis_ad_cdr's CDR values ("1,2" -> (1.0, 2.0)); () where one is not a number (the
    settings' check then names the field)."""
    try:
        return tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        return ()


def from_config(data_config) -> DataSpec:
    """A DataSpec from a DataSpec or a `config.data` section (its other fields ignored; fields
    it lacks take their defaults)."""
    if isinstance(data_config, DataSpec):
        return data_config
    names = {f.name for f in dataclasses.fields(DataSpec)}
    values = {k: v for k, v in data_config.items() if k in names}
    for field in ("resplit_fractions", "volume_clip"):
        if field in values:
            values[field] = tuple(values[field])
    return DataSpec(**values)


def are_stages(class_names) -> bool:
    """Whether every class is a known dementia stage (the builder maps their spellings to one
    ordered list), so that the classes form an ordinal scale."""
    return bool(class_names) and set(class_names) <= set(slices.STAGES)
