"""Command: audit an ADNI AD_NC folder before trusting any number trained on it.

    python -m alz_jax.audit --manual_dir=DIR [--json=OUT.json]

Prints a table (counts per folder and class, subjects in both folders, label changes, slice
windows and the slice-index shortcut baseline, duplicates, unusable, near-black and stray files)
and writes the full report as JSON. The same audit runs when the TFDS data set is built and is
stored in its metadata.
"""

import json

from absl import flags

from alz_jax.host import command
from tfds_builders.adni import audit, layout, source

_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Folder holding AD_NC/ (or train/, test/).", required=True
)
_JSON = flags.DEFINE_string("json", None, "Where to write the JSON report.")


def main(argv: list[str]) -> None:
    """Runs the audit and prints/writes its report."""
    del argv
    report, _ = audit.run(layout.parse(_MANUAL_DIR.value))
    # The same fingerprint names the data set built from this folder (and its reports).
    report["source_fingerprint"] = source.fingerprint(source.listing(_MANUAL_DIR.value))
    print(audit.format_table(report))
    print(f"folder fingerprint: {report['source_fingerprint']}")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nwrote {_JSON.value}")


if __name__ == "__main__":
    command.run(main, jax_runtime=False)
