"""`make demo`: train the demo config on the synthetic set from scratch and check its accuracy.

    python -m alz_jax.demo [--workdir=.demo/workdir] [--config.data.synthetic_seed=1]
        [--expect=docs/demo/summary.txt]
    python -m alz_jax.demo --update_docs   # `make demo-figures`: no training

Wipes the workdir, runs the same `train_and_evaluate` as `main`, prints the test report (the
summary that README.md quotes) and the time of each stage, and exits with status 1 if the
scan-level test accuracy is below the gate, or, with --expect, if the printed summary differs
from that file. It also writes the summary and the figures the docs quote (demo_summary.txt,
demo_figures.json) to the workdir; `make demo-figures` copies them to docs/demo/ and rewrites
the blocks of README.md and docs/evaluation.md between `<!-- demo-NAME:start -->` and
`<!-- demo-NAME:end -->` from them (--update_docs).
"""

import datetime
import difflib
import json
import os
import platform
import re
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

from absl import flags

from alz_jax.host import command
from alz_jax.host.errors import UserError

_CONFIG = command.define_config("demo", help_string="Demo config.")
_WORKDIR = command.define_workdir(
    "Workdir (deleted first).", required=False, default=".demo/workdir"
)
_MIN_SCAN_ACCURACY = flags.DEFINE_float(
    "min_scan_accuracy", 0.90, "Fail unless the scan-level test accuracy reaches this."
)
_EXPECT = flags.DEFINE_string(
    "expect", None,
    "Fail unless the printed summary equals this file's text (docs/demo/summary.txt: what "
    "README.md quotes); a diff shows what differs.",
)  # fmt: skip
_UPDATE_DOCS = flags.DEFINE_bool(
    "update_docs", False,
    "Train nothing: rewrite the demo blocks of README.md and docs/evaluation.md from "
    "docs/demo/summary.txt and docs/demo/figures.json (run from the repository's root).",
)  # fmt: skip

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
        **{k: _rounded(m[k]) for k in ("accuracy", "balanced_accuracy", "sensitivity",
                                        "specificity", "roc_auc")},
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


def figures(report: dict, rows: list[dict], total_seconds: float, measured: dict) -> dict:
    """The figures README.md and docs/evaluation.md quote, at the printed precision."""
    cal = report["calibration"]
    return {
        "synthetic_seed": _CONFIG.value.data.synthetic_seed,
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
        "gate": _MIN_SCAN_ACCURACY.value,
        "stage_seconds": report["stage_seconds"],
        "total_seconds": round(total_seconds, 1),
        "measured": measured,
    }  # fmt: skip


def expectation_failure(summary: str, expected_path: str) -> str | None:
    """None if `summary` equals the file's text, else a message with a unified diff."""
    try:
        expected = Path(expected_path).read_text()
    except OSError as e:
        return f"--expect={expected_path}: cannot read it ({e}); `make demo-figures` writes it."
    if summary == expected:
        return None
    diff = difflib.unified_diff(
        expected.splitlines(keepends=True), summary.splitlines(keepends=True),
        fromfile=expected_path, tofile="this run",
    )  # fmt: skip
    return (
        f"FAILED: this run's summary differs from {expected_path}, the report that README.md "
        "quotes:\n" + "".join(diff) + "The figures repeat exactly on one machine with the same "
        "versions, not across processors, core counts or JAX/XLA versions: see "
        'docs/evaluation.md, "Reading the demo\'s report". If this run is the new reference '
        "(the code or the recipe changed), run `make demo-figures` and commit docs/demo/, "
        "README.md and docs/evaluation.md."
    )


def _print_stage_times(report: dict, total: float) -> None:
    print("\nStage times (s):")
    for stage, seconds in report["stage_seconds"].items():
        print(f"  {stage:<32} {seconds:>7.1f}")
    print(f"  {'total (after install)':<32} {total:>7.1f}")


def main(argv: list[str]) -> None:
    """Runs the demo and applies the accuracy gate (and --expect), or --update_docs."""
    del argv
    if _UPDATE_DOCS.value:
        for path in update_docs():
            print(f"rewrote the demo blocks of {path}")
        return
    # Imported here, not at the top: Grain's worker processes import this module again (Python's
    # spawn), and the training stack (TensorFlow through CLU's writers) would cost each ~6 s.
    from alz_jax.evaluation import task_reports  # noqa: PLC0415
    from alz_jax.run import train  # noqa: PLC0415

    workdir = _WORKDIR.value
    shutil.rmtree(workdir, ignore_errors=True)
    measured = machine()
    start = time.perf_counter()
    report = train.train_and_evaluate(_CONFIG.value, workdir)
    if "preempted_at_step" in report:
        sys.exit(f"Preempted at step {report['preempted_at_step']}: the demo starts afresh.")
    rows = validation_losses(Path(workdir) / "metrics.jsonl")
    summary = (
        task_reports.format_report(without_fingerprint(report)) + "\n\n"
        + validation_text(rows, report["checkpoint_step"])
    )  # fmt: skip
    print("\n" + summary, end="")
    print(
        f"Data folder {report.get('source_fingerprint')} (a hash of its path, files and their "
        "modification times: it differs from clone to clone)"
    )
    total = time.perf_counter() - start
    _print_stage_times(report, total)
    Path(workdir, SUMMARY_FILE).write_text(summary)
    quoted = figures(report, rows, total, measured)
    Path(workdir, FIGURES_FILE).write_text(json.dumps(quoted, indent=1) + "\n")
    _finish(report, workdir, summary)


def _finish(report: dict, workdir: str, summary: str) -> None:
    """Prints where the results are, then applies the gate and --expect (exit 1 on either)."""
    scan_accuracy = report["scan"]["accuracy"]
    print(
        f"\nReport with intervals and calibration: {workdir}/report_test.md; figures: "
        + ", ".join(f"{workdir}/{p}" for p in report.get("figures", {}).values())
    )
    print(
        "demo:",
        json.dumps({
            "synthetic_seed": _CONFIG.value.data.synthetic_seed,
            "scan_accuracy": round(scan_accuracy, 4),
            "slice_accuracy": round(report["slice"]["accuracy"], 4),
            "gate": _MIN_SCAN_ACCURACY.value,
            "report": f"{workdir}/report_test.json",
        }),
    )  # fmt: skip
    failed = False
    if scan_accuracy < _MIN_SCAN_ACCURACY.value:
        print(
            f"FAILED: scan-level test accuracy {scan_accuracy:.3f} < {_MIN_SCAN_ACCURACY.value}",
            file=sys.stderr,
        )
        failed = True
    if _EXPECT.value:
        problem = expectation_failure(summary, _EXPECT.value)
        if problem:
            print(problem, file=sys.stderr)
            failed = True
        else:
            print(f"The summary equals {_EXPECT.value}, as README.md quotes it.")
    if failed:
        sys.exit(1)


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
    return (
        f"{header}\n| {' | '.join(['---'] * len(row))} |\n| {' | '.join(row)} |\n\n"
        f"Times measured on {m['date']} on one machine ({m['cpu']}, {m['usable_cores']} usable "
        f"cores, {m['vector_isa']}; load average {m['load_average_at_start']} at the start), "
        f"Python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}. Times vary with the "
        "machine and its load; the other figures repeat exactly on one machine, and another "
        "processor or core count can change them "
        "([docs/evaluation.md](docs/evaluation.md#reading-the-demos-report)).\n"
    )


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


if __name__ == "__main__":
    command.run(main)
