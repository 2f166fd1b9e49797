"""The volume demo's published figures: a run trained on the synthetic CAPS cohort, its test
split beside two external evaluations on a synthetic OASIS-1 release (the skull-stripped image
the release recommends, and the unmasked one, closer to t1-linear's), and the check that a
fresh demo reproduces them.

`make demo-volumes` trains configs/volumes_demo.py and evaluates it on both cohorts; then
`python -m alz_jax.volumes_figures` either checks the table against docs/demo/volumes/summary.md
(--expect, in CI) or writes it there and into docs/volumes.md's block between
`<!-- volumes-demo:start -->` and `<!-- volumes-demo:end -->` (--update_docs).
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

from alz_jax.host.errors import UserError

DOCS_SUMMARY = Path("docs/demo/volumes/summary.md")
DOC = Path("docs/volumes.md")
# The external cohorts `make demo-volumes` evaluates, in the table's order, and their rows.
COHORTS = {
    "oasis1_masked": "OASIS-1 release, skull-stripped (`_t88_masked_gfc`, the default)",
    "oasis1_unmasked": "OASIS-1 release, with the skull (`_t88_gfc`)",
}
IN_DISTRIBUTION = "CAPS cohort, test split (in distribution)"
_BLOCK = re.compile(r"<!-- volumes-demo:start -->\n.*?<!-- volumes-demo:end -->\n", re.S)


def _cell(value: float, interval) -> str:
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def read_reports(workdir: Path) -> dict[str, dict]:
    """The external reports of the demo's run, by cohort; UserError naming a missing one."""
    reports = {}
    for cohort in COHORTS:
        path = Path(workdir) / f"report_external_{cohort}.json"
        if not path.is_file():
            raise UserError(f"{path} does not exist: run `make demo-volumes` first.")
        reports[cohort] = json.loads(path.read_text())
    return reports


def summary_text(reports: dict[str, dict]) -> str:
    """The table: the external reports' headline figures (subject level: balanced accuracy,
    sensitivity, specificity, ROC AUC) with their subject-bootstrap intervals, on the run's
    test split and on each external cohort."""
    first = reports[next(iter(COHORTS))]
    headline = first["summary"]["rows"]
    lines = ["| cohort | subjects | " + " | ".join(r["label"] for r in headline) + " |",
             "|---|---|" + "---|" * len(headline)]  # fmt: skip
    reference = [_cell(r["in_distribution"], r["in_distribution_ci95"]) for r in headline]
    test_subjects = first["summary"].get("in_distribution_subjects", "")
    lines.append(f"| {IN_DISTRIBUTION} | {test_subjects} | " + " | ".join(reference) + " |")
    for cohort, title in COHORTS.items():
        report = reports[cohort]
        cells = [_cell(r["external"], r["external_ci95"]) for r in report["summary"]["rows"]]
        subjects = report["counts"]["subjects"]
        lines.append(f"| {title} | {subjects} | " + " | ".join(cells) + " |")
    threshold = first["summary"]["threshold"]
    return "\n".join(lines) + (
        f"\n\nSubject level, 95% percentile-bootstrap intervals over subjects; the threshold "
        f"{threshold:.3f} and the temperature were chosen on the CAPS run's validation split and "
        "applied unchanged to every cohort.\n"
    )


def expectation_failure(text: str, expected_path: Path) -> str | None:
    """None if the fresh table equals the published one, else a message with a diff."""
    try:
        expected = Path(expected_path).read_text()
    except OSError as e:
        return f"{expected_path}: {e.strerror}; publish it with `make demo-volumes-figures`."
    if text == expected:
        return None
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                        str(expected_path), "this run"))  # fmt: skip
    return (f"The volume demo's figures differ from {expected_path} (publish them with "
            f"`make demo-volumes-figures` if the change is meant):\n{diff}")  # fmt: skip


def update_docs(text: str, root: Path = Path()) -> None:
    """Writes the table to docs/demo/volumes/summary.md and into docs/volumes.md's block."""
    summary = root / DOCS_SUMMARY
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(text)
    doc = root / DOC
    current = doc.read_text()
    if len(_BLOCK.findall(current)) != 1:
        raise UserError(f"{doc}: expected one block between `<!-- volumes-demo:start -->` and "
                        "`<!-- volumes-demo:end -->`.")  # fmt: skip
    doc.write_text(
        _BLOCK.sub(
            lambda m: f"<!-- volumes-demo:start -->\n{text}<!-- volumes-demo:end -->\n", current
        )
    )


def block_of(doc_text: str) -> str:
    """The table docs/volumes.md shows (its block's content)."""
    found = _BLOCK.findall(doc_text)
    if len(found) != 1:
        raise UserError(f"{DOC}: expected one volumes-demo block, found {len(found)}.")
    return found[0].split("\n", 1)[1].rsplit("<!-- volumes-demo:end -->", 1)[0]
