"""Command: check or publish the stages demo's comparison (softmax, CORN, plain-CNN baseline)
and the prediction sets of those runs (docs/uncertainty.md).

    make stages-compare     # trains both, compares them, then checks (this command, --expect)
    python -m alz_jax.stages_figures --expect=docs/demo/stages/compare.md
    python -m alz_jax.stages_figures --update_docs   # `make stages-figures`
    make stages-image-split  # the folders split by image, then by near-duplicate groups
    python -m alz_jax.stages_figures --what=image_split --workdirs=.demo/split_a,.demo/split_b \
        [--expect=docs/demo/stages/image_split.md | --update_docs]

Reads the comparison `python -m alz_jax.compare` wrote (--compare_dir) and the two runs' test
reports (--workdirs). --expect exits with status 1 and a diff unless the comparison's models,
metrics and paired differences equal those of the published file; --update_docs copies the
comparison to docs/demo/stages/, records the runs' times beside it and rewrites the block of
docs/stages.md (alz_jax/evaluation/stages_docs.py). --what=image_split does the same for the
table of what an image split does to the numbers, made from the two runs' test reports.
"""

import json
import sys
from pathlib import Path

from absl import flags

from alz_jax.evaluation import stages_docs
from alz_jax.host import command
from alz_jax.host.errors import UserError

_COMPARE_DIR = flags.DEFINE_string(
    "compare_dir", ".demo/stages_compare", "Where `alz_jax.compare` wrote compare.md."
)
_WORKDIRS = flags.DEFINE_list(
    "workdirs",
    [".demo/stages", ".demo/stages_corn", ".demo/stages_cnn"],
    "The stages demo's runs (softmax, CORN) and the baseline's.",
)
_EXPECT_UNCERTAINTY = flags.DEFINE_string(
    "expect_uncertainty",
    None,
    "Also fail unless the runs' prediction-set table equals this file (docs/uncertainty.md's).",
)
_EXPECT = flags.DEFINE_string("expect", None, "Fail unless the comparison equals this file's.")
_WHAT = flags.DEFINE_enum(
    "what",
    "compare",
    ["compare", "image_split"],
    "The stages demo beside its baseline, or the image-split table.",
)
_UPDATE_DOCS = flags.DEFINE_bool(
    "update_docs", False, "Copy the comparison to docs/demo/stages/ and rewrite docs/stages.md."
)


def _reports() -> dict[str, dict]:
    reports = {}
    for workdir in _WORKDIRS.value:
        path = Path(workdir) / "report_test.json"
        if not path.is_file():
            raise UserError(f"{path} does not exist: run `make stages-compare` first.")
        reports[Path(workdir).name] = json.loads(path.read_text())
    return reports


def _image_split() -> None:
    text = stages_docs.image_split_text(_reports())
    if _EXPECT.value:
        failure = stages_docs.image_split_failure(text, Path(_EXPECT.value))
        if failure:
            sys.exit(failure)
        print(f"The table equals {_EXPECT.value}.")
    if _UPDATE_DOCS.value:
        stages_docs.update_image_split(_reports())
        print(f"Wrote {stages_docs.DOCS_IMAGE_SPLIT} and rewrote {stages_docs.DOC}.")


def main(argv: list[str]) -> None:
    """Checks the fresh comparison (or table), or publishes it."""
    del argv
    if _WHAT.value == "image_split":
        _image_split()
        return
    compare_md = Path(_COMPARE_DIR.value) / "compare.md"
    if not compare_md.is_file():
        raise UserError(f"{compare_md} does not exist: run `make stages-compare` first.")
    if _EXPECT.value:
        failure = stages_docs.expectation_failure(compare_md.read_text(), Path(_EXPECT.value))
        if failure:
            sys.exit(failure)
        print(f"The comparison equals {_EXPECT.value}.")
    if _EXPECT_UNCERTAINTY.value:
        text = stages_docs.uncertainty_text(_reports())
        failure = stages_docs.uncertainty_failure(text, Path(_EXPECT_UNCERTAINTY.value))
        if failure:
            sys.exit(failure)
        print(f"The prediction sets equal {_EXPECT_UNCERTAINTY.value}.")
    if _UPDATE_DOCS.value:
        stages_docs.update_docs(Path(_COMPARE_DIR.value), _reports())
        stages_docs.update_uncertainty(_reports())
        print(
            f"Wrote {stages_docs.DOCS_STAGES}/ and rewrote {stages_docs.DOC} and "
            f"{stages_docs.UNCERTAINTY_DOC}."
        )


if __name__ == "__main__":
    command.run(main, jax_runtime=False)
