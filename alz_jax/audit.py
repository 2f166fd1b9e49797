"""Command: audit a data folder (ADNI AD_NC or a dementia-stage collection) before trusting any
number trained on it.

    python -m alz_jax.audit --manual_dir=DIR [--layout=auto] [--label_names=A,B] [--json=OUT.json]

Prints a table (layout and classes; counts per folder and class, subjects in both folders, label
changes, slice windows and the slice-index shortcut baseline, test images with a near-identical
image in train, duplicates, unusable, near-black and stray files) and writes the full report as
JSON, every near-identical pair included. The same audit runs when the TFDS data set is built
and is stored in its metadata.
"""

import json

from absl import flags

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


def main(argv: list[str]) -> None:
    """Runs the audit and prints/writes its report."""
    del argv
    try:
        parsed = slices.parse_layout(
            _MANUAL_DIR.value, _LAYOUT.value, _LABEL_NAMES.value, setting="--manual_dir"
        )
    except slices.DataFolderError:
        raise  # one line saying what to give instead: no hint
    except slices.LayoutError as e:
        hint = slices.data_error_hint(_MANUAL_DIR.value, _LAYOUT.value)
        raise UserError(f"{e}\n{hint}") from e
    report, _ = slices.audit_folder(parsed)
    # The same fingerprint names the data set built from this folder (and its reports).
    report["source_fingerprint"] = slices.folder_fingerprint(
        slices.folder_listing(_MANUAL_DIR.value)
    )
    print(slices.format_audit(report))
    print(f"folder fingerprint: {report['source_fingerprint']}")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nwrote {_JSON.value}")


if __name__ == "__main__":
    command.run(main, jax_runtime=False)
