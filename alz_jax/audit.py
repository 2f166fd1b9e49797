"""Command: audit a data folder (ADNI AD_NC or a dementia-stage collection) before trusting any
number trained on it.

    python -m alz_jax.audit --manual_dir=DIR [--layout=auto] [--label_names=A,B] [--json=OUT.json]
    python -m alz_jax.audit --manual_dir=CAPS_OR_OASIS1_OR_NIFTI_DIR [--labels_tsv=FILE] \
        [--oasis_labels=stages|binary] [--workers=0]

Prints a table (layout and classes; counts per folder and class, subjects in both folders, label
changes, slice windows and the slice-index shortcut baseline, test images with a near-identical
image in train, duplicates, unusable, near-black and stray files) and writes the full report as
JSON, every near-identical pair included. The same audit runs when the TFDS data set is built
and is stored in its metadata. For a folder of 3D volumes (CAPS, the OASIS-1 release, NIfTI with
a table) it reads every volume and reports subjects, sessions and labels, voxel sizes, shapes and
orientations found, unreadable files, subjects whose label changes between sessions, and what
the label table left out.
"""

import dataclasses
import json

from absl import flags

from alz_jax.data import data_spec
from alz_jax.host import command
from alz_jax.host.errors import UserError
from alz_jax.tfds_builders.mri_slices import api as slices

_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir",
    None,
    "The data folder (AD_NC/, class folders, OASIS-1 export or parquet).",
    required=True,
)
_LAYOUT = flags.DEFINE_enum("layout", "auto", slices.layout_names(), "The folder's layout.")
_LABEL_NAMES = flags.DEFINE_list(
    "label_names", [], "Names of integer parquet labels, in order (if the files lack them)."
)
_JSON = flags.DEFINE_string("json", None, "Where to write the JSON report.")
# A volume layout's labelling (as config.data's fields of the same names; docs/volumes.md).
_LABELS_TSV = flags.DEFINE_string("labels_tsv", "", "A volume layout's label table, by path.")
_VOLUME_CLASSES = flags.DEFINE_string(
    "volume_classes", "", "caps, nifti: the classes kept, in order (default caps: NC,AD)."
)
_OASIS_LABELS = flags.DEFINE_enum(
    "oasis_labels", "stages", ["stages", "binary"], "OASIS-1: CDR as four stages, or NC vs AD."
)
_OASIS_AD_CDR = flags.DEFINE_string("oasis_ad_cdr", "1,2", "OASIS-1 binary: the CDRs that are AD.")
_OASIS_BLANK_CDR = flags.DEFINE_enum(
    "oasis_blank_cdr", "skip", ["skip", "control"], "OASIS-1: rows without a CDR."
)
_OASIS_IMAGE = flags.DEFINE_enum(
    "oasis_image", "masked", ["masked", "unmasked"], "OASIS-1: the T88 image read."
)
_VOLUME_VOXELS = flags.DEFINE_enum(
    "volume_voxels", "refuse", ["refuse", "resample"],
    "Voxels that are not 1 mm: reported as a problem, or read resampled to 1 mm.",
)  # fmt: skip
_WORKERS = flags.DEFINE_integer("workers", 0, "Processes reading volumes (0: the cores, up to 8).")


def _volume_settings() -> slices.VolumeSettings:
    """The labelling of a volume layout, from the flags (the rest: the defaults)."""
    spec = data_spec.DataSpec(
        labels_tsv=_LABELS_TSV.value, volume_classes=_VOLUME_CLASSES.value,
        oasis_labels=_OASIS_LABELS.value, oasis_ad_cdr=_OASIS_AD_CDR.value,
        oasis_blank_cdr=_OASIS_BLANK_CDR.value, oasis_image=_OASIS_IMAGE.value,
        volume_voxels=_VOLUME_VOXELS.value,
    )  # fmt: skip
    return spec.volume_settings


def _audit(settings: slices.VolumeSettings) -> tuple[dict, str]:
    """The audit's report and its table: of the images, or for a volume layout of the volumes;
    with the fingerprint that names the data set a build of the folder makes (for volumes, with
    the default slicing and these flags' labelling)."""
    kind, _ = slices.describe_layout(
        _MANUAL_DIR.value, _LAYOUT.value, _LABEL_NAMES.value, setting="--manual_dir",
        volume_settings=settings,
    )  # fmt: skip
    listing = slices.folder_listing(_MANUAL_DIR.value)
    if slices.is_volume_layout(kind):
        volumes = slices.list_volumes(_MANUAL_DIR.value, kind, settings, setting="--manual_dir")
        report = slices.audit_volumes(volumes, settings, _WORKERS.value)
        report["settings"] = dataclasses.asdict(settings)
        listing = slices.volume_folder_listing(
            listing, volumes.label_table, settings.as_dict(), [str(v.path) for v in volumes.volumes]
        )
        report["source_fingerprint"] = slices.folder_fingerprint(listing)
        return report, slices.format_volume_audit(report)
    parsed = slices.parse_layout(
        _MANUAL_DIR.value, _LAYOUT.value, _LABEL_NAMES.value, setting="--manual_dir"
    )
    report, _ = slices.audit_folder(parsed)
    report["source_fingerprint"] = slices.folder_fingerprint(listing)
    return report, slices.format_audit(report)


def main(argv: list[str]) -> None:
    """Runs the audit and prints/writes its report."""
    del argv
    try:
        report, table = _audit(_volume_settings())
    except slices.DataFolderError:
        raise  # one line saying what to give instead: no hint
    except slices.LayoutError as e:
        hint = slices.data_error_hint(_MANUAL_DIR.value, _LAYOUT.value)
        raise UserError(f"{e}\n{hint}") from e
    # The same fingerprint names the data set built from this folder (and its reports).
    print(table)
    print(f"folder fingerprint: {report['source_fingerprint']}")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nwrote {_JSON.value}")


if __name__ == "__main__":
    command.run(main, jax_runtime=False)
