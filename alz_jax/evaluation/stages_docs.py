"""The stages demo's published comparison: the figures docs/stages.md quotes of the stages demo
beside its plain-CNN baseline, and the check that a fresh pair of runs reproduces them.

`make stages-compare` trains configs/stages_demo.py and configs/stages_simple_cnn.py and compares
them (`python -m alz_jax.compare`); `python -m alz_jax.stages_figures` then either checks the
fresh comparison against docs/demo/stages/ (--expect, in CI) or copies it there and rewrites the
block of docs/stages.md between `<!-- stages-figures:start -->` and `<!-- stages-figures:end -->`
(--update_docs). What is checked is the comparison's metrics and paired differences, to the
printed precision; measured times and throughput vary from run to run and are only recorded.
`make stages-image-split` does the same for the table of what an image split does to the
numbers (`image_split_text`, block `stages-image-split`).
"""

import json
import re
from pathlib import Path

from alz_jax.evaluation import demo_docs
from alz_jax.host.errors import UserError

DOCS_STAGES = Path("docs/demo/stages")
DOCS_COMPARE = DOCS_STAGES / "compare.md"
DOCS_RUNS = DOCS_STAGES / "runs.json"
DOCS_IMAGE_SPLIT = DOCS_STAGES / "image_split.md"
DOCS_UNCERTAINTY = DOCS_STAGES / "uncertainty.md"
DOC = Path("docs/stages.md")
UNCERTAINTY_DOC = Path("docs/uncertainty.md")
# The sections of compare.md whose figures repeat on one machine (the rest measures time).
CHECKED_SECTIONS = ("Models", "Test metrics", "Paired differences")
# The tables of those sections that docs/stages.md shows.
SHOWN_LEVELS = ("Slice level", "Subject level")
_MARKER = re.compile(r"<!-- stages-([a-z-]+):start -->\n(.*?)<!-- stages-\1:end -->\n", re.S)
BLOCKS = ("figures", "image-split")
# The image-split table's rows: the folders as given, and near-duplicate groups re-split.
IMAGE_SPLIT_ROWS = {
    "split_a": "A: the folders (by image), intervals over images",
    "split_b": "B: near-duplicate groups, re-split 70/15/15",
}


def sections(markdown: str) -> dict[str, str]:
    """compare.md's `## ` sections by the start of their heading (text up to the next one)."""
    parts = re.split(r"^## ", markdown, flags=re.M)[1:]
    return {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in parts}


def checked_text(markdown: str) -> str:
    """The part of a comparison that a fresh pair of runs must reproduce: the models (without
    their workdirs' paths), the test metrics and the paired differences."""
    out = []
    for heading, body in sections(markdown).items():
        if heading.startswith(CHECKED_SECTIONS):
            # The workdir column names where the run lay, which differs from clone to clone.
            out.append(f"## {heading}\n" + re.sub(r"`[^`]*`", "`...`", body))
    return "".join(out)


def expectation_failure(markdown: str, expected_path: Path) -> str | None:
    """None if the fresh comparison's checked part equals the published one's, else a message
    with a unified diff."""
    try:
        expected = checked_text(Path(expected_path).read_text())
    except OSError as e:
        return f"{expected_path}: cannot read it ({e}); `make stages-figures` writes it."
    fresh = checked_text(markdown)
    if fresh == expected:
        return None
    return (
        f"FAILED: this comparison differs from {expected_path}, which docs/stages.md quotes:\n"
        + demo_docs.unified_diff(expected, fresh, str(expected_path), "this comparison")
        + "If the code or a recipe changed, run `make stages-figures` and commit docs/demo/stages/"
        ' and docs/stages.md (docs/evaluation.md, "The same figures on another machine", says '
        "what else changes the figures)."
    )


def runs_record(reports: dict[str, dict]) -> dict:
    """What docs/demo/stages/runs.json records of the two runs: each one's checkpoint, weights
    and stage times (as measured, with the machine), by name."""
    return {
        "measured": demo_docs.machine(),
        "runs": {
            name: {
                "checkpoint_step": report["checkpoint_step"],
                "weights": report["weights"],
                "stage_seconds": report.get("stage_seconds", {}),
            }
            for name, report in reports.items()
        },
    }


def block_text(markdown: str, runs: dict) -> str:
    """docs/stages.md's generated block: the slice- and subject-level tables of the metrics and
    of the paired differences, and a line of each run's times."""
    found = sections(markdown)
    lines = []
    for heading, body in found.items():
        if not heading.startswith(("Test metrics", "Paired differences")):
            continue
        for sub in re.split(r"^### ", body, flags=re.M)[1:]:
            title, table = sub.split("\n", 1)
            if title.startswith(SHOWN_LEVELS):
                lines += [f"**{heading}: {title}**", "", table.strip(), ""]
    machine = runs["measured"]
    times = "; ".join(
        f"{name}: train {run['stage_seconds'].get('train', float('nan')):.1f} s, "
        f"{sum(run['stage_seconds'].values()):.1f} s in all"
        for name, run in runs["runs"].items()
    )
    lines.append(
        f"Times as measured ({machine['date']}, {machine['cpu']}, {machine['usable_cores']} "
        f"usable cores, jax {machine['jax']}): {times}."
    )
    return "\n".join(lines) + "\n"


def rewrite_block(text: str, name: str, block: str, where: str) -> str:
    """`text` with its block `name` replaced; a UserError naming `where` when the document's
    blocks are not exactly BLOCKS, once each."""
    found = [m.group(1) for m in _MARKER.finditer(text)]
    if sorted(found) != sorted(BLOCKS):
        raise UserError(
            f"{where}: expected one block of each of {', '.join(BLOCKS)} between "
            f"`<!-- stages-NAME:start -->` and `<!-- stages-NAME:end -->`; found "
            f"{sorted(found) or 'none'}."
        )
    return _MARKER.sub(
        lambda m: (
            f"<!-- stages-{name}:start -->\n{block}<!-- stages-{name}:end -->\n"
            if m.group(1) == name
            else m.group(0)
        ),
        text,
    )


def _interval(level: dict, metric: str) -> str:
    low, high = level["ci95"][metric]
    return f"{level[metric]:.3f} [{low:.3f}, {high:.3f}]"


def image_split_text(reports: dict[str, dict]) -> str:
    """The table of what an image split does to the numbers, from the reports of the runs named
    in IMAGE_SPLIT_ROWS: near-identical train images, then slice accuracy, kappa and macro F1
    with their intervals."""
    lines = [
        "| split | test images with a near-identical train image | slice accuracy [95%] | "
        "quadratic kappa [95%] | macro F1 [95%] |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, label in IMAGE_SPLIT_ROWS.items():
        report = reports[name]
        near = report["cross_split_near_duplicates"]
        level = report["slice"]
        lines.append(
            f"| {label} | {near['test_images_with_train_match']} of {near['test_images']} "
            f"({near['share']:.0%}) | {_interval(level, 'accuracy')} | "
            f"{_interval(level, 'quadratic_kappa')} | {_interval(level, 'macro_f1')} |"
        )
    return "\n".join(lines) + "\n"


def _published_failure(text: str, expected_path: Path, writer: str, differs: str) -> str | None:
    """None if `text` equals the published file, else "FAILED: these runs' <differs>" and a
    unified diff (or that the file cannot be read, and the `make` target that writes it)."""
    try:
        expected = Path(expected_path).read_text()
    except OSError as e:
        return f"{expected_path}: cannot read it ({e}); `make {writer}` writes it."
    if text == expected:
        return None
    diff = demo_docs.unified_diff(expected, text, str(expected_path), "these runs")
    return f"FAILED: these runs' {differs}:\n{diff}"


def image_split_failure(text: str, expected_path: Path) -> str | None:
    """None if the fresh table equals the published one, else a message with a unified diff."""
    return _published_failure(text, expected_path, "stages-image-split",
                              f"table differs from {expected_path}")  # fmt: skip


def update_image_split(reports: dict[str, dict], root: Path = Path()) -> None:
    """Writes the image-split table to docs/demo/stages/ and docs/stages.md's block."""
    text = image_split_text(reports)
    (root / DOCS_STAGES).mkdir(parents=True, exist_ok=True)
    (root / DOCS_IMAGE_SPLIT).write_text(text)
    doc = root / DOC
    doc.write_text(rewrite_block(doc.read_text(), "image-split", text, str(DOC)))


def _pct(value: float | None, interval: list | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
                                    if interval else "")  # fmt: skip


def uncertainty_text(reports: dict[str, dict]) -> str:
    """The prediction sets and selective prediction of each run's test report at scan and subject
    level: coverage overall and per class with intervals, set size, singletons, empty sets, and
    the accuracy when the 10% least confident are left out (docs/uncertainty.md quotes it)."""
    first = next(iter(reports.values()))["uncertainty"]
    names = first["levels"]["scan"]["per_class"]
    lines = [
        f"Prediction sets: {first['score'].upper()}, {first['calibration']}, alpha "
        f"{first['alpha']:g} (target coverage {100 * (1 - first['alpha']):.0f}%), calibrated on "
        f"{first['source']}; test split.",
        "",
        "| run | level | coverage [95%] | " + " | ".join(names) + " | mean set size | singletons "
        "| empty | accuracy: all / 10% least confident out |",
        "| --- " * (7 + len(names)) + "|",
    ]
    for name, report in reports.items():
        for level in ("scan", "subject"):
            m = report["uncertainty"]["levels"].get(level)
            if m is None:
                continue
            out = next(a for a in m["abstention"] if abs(a["rate"] - 0.1) < 1e-9)
            lines.append(
                f"| {name} | {level} | {_pct(m['coverage'], m['ci95']['coverage'])} | "
                + " | ".join(f"{_pct(c['coverage'])} ({c['units']})"
                             for c in m["per_class"].values())
                + f" | {m['mean_set_size']:.2f} | {_pct(m['singleton_share'])} | "
                f"{_pct(m['empty_share'])} | {_pct(m['risk_coverage']['accuracy'][-1])} / "
                f"{_pct(out['accuracy'])} |"
            )  # fmt: skip
    return "\n".join(lines) + "\n"


def uncertainty_failure(text: str, expected_path: Path) -> str | None:
    """None if the fresh prediction-set table equals the published one, else a diff."""
    return _published_failure(
        text, expected_path, "stages-figures",
        f"prediction sets differ from {expected_path}, which {UNCERTAINTY_DOC} quotes",
    )  # fmt: skip


def update_uncertainty(reports: dict[str, dict], root: Path = Path()) -> None:
    """Writes the prediction-set table to docs/demo/stages/ and docs/uncertainty.md's block."""
    text = uncertainty_text(reports)
    (root / DOCS_STAGES).mkdir(parents=True, exist_ok=True)
    (root / DOCS_UNCERTAINTY).write_text(text)
    doc = root / UNCERTAINTY_DOC
    start, end = "<!-- uncertainty-figures:start -->", "<!-- uncertainty-figures:end -->"
    marker = re.compile(f"({re.escape(start)}\n).*?({re.escape(end)})", re.S)
    if not marker.search(doc.read_text()):
        raise UserError(f"{UNCERTAINTY_DOC}: expected one block between `{start}` and `{end}`.")
    doc.write_text(marker.sub(lambda m: m.group(1) + text + m.group(2), doc.read_text()))


def update_docs(compare_dir: Path, reports: dict[str, dict], root: Path = Path()) -> None:
    """Copies the comparison to docs/demo/stages/, records the runs' times beside it and
    rewrites docs/stages.md's block from them."""
    markdown = (compare_dir / "compare.md").read_text()
    runs = runs_record(reports)
    (root / DOCS_STAGES).mkdir(parents=True, exist_ok=True)
    (root / DOCS_COMPARE).write_text(markdown)
    (root / DOCS_RUNS).write_text(json.dumps(runs, indent=1) + "\n")
    doc = root / DOC
    doc.write_text(rewrite_block(doc.read_text(), "figures", block_text(markdown, runs), str(DOC)))
