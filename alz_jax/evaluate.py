"""Command: evaluate a checkpoint of a training run on one split and write its report.

    python -m alz_jax.evaluate --workdir=DIR [--split=test] [--checkpoint=best|latest|STEP] \
        [--weights=selected|raw|ema|swa] [--threshold=youden|sensitivity:0.9] \
        [--temperature_scaling] [--tta=hflip] [--bootstrap_samples=1000] [--gradcam_scans=4]

Writes, in the workdir: report_<split>.json, report_<split>.md, predictions_<split>.csv and the
figures roc_/confusion_/reliability_/gradcam_<split>.png, and prints a summary table.
"""

from absl import flags

from alz_jax.evaluation import task_reports
from alz_jax.host import command, storage
from alz_jax.run.saved_run import SavedRun

_WORKDIR = command.define_workdir("Workdir of a training run.")
_CHECKPOINT = command.define_checkpoint()
_WEIGHTS = command.define_weights()
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
_THRESHOLD = flags.DEFINE_string(
    "threshold", None, "youden or sensitivity:T (default: config.eval)."
)
_TEMPERATURE_SCALING = flags.DEFINE_bool(
    "temperature_scaling", None, "Apply the temperature fitted on validation."
)
_TTA = flags.DEFINE_string("tta", None, "Test-time views beside the plain result: hflip, vflip.")
_BOOTSTRAP_SAMPLES = flags.DEFINE_integer(
    "bootstrap_samples", None, "Subject resamples for intervals (0: none)."
)
_GRADCAM_SCANS = flags.DEFINE_integer("gradcam_scans", None, "Scans shown with Grad-CAM (0: none).")


def main(argv: list[str]) -> None:
    """Evaluates a checkpoint of a finished or running training on one split."""
    del argv
    overrides = {
        "threshold": _THRESHOLD.value,
        "temperature_scaling": _TEMPERATURE_SCALING.value,
        "tta": _TTA.value,
        "bootstrap_samples": _BOOTSTRAP_SAMPLES.value,
        "gradcam_scans": _GRADCAM_SCANS.value,
    }
    saved = SavedRun.open(_WORKDIR.value)
    report = saved.evaluate(_SPLIT.value, _CHECKPOINT.value, _WEIGHTS.value, overrides=overrides)
    print(task_reports.format_report(report))
    written = storage.path(_WORKDIR.value) / f"report_{_SPLIT.value}.md"
    print(f"Written: {written} and its figures.")


if __name__ == "__main__":
    command.run(main)
