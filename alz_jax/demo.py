"""`make demo`: train the demo config on the synthetic set from scratch and check its accuracy.

    python -m alz_jax.demo [--workdir=.demo/workdir] [--config.data.synthetic_seed=1]

Wipes the workdir, runs the same `train_and_evaluate` as `main`, prints the test report and the
time of each stage, and exits with status 1 if the scan-level test accuracy is below the gate.
"""

import json
import shutil
import sys
import time

from absl import flags

from alz_jax.host import command

_CONFIG = command.define_config("demo", help_string="Demo config.")
_WORKDIR = command.define_workdir(
    "Workdir (deleted first).", required=False, default=".demo/workdir"
)
_MIN_SCAN_ACCURACY = flags.DEFINE_float(
    "min_scan_accuracy", 0.90, "Fail unless the scan-level test accuracy reaches this."
)


def _print_stage_times(report: dict, total: float) -> None:
    print("\nStage times (s):")
    for stage, seconds in report["stage_seconds"].items():
        print(f"  {stage:<32} {seconds:>7.1f}")
    print(f"  {'total (after install)':<32} {total:>7.1f}")


def main(argv: list[str]) -> None:
    """Runs the demo and applies the accuracy gate."""
    del argv
    # Imported here, not at the top: Grain's worker processes import this module again (Python's
    # spawn), and the training stack (TensorFlow through CLU's writers) would cost each ~6 s.
    from alz_jax.evaluation import task_reports  # noqa: PLC0415
    from alz_jax.run import train  # noqa: PLC0415

    workdir = _WORKDIR.value
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    report = train.train_and_evaluate(_CONFIG.value, workdir)
    if "preempted_at_step" in report:
        sys.exit(f"Preempted at step {report['preempted_at_step']}: the demo starts afresh.")
    print("\n" + task_reports.format_report(report))
    _print_stage_times(report, time.perf_counter() - start)
    scan_accuracy = report["scan"]["accuracy"]
    summary = {
        "synthetic_seed": _CONFIG.value.data.synthetic_seed,
        "scan_accuracy": round(scan_accuracy, 4),
        "slice_accuracy": round(report["slice"]["accuracy"], 4),
        "gate": _MIN_SCAN_ACCURACY.value,
        "report": f"{workdir}/report_test.json",
    }
    print(
        f"\nReport with intervals and calibration: {workdir}/report_test.md; figures: "
        + ", ".join(f"{workdir}/{p}" for p in report.get("figures", {}).values())
    )
    print("demo:", json.dumps(summary))
    if scan_accuracy < _MIN_SCAN_ACCURACY.value:
        print(
            f"FAILED: scan-level test accuracy {scan_accuracy:.3f} < {_MIN_SCAN_ACCURACY.value}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    command.run(main)
