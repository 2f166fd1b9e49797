"""The demo's published figures: the summary `make demo` prints, the figures the docs quote, and
the blocks of README.md and docs/evaluation.md written from them.

The demo (alz_jax/demo.py) writes the summary and the figures to its workdir; `make demo-figures`
copies them to docs/demo/ and rewrites each block between `<!-- demo-NAME:start -->` and
`<!-- demo-NAME:end -->` from them; `make demo` compares a fresh summary with docs/demo/summary.txt;
tests/test_docs_figures.py checks the docs against docs/demo/. Nothing here imports the training
stack or JAX: the demo's Grain workers import the demo module again.
"""

import datetime
import difflib
import json
import os
import platform
import re
import textwrap
from importlib import metadata
from pathlib import Path

from alz_jax.evaluation import metric_registry
from alz_jax.host.errors import UserError

# What the demo writes to its workdir and `make demo-figures` copies to docs/demo/.
SUMMARY_FILE = "demo_summary.txt"
FIGURES_FILE = "demo_figures.json"
DOCS_DEMO = Path("docs/demo")
DOCS_SUMMARY = DOCS_DEMO / "summary.txt"
DOCS_FIGURES = DOCS_DEMO / "figures.json"
# The files whose marked blocks --update_docs rewrites (paths from the repository's root).
DOCS_WITH_BLOCKS = (Path("README.md"), Path("docs/evaluation.md"))
_MARKER = re.compile(r"<!-- demo-([a-z]+):start -->\n(.*?)<!-- demo-\1:end -->\n", re.S)
LEVELS = ("slice", "scan", "subject")
WEIGHT_SETS = ("raw", "ema", "swa")


def validation_losses(metrics_path: Path) -> list[dict]:
    """Each validation's loss per weight set, from a run's metrics.jsonl: [{step, raw, ema, swa,
    best}], `best` the lowest (the weights that validation would choose)."""
    by_step: dict[int, dict] = {}
    with open(metrics_path) as f:
        for line in f:
            entry = json.loads(line)
            if "validation/loss" not in entry:
                continue
            losses = {w: entry.get(f"validation/{w}/loss") for w in WEIGHT_SETS}
            present = {w: v for w, v in losses.items() if v is not None}
            by_step[entry["step"]] = {
                "step": entry["step"], **losses, "best": min(present, key=present.get)
            }  # fmt: skip
    return [by_step[s] for s in sorted(by_step)]


def validation_text(rows: list[dict], chosen_step: int) -> str:
    """The lines under the report that show how close the checkpoint choice was."""

    def cell(value: float | None) -> str:
        return "      -" if value is None else f"{value:.5f}"

    lines = ["Validation loss at each validation (the lowest chose the checkpoint):"]
    lines.append("  step      raw      ema      swa")
    for row in rows:
        mark = "  <- chosen" if row["step"] == chosen_step else ""
        cells = " ".join(f"{cell(row[w]):>8}" for w in WEIGHT_SETS)
        lines.append(f"  {row['step']:>4} {cells}{mark}")
    return "\n".join(lines) + "\n"


def without_fingerprint(report: dict) -> dict:
    """The report without the data folder's fingerprint, which hashes the folder's path and files'
    modification times and so differs from clone to clone (the summary must not)."""
    return {k: v for k, v in report.items() if k != "source_fingerprint"}


def _rounded(value: float, digits: int = 3) -> float:
    return round(float(value), digits)


def _level_figures(m: dict) -> dict:
    out = {
        "n": m["n"],
        "threshold": _rounded(m["threshold"]),
        # The binary validation metrics: those the demo's validation table shows.
        **{k: _rounded(m[k]) for k in metric_registry.names(metric_registry.BINARY, "validation")},
        "accuracy_ci95": [_rounded(v) for v in m["ci95"]["accuracy"]],
        "confusion": m["confusion_matrix"]["counts"],
    }  # fmt: skip
    if "at_0.5" in m:
        out["accuracy_at_0.5"] = _rounded(m["at_0.5"]["accuracy"])
    return out


def machine() -> dict:
    """What the figures were measured on: date, processor, usable cores, widest vector
    instructions, load at the start and the versions that decide XLA's code."""
    cpu, isa = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        cpu = re.search(r"^model name\s*:\s*(.*)$", info, re.M).group(1).strip()
        cpu_flags = set(re.search(r"^flags\s*:\s*(.*)$", info, re.M).group(1).split())
        isa = next((i for i in ("avx512f", "avx2", "avx", "sse4_2") if i in cpu_flags), "")
    except (OSError, AttributeError):
        pass  # not Linux: the platform's own name stays
    return {
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "cpu": cpu,
        "vector_isa": isa,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        **{p: metadata.version(p) for p in ("jax", "jaxlib")},
    }  # fmt: skip


def figures(report: dict, rows: list[dict], run: dict) -> dict:
    """The figures README.md and docs/evaluation.md quote, at the printed precision. `run` holds
    what the report does not: synthetic_seed, data_fingerprint (of the data set's content),
    gate, total_seconds and measured (`machine()`)."""
    cal = report["calibration"]
    return {
        "synthetic_seed": run["synthetic_seed"],
        "data_fingerprint": run["data_fingerprint"],
        "checkpoint_step": report["checkpoint_step"],
        "weights": report["weights"],
        "num_images": report["num_images"],
        "thresholds": {lv: _rounded(t) for lv, t in cal["thresholds"].items()},
        "temperature": _rounded(cal["temperature"]),
        "temperature_applied": cal["temperature_applied"],
        "temperature_fitted": _rounded(cal["temperature_fit"]["temperature"]),
        "temperature_fit_at_bound": cal["temperature_fit"]["at_bound"],
        **{lv: _level_figures(report[lv]) for lv in LEVELS},
        "tta": {lv: {"accuracy": _rounded(report["tta"][lv]["accuracy"]),
                     "accuracy_ci95": [_rounded(v) for v in report["tta"][lv]["ci95"]["accuracy"]]}
                for lv in LEVELS if lv in report.get("tta", {})},
        "validation_loss": [
            {k: (_rounded(v, 5) if isinstance(v, float) else v) for k, v in row.items()}
            for row in rows
        ],
        "gate": run["gate"],
        "stage_seconds": report["stage_seconds"],
        "total_seconds": round(run["total_seconds"], 1),
        "measured": run["measured"],
    }  # fmt: skip


def unified_diff(expected: str, actual: str, expected_name: str, actual_name: str) -> str:
    """The unified diff of two texts, line by line, as a failed check prints it."""
    return "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True), actual.splitlines(keepends=True),
            fromfile=expected_name, tofile=actual_name,
        )
    )  # fmt: skip


def expectation_failure(summary: str, expected_path: str) -> str | None:
    """None if `summary` equals the file's text, else a message with a unified diff."""
    try:
        expected = Path(expected_path).read_text()
    except OSError as e:
        return f"--expect={expected_path}: cannot read it ({e}); `make demo-figures` writes it."
    if summary == expected:
        return None
    return (
        f"FAILED: this run's summary differs from {expected_path}, the report that README.md "
        "quotes:\n"
        + unified_diff(expected, summary, expected_path, "this run")
        + "The figures repeat exactly on one machine with the same "
        "versions; another processor, core count or JAX/XLA version can change them: see "
        'docs/evaluation.md, "The same figures on another machine". If this run is the new '
        "reference (the code or the recipe changed), run `make demo-figures` and commit "
        "docs/demo/, README.md and docs/evaluation.md."
    )


def table_text(quoted: dict) -> str:
    """README's table of the demo's result and the line saying where it was measured."""
    m, times = quoted["measured"], quoted["stage_seconds"]
    row = [
        f"{quoted['synthetic_seed']}",
        f"step {quoted['checkpoint_step']}, {quoted['weights']} weights",
        f"{quoted['slice']['accuracy']:.3f}",
        f"{quoted['scan']['accuracy']:.3f}",
        f"{quoted['scan']['accuracy_at_0.5']:.3f}",
        f"{quoted['subject']['accuracy']:.3f}",
        f"{quoted['scan']['roc_auc']:.3f}",
        f"{times['train']:.1f} s",
        f"{quoted['total_seconds']:.1f} s",
    ]
    header = (
        "| synthetic seed | best checkpoint | slice acc | scan acc | scan acc @0.5 | subject acc "
        "| scan AUC | train | whole demo after install |"
    )
    caption = (
        f"Times measured on {m['date']} on one machine ({m['cpu']}, {m['usable_cores']} usable "
        f"cores, {m['vector_isa']}; load average {m['load_average_at_start']} at the start), "
        f"Python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}. Times vary with the "
        "machine and its load; the other figures repeat exactly on one machine, and another "
        "processor or core count can change them "
        "([docs/evaluation.md](docs/evaluation.md#the-same-figures-on-another-machine))."
    )
    wrapped = textwrap.fill(caption, width=100, break_long_words=False, break_on_hyphens=False)
    return f"{header}\n| {' | '.join(['---'] * len(row))} |\n| {' | '.join(row)} |\n\n{wrapped}\n"


def validation_table(quoted: dict) -> str:
    """docs/evaluation.md's table of each validation's loss per weight set."""
    lines = ["| step | raw | EMA | SWA | lowest |", "| --- | --- | --- | --- | --- |"]
    for row in quoted["validation_loss"]:
        cells = ["-" if row[w] is None else f"{row[w]:.5f}" for w in WEIGHT_SETS]
        step = f"**{row['step']}**" if row["step"] == quoted["checkpoint_step"] else row["step"]
        lines.append(f"| {step} | {' | '.join(cells)} | {row['best']} |")
    return "\n".join(lines) + "\n"


def block_texts(summary: str, quoted: dict) -> dict[str, str]:
    """What each marked block holds, by name: `report` (the printed summary, verbatim), `table`
    (README's result table) and `validation` (docs/evaluation.md's validation losses)."""
    return {
        "report": f"```text\n{summary}```\n",
        "table": table_text(quoted),
        "validation": validation_table(quoted),
    }


def marked_blocks(text: str) -> dict[str, str]:
    """The marked blocks of a document, by name (what lies between its start and end lines)."""
    return {m.group(1): m.group(2) for m in _MARKER.finditer(text)}


def rewrite_blocks(text: str, blocks: dict[str, str], where: str) -> str:
    """`text` with each marked block replaced by `blocks[name]`; an unknown name or a start
    without its end is a UserError naming `where`."""
    starts = re.findall(r"<!-- demo-([a-z]+):start -->", text)
    found = marked_blocks(text)
    problems = [f"'{n}' has no end line" for n in starts if n not in found]
    problems += [f"'{n}' is not one of {', '.join(blocks)}" for n in found if n not in blocks]
    if problems:
        raise UserError(
            f"{where}: demo blocks must be `<!-- demo-NAME:start -->` ... "
            f"`<!-- demo-NAME:end -->` lines, NAME one of {', '.join(blocks)}: "
            + "; ".join(problems)
        )
    return _MARKER.sub(
        lambda m: (
            f"<!-- demo-{m.group(1)}:start -->\n{blocks[m.group(1)]}"
            f"<!-- demo-{m.group(1)}:end -->\n"
        ),
        text,
    )


def update_docs(root: Path = Path()) -> list[Path]:
    """Rewrites the marked blocks of README.md and docs/evaluation.md from docs/demo/; returns
    the files it changed."""
    try:
        summary = (root / DOCS_SUMMARY).read_text()
        quoted = json.loads((root / DOCS_FIGURES).read_text())
    except OSError as e:
        raise UserError(
            f"--update_docs needs {DOCS_SUMMARY} and {DOCS_FIGURES} under {root.resolve()} "
            f"(`make demo-figures` copies them from the demo's workdir): {e}"
        ) from e
    blocks = block_texts(summary, quoted)
    changed = []
    for doc in DOCS_WITH_BLOCKS:
        old = (root / doc).read_text()
        new = rewrite_blocks(old, blocks, str(doc))
        if new != old:
            (root / doc).write_text(new)
            changed.append(doc)
    return changed
