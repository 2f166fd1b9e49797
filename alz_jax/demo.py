"""`make demo`: train the demo config on the synthetic set from scratch and check its accuracy.

    python -m alz_jax.demo [--workdir=.demo/workdir] [--config.data.synthetic_seed=1]

Wipes the workdir, runs the same `train_and_evaluate` as `main`, prints the test report and the
time of each stage, and exits with status 1 if the scan-level test accuracy is below the gate.
"""

import json
import shutil
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from alz_jax.evaluation import reports
from alz_jax.host import compilation_cache, distributed, hostenv, logs
from alz_jax.run import train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Demo config file.")
_WORKDIR = flags.DEFINE_string("workdir", ".demo/workdir", "Workdir (deleted first).")
distributed.define_flags()
_MIN_SCAN_ACCURACY = flags.DEFINE_float(
    "min_scan_accuracy", 0.90, "Fail unless the scan-level test accuracy reaches this."
)


def main(argv: list[str]) -> None:
    """Runs the demo and applies the accuracy gate."""
    del argv
    hostenv.reexec_with_huge_pages()
    logs.setup()
    shutil.rmtree(_WORKDIR.value, ignore_errors=True)
    start = time.perf_counter()
    distributed.initialize_from_flags()
    compilation_cache.enable()
    report = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if "preempted_at_step" in report:
        sys.exit(f"Preempted at step {report['preempted_at_step']}: the demo starts afresh.")
    total = time.perf_counter() - start
    print("\n" + reports.format_report(report))
    print("\nStage times (s):")
    for stage, seconds in report["stage_seconds"].items():
        print(f"  {stage:<32} {seconds:>7.1f}")
    print(f"  {'total (after install)':<32} {total:>7.1f}")
    scan_accuracy = report["scan"]["accuracy"]
    summary = {
        "synthetic_seed": _CONFIG.value.data.synthetic_seed,
        "scan_accuracy": round(scan_accuracy, 4),
        "slice_accuracy": round(report["slice"]["accuracy"], 4),
        "gate": _MIN_SCAN_ACCURACY.value,
        "report": f"{_WORKDIR.value}/report_test.json",
    }
    print(
        f"\nReport with intervals and calibration: {_WORKDIR.value}/report_test.md; figures: "
        + ", ".join(f"{_WORKDIR.value}/{p}" for p in report.get("figures", {}).values())
    )
    print("demo:", json.dumps(summary))
    if scan_accuracy < _MIN_SCAN_ACCURACY.value:
        print(
            f"FAILED: scan-level test accuracy {scan_accuracy:.3f} < {_MIN_SCAN_ACCURACY.value}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
