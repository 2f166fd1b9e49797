"""Command: check or publish the volume demo's figures (a CAPS-trained run on its test split and
on a synthetic OASIS-1 release, skull-stripped and not).

    make demo-volumes        # trains, evaluates on both cohorts, then checks (--expect)
    python -m alz_jax.volumes_figures --expect=docs/demo/volumes/summary.md
    python -m alz_jax.volumes_figures --update_docs   # `make demo-volumes-figures`

Reads report_external_oasis1_masked.json and report_external_oasis1_unmasked.json in --workdir.
--expect exits with status 1 and a diff unless the table equals the published file;
--update_docs writes it to docs/demo/volumes/summary.md and into docs/volumes.md's block
(alz_jax/evaluation/volumes_docs.py).
"""

import sys
from pathlib import Path

from absl import flags

from alz_jax.evaluation import volumes_docs
from alz_jax.host import command

_WORKDIR = flags.DEFINE_string("workdir", ".demo/volumes", "The volume demo's run.")
_EXPECT = flags.DEFINE_string("expect", None, "Fail unless the table equals this file's.")
_UPDATE_DOCS = flags.DEFINE_bool(
    "update_docs", False, "Write docs/demo/volumes/summary.md and docs/volumes.md's block."
)


def main(argv: list[str]) -> None:
    """Checks the fresh table, or publishes it."""
    del argv
    text = volumes_docs.summary_text(volumes_docs.read_reports(Path(_WORKDIR.value)))
    print(text)
    if _EXPECT.value:
        failure = volumes_docs.expectation_failure(text, Path(_EXPECT.value))
        if failure:
            sys.exit(failure)
        print(f"The table equals {_EXPECT.value}.")
    if _UPDATE_DOCS.value:
        volumes_docs.update_docs(text)
        print(f"Wrote {volumes_docs.DOCS_SUMMARY} and rewrote {volumes_docs.DOC}.")


if __name__ == "__main__":
    command.run(main, jax_runtime=False)
