"""The volume demo's published figures (no training): docs/volumes.md's block is what
`make demo-volumes-figures` writes from docs/demo/volumes/summary.md, the table is built from
the external reports as documented, and the check that `make demo-volumes` runs catches a
changed figure."""

import re
from pathlib import Path

import pytest

from alz_jax.configs import volumes_demo
from alz_jax.evaluation import volumes_docs
from alz_jax.host.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


LABELS = ("balanced accuracy", "sensitivity (AD recall)", "specificity (NC recall)", "ROC AUC")


def _report(value: float, reference: float, subjects: int) -> dict:
    rows = [
        {"label": label, "external": value, "external_ci95": [value - 0.1, value],
         "in_distribution": reference, "in_distribution_ci95": [reference - 0.2, 1.0]}
        for label in LABELS
    ]  # fmt: skip
    return {"summary": {"rows": rows, "threshold": 0.4, "in_distribution_subjects": 17},
            "counts": {"subjects": subjects}}  # fmt: skip


def _reports() -> dict[str, dict]:
    return {"oasis1_masked": _report(0.5, 0.8, 70),
            "oasis1_unmasked": _report(0.9, 0.8, 70)}  # fmt: skip


def test_the_docs_block_is_the_published_summary():
    summary = (ROOT / volumes_docs.DOCS_SUMMARY).read_text()
    doc = (ROOT / volumes_docs.DOC).read_text()
    assert volumes_docs.block_of(doc) == summary
    # Three cohorts: the run's own test split, and the release skull-stripped and not.
    assert sum(line.startswith("| ") for line in summary.splitlines()) == 4
    assert volumes_docs.IN_DISTRIBUTION in summary


def test_the_table_has_each_cohorts_subject_figures_with_intervals():
    text = volumes_docs.summary_text(_reports())
    lines = text.splitlines()
    assert lines[0] == "| cohort | subjects | " + " | ".join(LABELS) + " |"
    assert lines[2] == (f"| {volumes_docs.IN_DISTRIBUTION} | 17 | " +
                        " | ".join(["0.800 [0.600, 1.000]"] * 4) + " |")  # fmt: skip
    assert lines[3].endswith("| 70 | " + " | ".join(["0.500 [0.400, 0.500]"] * 4) + " |")
    assert lines[4].endswith("| 70 | " + " | ".join(["0.900 [0.800, 0.900]"] * 4) + " |")
    assert "threshold 0.400" in text


def test_the_check_catches_a_changed_figure(tmp_path):
    text = volumes_docs.summary_text(_reports())
    published = tmp_path / "summary.md"
    published.write_text(text)
    assert volumes_docs.expectation_failure(text, published) is None
    changed = text.replace("0.900 [0.800", "0.901 [0.800", 1)
    failure = volumes_docs.expectation_failure(changed, published)
    assert failure is not None and "+| OASIS-1" in failure and "-| OASIS-1" in failure
    missing = volumes_docs.expectation_failure(text, tmp_path / "nope.md")
    assert "make demo-volumes-figures" in missing


def test_update_docs_rewrites_only_the_block(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / volumes_docs.DOC).write_text(
        "before\n<!-- volumes-demo:start -->\nold\n<!-- volumes-demo:end -->\nafter\n"
    )
    text = volumes_docs.summary_text(_reports())
    volumes_docs.update_docs(text, tmp_path)
    doc = (tmp_path / volumes_docs.DOC).read_text()
    assert doc.startswith("before\n") and doc.endswith("after\n")
    assert volumes_docs.block_of(doc) == text == (tmp_path / volumes_docs.DOCS_SUMMARY).read_text()
    (tmp_path / volumes_docs.DOC).write_text("no block\n")
    with pytest.raises(UserError, match="expected one block"):
        volumes_docs.update_docs(text, tmp_path)


# A metric as the reports print it (settings such as the 99.5th percentile and times aside).
DECIMAL = re.compile(r"(?<![\d.])\d\.\d{3}(?![\d.])")


def test_every_figure_quoted_in_prose_is_a_published_one():
    """The decimals of docs/volumes.md's demo section (outside the block) and of the demo
    config's docstring are figures of docs/demo/volumes/summary.md."""
    published = set(DECIMAL.findall((ROOT / volumes_docs.DOCS_SUMMARY).read_text()))
    doc = (ROOT / volumes_docs.DOC).read_text()
    section = doc[doc.index("## The demo, measured") : doc.index("## Throughput")]
    prose = re.sub(r"<!-- volumes-demo:start -->.*<!-- volumes-demo:end -->", "", section,
                   flags=re.S)  # fmt: skip
    quoted = set(DECIMAL.findall(prose)) | set(DECIMAL.findall(volumes_demo.__doc__))
    assert quoted and quoted <= published, quoted - published
