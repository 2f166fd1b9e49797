"""Audit an ADNI AD_NC folder before trusting any number trained on it.

    python -m alz_jax.audit --manual_dir=DIR [--json=OUT.json]

Prints a table (counts per folder and class, subjects in both folders, label changes, slice
windows and the slice-index shortcut baseline, duplicates, unusable, near-black and stray files)
and writes the full report as JSON. The same audit runs when the TFDS data set is built and is
stored in its metadata.
"""

import json

from absl import app, flags

from alz_jax.host.errors import exit_on_user_error
from tfds_builders.adni import audit, layout

_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder holding AD_NC/ (or train/, test/).")
_JSON = flags.DEFINE_string("json", None, "Where to write the JSON report.")
flags.mark_flag_as_required("manual_dir")


def main(argv: list[str]) -> None:
    """Runs the audit and prints/writes its report."""
    del argv
    with exit_on_user_error():
        report, _ = audit.run(layout.parse(_MANUAL_DIR.value))
    print(audit.format_table(report))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nwrote {_JSON.value}")


if __name__ == "__main__":
    app.run(main)
