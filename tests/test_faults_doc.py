"""docs/faults.md names, for each fault, the tests that produce it: every name it gives is a test
that exists (a renamed or deleted test fails here, not silently in the docs)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_docs_faults_names_exists():
    named = set(re.findall(r"`(test_\w+)`", (ROOT / "docs" / "faults.md").read_text()))
    defined = {
        name
        for path in (ROOT / "tests").glob("test_*.py")
        for name in re.findall(r"^\s*def (test_\w+)\(", path.read_text(), re.M)
    }
    assert len(named) > 80
    assert sorted(named - defined) == []
