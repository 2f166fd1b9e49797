"""`make demo`: train the demo config on the synthetic set from scratch and check its accuracy.

    python -m alz_jax.demo [--workdir=.demo/workdir] [--config.data.synthetic_seed=1]
        [--expect=docs/demo/summary.txt]
    python -m alz_jax.demo --update_docs   # `make demo-figures`: no training

Wipes the workdir, runs the same `train_and_evaluate` as `main`, prints the test report (the
summary that README.md quotes) and the time of each stage, and exits with status 1 if the
scan-level test accuracy is below the gate, or, with --expect, if the printed summary differs
from that file. It also writes the summary and the figures the docs quote (demo_summary.txt,
demo_figures.json) to the workdir; `make demo-figures` copies them to docs/demo/ and rewrites
the demo blocks of README.md and docs/evaluation.md from them (--update_docs; see
alz_jax/evaluation/demo_docs.py).
"""

import json
import shutil
import sys
import time
from pathlib import Path

from absl import flags

from alz_jax.evaluation import demo_docs
from alz_jax.host import command

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


def _print_stage_times(report: dict, total: float) -> None:
    print("\nStage times (s):")
    for stage, seconds in report["stage_seconds"].items():
        print(f"  {stage:<32} {seconds:>7.1f}")
    print(f"  {'total (after install)':<32} {total:>7.1f}")


def main(argv: list[str]) -> None:
    """Runs the demo and applies the accuracy gate (and --expect), or --update_docs."""
    del argv
    if _UPDATE_DOCS.value:
        for path in demo_docs.update_docs():
            print(f"rewrote the demo blocks of {path}")
        return
    # Imported here, not at the top: Grain's worker processes import this module again (Python's
    # spawn), and the training stack (TensorFlow through CLU's writers) would cost each ~6 s.
    from alz_jax.evaluation import task_reports  # noqa: PLC0415
    from alz_jax.run import run_record, train  # noqa: PLC0415

    workdir = _WORKDIR.value
    shutil.rmtree(workdir, ignore_errors=True)
    measured = demo_docs.machine()
    start = time.perf_counter()
    report = train.train_and_evaluate(_CONFIG.value, workdir)
    if "preempted_at_step" in report:
        sys.exit(f"Preempted at step {report['preempted_at_step']}: the demo starts afresh.")
    rows = demo_docs.validation_losses(Path(workdir) / "metrics.jsonl")
    summary = (
        task_reports.format_report(demo_docs.without_fingerprint(report)) + "\n\n"
        + demo_docs.validation_text(rows, report["checkpoint_step"])
    )  # fmt: skip
    print("\n" + summary, end="")
    if report.get("source_fingerprint"):
        print(
            f"Data folder {report['source_fingerprint']} (a hash of its path, files and their "
            "modification times: it differs from clone to clone)"
        )
    total = time.perf_counter() - start
    _print_stage_times(report, total)
    Path(workdir, demo_docs.SUMMARY_FILE).write_text(summary)
    run = {
        "synthetic_seed": _CONFIG.value.data.synthetic_seed,
        "data_fingerprint": run_record.load(workdir)["identity"]["data"]["fingerprint"],
        "gate": _MIN_SCAN_ACCURACY.value,
        "total_seconds": total,
        "measured": measured,
    }
    quoted = demo_docs.figures(report, rows, run)
    Path(workdir, demo_docs.FIGURES_FILE).write_text(json.dumps(quoted, indent=1) + "\n")
    _finish(report, workdir, summary)


def _finish(report: dict, workdir: str, summary: str) -> None:
    """Prints where the results are, then applies the gate and --expect (exit 1 on either)."""
    scan_accuracy = report["scan"]["accuracy"]
    print(f"\nReport with intervals and calibration: {workdir}/report_test.md")
    print(f"Figures in {workdir}: " + ", ".join(report.get("figures", {}).values()))
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
        problem = demo_docs.expectation_failure(summary, _EXPECT.value)
        if problem:
            print(problem, file=sys.stderr)
            failed = True
        else:
            print(f"The summary equals {_EXPECT.value}, as README.md quotes it.")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    command.run(main)
