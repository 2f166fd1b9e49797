"""docs/scan_models.md quotes the comparison CI regenerates (docs/demo/scan/compare.md): each of
its paired differences and accuracies is that file's (no training here)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEVEL_TITLES = {"scan": "### Scan level: B - slice", "subject": "### Subject level: B - slice"}


def _block() -> str:
    text = (ROOT / "docs" / "scan_models.md").read_text()
    return text.split("<!-- scan-compare:start -->")[1].split("<!-- scan-compare:end -->")[0]


def _section(compare: str, title: str) -> str:
    return compare.split(title)[1].split("\n#", maxsplit=1)[0]


def test_the_quoted_differences_are_the_published_comparisons():
    compare = (ROOT / "docs" / "demo" / "scan" / "compare.md").read_text()
    rows = re.findall(r"^\| (.+?) \| (scan|subject) \| (.+?) \| (.+?) \|$", _block(), re.M)
    assert len(rows) == 8
    for model, level, balanced, auc in rows:
        (line,) = [row for row in _section(compare, LEVEL_TITLES[level]).splitlines()
                   if row.startswith(f"| {model} |")]  # fmt: skip
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2].startswith(balanced) and cells[3].startswith(auc), (model, level)


def test_the_quoted_subject_accuracies_are_the_published_comparisons():
    compare = (ROOT / "docs" / "demo" / "scan" / "compare.md").read_text()
    subjects = _section(compare, "### Subject level\n")
    found = re.search(
        r"subject\s+balanced\s+accuracy\s+(0\.\d{3})\s+\[[^\]]+\]\s+against\s+(0\.\d{3})\s+for\s+"
        r"mean\s+pooling\s+and\s+(0\.\d{3})\s+for\s+attention",
        _block(),
    )
    assert found, "the sentence quoting the subject balanced accuracies"
    for model, value in zip(("slice", "mean", "attention"), found.groups(), strict=True):
        (line,) = [r for r in subjects.splitlines() if r.startswith(f"| {model} |")]
        balanced = [c.strip() for c in line.strip("|").split("|")][4]
        assert balanced.startswith(value), (model, value, balanced)
