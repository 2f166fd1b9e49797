"""The demo's figures in README.md and docs/evaluation.md are those of docs/demo/ (no training).

`make demo-figures` writes docs/demo/summary.txt and figures.json from a demo run and rewrites
the docs' marked blocks from them; `make demo` (in CI) fails unless a fresh run prints
summary.txt. These tests check the docs against docs/demo/: each block as `make demo-figures`
writes it, figures.json against summary.txt, and every decimal figure and checkpoint step in the
prose of the docs' demo sections.
"""

import json
import re
from pathlib import Path

import pytest

from alz_jax.evaluation import demo_docs
from alz_jax.host.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = (ROOT / demo_docs.DOCS_SUMMARY).read_text()
QUOTED = json.loads((ROOT / demo_docs.DOCS_FIGURES).read_text())
# The sections that quote the demo, each up to the next heading of its level.
SECTIONS = {
    "README.md": "## The demo's result",
    "docs/evaluation.md": "## Reading the demo's report",
}
BLOCKS = {"README.md": {"table", "report"}, "docs/evaluation.md": {"validation"}}
# A decimal number, not part of a version such as 3.11.7 or of a longer number.
DECIMAL = re.compile(r"(?<![\d.])\d+\.\d+(?![\d.])(?!\.\d)")


def _section(doc: str) -> str:
    text = (ROOT / doc).read_text()
    heading = SECTIONS[doc]
    start = text.index(heading)
    level = heading.split(" ")[0] + " "
    end = text.find(f"\n{level}", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


def _numbers(value) -> list:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return [value] if is_number else []


def stale_figures(prose: str, summary: str, quoted: dict) -> list[str]:
    """Each decimal figure of `prose` that neither the summary prints nor figures.json holds
    (at 2, 3 or 5 decimals, or as written there), and each checkpoint step but the chosen one."""
    allowed = set(DECIMAL.findall(summary))
    for n in _numbers({k: v for k, v in quoted.items() if k != "measured"}):
        allowed |= {str(n), f"{n:.2f}", f"{n:.3f}", f"{n:.5f}"}
    stale = [f"{d} (not in docs/demo/)" for d in DECIMAL.findall(prose) if d not in allowed]
    steps = re.findall(r"\bstep (\d+)", prose)
    stale += [f"step {s} (the demo chose {quoted['checkpoint_step']})" for s in steps
              if int(s) != quoted["checkpoint_step"]]  # fmt: skip
    return stale


def test_the_docs_blocks_are_those_make_demo_figures_writes():
    expected = demo_docs.block_texts(SUMMARY, QUOTED)
    for doc, names in BLOCKS.items():
        found = demo_docs.marked_blocks((ROOT / doc).read_text())
        assert set(found) == names, doc
        for name in names:
            assert found[name] == expected[name], (
                f"{doc}: the demo-{name} block differs from docs/demo/: run `make demo-figures`"
            )


def test_the_readme_shows_the_printed_summary_byte_for_byte():
    readme = (ROOT / "README.md").read_text()
    block = f"<!-- demo-report:start -->\n```text\n{SUMMARY}```\n<!-- demo-report:end -->\n"
    assert block in readme
    assert "data folder" not in SUMMARY  # the per-clone fingerprint is printed apart
    assert "Stage times" not in SUMMARY and " s\n" not in SUMMARY  # so are the times


def test_figures_json_and_the_summary_come_from_one_run():
    q = QUOTED
    lines = SUMMARY.splitlines()
    assert lines[0].startswith(
        f"Report: test split, checkpoint step {q['checkpoint_step']} ({q['weights']} weights), "
        f"{q['num_images']} images"
    )
    t = q["thresholds"]
    assert (
        f"slice {t['slice']:.3f}, scan {t['scan']:.3f}, subject {t['subject']:.3f}; "
        f"temperature {q['temperature']:.3f}" in lines[1]
    )
    assert f"fitted: {q['temperature_fitted']:.3f}" in lines[1]
    for level in demo_docs.LEVELS:
        m = q[level]
        row = next(line.split() for line in lines if line.startswith(f"{level} "))
        printed = [m["n"], m["threshold"], m["accuracy"], m["balanced_accuracy"], m["sensitivity"]]
        assert row[1:6] == [str(printed[0])] + [f"{v:.3f}" for v in printed[1:]], level
        ci = m["accuracy_ci95"]
        assert any(
            line.startswith(f"{level} ") and line.endswith(f"[{ci[0]:.3f}, {ci[1]:.3f}]")
            for line in lines
        ), level
    assert demo_docs.validation_text(q["validation_loss"], q["checkpoint_step"]) in SUMMARY


def test_every_demo_figure_in_the_docs_prose_is_a_generated_one():
    for doc in SECTIONS:
        prose = re.sub(r"<!-- demo-([a-z]+):start -->.*?<!-- demo-\1:end -->", "", _section(doc),
                       flags=re.S)  # fmt: skip
        assert stale_figures(prose, SUMMARY, QUOTED) == [], doc
        assert f"{QUOTED['scan']['accuracy']:.3f}" in DECIMAL.findall(prose), doc  # not vacuous


def test_the_prose_check_catches_a_stale_figure():
    # The run the docs quoted before issue 24, against this summary.
    prose = (
        "The best checkpoint was step 505 with swa weights. With 60 test subjects, the scan "
        "accuracy of 0.947 is known only to within [0.894, 0.987]; thresholds 0.235-0.316, "
        "temperature 0.423; version 3.11.7 and 2e-3 are no figures."
    )
    quoted = dict(QUOTED, checkpoint_step=404)
    summary = "scan 0.947 [0.894, 0.987]\n"
    assert stale_figures(prose, summary, quoted) == [
        "0.235 (not in docs/demo/)", "0.316 (not in docs/demo/)", "0.423 (not in docs/demo/)",
        "step 505 (the demo chose 404)",
    ]  # fmt: skip


def _tree(tmp_path: Path, readme: str, evaluation: str = "no blocks\n") -> Path:
    (tmp_path / "docs" / "demo").mkdir(parents=True)
    (tmp_path / demo_docs.DOCS_SUMMARY).write_text(SUMMARY)
    (tmp_path / demo_docs.DOCS_FIGURES).write_text(json.dumps(QUOTED))
    (tmp_path / "README.md").write_text(readme)
    (tmp_path / "docs" / "evaluation.md").write_text(evaluation)
    return tmp_path


def test_update_docs_rewrites_a_stale_block_and_leaves_the_rest(tmp_path):
    stale = "    Report: test split, checkpoint step 505 (swa weights)\n"
    root = _tree(
        tmp_path, f"intro\n<!-- demo-report:start -->\n{stale}<!-- demo-report:end -->\nend\n"
    )
    assert demo_docs.update_docs(root) == [Path("README.md")]
    assert (root / "README.md").read_text() == (
        f"intro\n<!-- demo-report:start -->\n```text\n{SUMMARY}```\n<!-- demo-report:end -->\nend\n"
    )
    assert (root / "docs" / "evaluation.md").read_text() == "no blocks\n"
    assert demo_docs.update_docs(root) == []  # nothing left to rewrite


@pytest.mark.parametrize(
    "readme, phrase",
    [("<!-- demo-report:start -->\nold\n", "'report' has no end line"),
     ("<!-- demo-nope:start -->\nx\n<!-- demo-nope:end -->\n",
      "'nope' is not one of report, table, validation")],
)  # fmt: skip
def test_update_docs_refuses_a_broken_block(tmp_path, readme, phrase):
    root = _tree(tmp_path, readme)
    with pytest.raises(UserError, match=re.escape(phrase)) as raised:
        demo_docs.update_docs(root)
    assert str(raised.value).startswith("README.md: demo blocks must be")
    assert (root / "README.md").read_text() == readme  # untouched


def test_update_docs_names_the_missing_files(tmp_path):
    with pytest.raises(UserError, match=r"needs docs/demo/summary.txt and docs/demo/figures.json"):
        demo_docs.update_docs(tmp_path)


def test_the_expectation_shows_what_differs(tmp_path):
    expected = tmp_path / "summary.txt"
    expected.write_text(SUMMARY)
    assert demo_docs.expectation_failure(SUMMARY, str(expected)) is None
    other = SUMMARY.replace(f"checkpoint step {QUOTED['checkpoint_step']} ", "checkpoint step 7 ")
    problem = demo_docs.expectation_failure(other, str(expected))
    first = SUMMARY.splitlines()[0]
    assert f"\n-{first}\n" in problem and f"\n+{other.splitlines()[0]}\n" in problem
    assert problem.startswith(f"FAILED: this run's summary differs from {expected}")
    assert "run `make demo-figures`" in problem
    missing = demo_docs.expectation_failure(SUMMARY, str(tmp_path / "nope.txt"))
    assert "nope.txt: cannot read it" in missing and "make demo-figures" in missing


def test_validation_losses_keep_each_step_and_its_lowest_weights(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    entries = [
        {"step": 1, "train/loss": 0.7},
        {"step": 10, "validation/raw/loss": 0.3, "validation/ema/loss": 0.2,
         "validation/loss": 0.2},
        {"step": 20, "validation/raw/loss": 0.1, "validation/ema/loss": 0.4,
         "validation/swa/loss": 0.1, "validation/loss": 0.1},
    ]  # fmt: skip
    metrics.write_text("".join(json.dumps(e) + "\n" for e in entries))
    rows = demo_docs.validation_losses(metrics)
    assert rows == [
        {"step": 10, "raw": 0.3, "ema": 0.2, "swa": None, "best": "ema"},
        {"step": 20, "raw": 0.1, "ema": 0.4, "swa": 0.1, "best": "raw"},  # a tie: raw, listed first
    ]
    assert demo_docs.validation_text(rows, 20).splitlines()[2:] == [
        "    10  0.30000  0.20000        -",
        "    20  0.10000  0.40000  0.10000  <- chosen",
    ]
