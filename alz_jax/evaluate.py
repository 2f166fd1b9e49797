"""Command: evaluate a checkpoint of a training run on one split and write its report.

    python -m alz_jax.evaluate --workdir=DIR [--split=test] [--checkpoint=best|latest|STEP] \
        [--weights=selected|raw|ema|swa] [--threshold=youden|sensitivity:0.9] \
        [--temperature_scaling] [--tta=hflip] [--bootstrap_samples=1000] [--gradcam_scans=4] \
        [--conformal_alpha=0.1] [--conformal_score=aps|lac] \
        [--conformal_calibration=marginal|class] [--abstain_rate=0.1]

Writes, in the workdir: report_<split>.json, report_<split>.md, predictions_<split>.csv and the
figures roc_/confusion_/reliability_/gradcam_/risk_coverage_<split>.png, and prints a summary
table (prediction sets and selective prediction last: docs/uncertainty.md).

On another cohort (a collection the run never saw; run/external.py):

    python -m alz_jax.evaluate --workdir=DIR --data.manual_dir=OTHER [--data.layout=auto] \
        [--class_mapping=A:B,C:-] [--cohort=NAME] [--checkpoint=best] [--weights=selected]

writes report_external_<cohort>.{json,md} and predictions_external_<cohort>.csv instead.
"""

from absl import flags

from alz_jax.evaluation import external_report, task_reports
from alz_jax.host import command, storage
from alz_jax.host.errors import UserError
from alz_jax.run import external
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
_CONFORMAL_ALPHA = flags.DEFINE_float(
    "conformal_alpha", None, "Prediction sets' miscoverage (0.1: 90% coverage)."
)
_CONFORMAL_SCORE = flags.DEFINE_string("conformal_score", None, "Prediction sets' score: aps, lac.")
_CONFORMAL_CALIBRATION = flags.DEFINE_string(
    "conformal_calibration", None, "marginal, or class (a quantile per class)."
)
_ABSTAIN_RATE = flags.DEFINE_float(
    "abstain_rate", None, "Share of least confident cases referred, fixed on validation."
)
# Another cohort: the config.data fields that say how it is read (external.DATA_FLAGS).
_DATA = {
    field: flags.DEFINE_string(f"data.{field}", None, f"Another cohort: its data.{field}.")
    for field in external.DATA_FLAGS
}
_CLASS_MAPPING = flags.DEFINE_string(
    "class_mapping", "", "Another cohort's classes onto the run's: A:B,C:- (- leaves C out)."
)
_COHORT = flags.DEFINE_string("cohort", None, "Another cohort's name in the file names.")


def main(argv: list[str]) -> None:
    """Evaluates a checkpoint of a finished or running training on one split."""
    del argv
    given = {field: holder.value for field, holder in _DATA.items() if holder.value is not None}
    if given or _CLASS_MAPPING.value or _COHORT.value:
        _evaluate_external(given)
        return
    overrides = {
        "threshold": _THRESHOLD.value,
        "temperature_scaling": _TEMPERATURE_SCALING.value,
        "tta": _TTA.value,
        "bootstrap_samples": _BOOTSTRAP_SAMPLES.value,
        "gradcam_scans": _GRADCAM_SCANS.value,
        "conformal_alpha": _CONFORMAL_ALPHA.value,
        "conformal_score": _CONFORMAL_SCORE.value,
        "conformal_calibration": _CONFORMAL_CALIBRATION.value,
        "abstain_rate": _ABSTAIN_RATE.value,
    }
    saved = SavedRun.open(_WORKDIR.value)
    report = saved.evaluate(_SPLIT.value, _CHECKPOINT.value, _WEIGHTS.value, overrides=overrides)
    print(task_reports.format_report(report))
    written = storage.path(_WORKDIR.value) / f"report_{_SPLIT.value}.md"
    print(f"Written: {written} and its figures.")


def _evaluate_external(given: dict[str, str]) -> None:
    """evaluate --data.manual_dir=OTHER: the run on another cohort (run/external.py)."""
    if "manual_dir" not in given:
        raise UserError(
            "--data.*, --class_mapping and --cohort evaluate on another cohort: "
            "give its folder with --data.manual_dir=DIR."
        )
    own = [
        f"--{f.name}"
        for f in (_THRESHOLD, _TEMPERATURE_SCALING, _TTA, _GRADCAM_SCANS)
        if f.value is not None
    ] + (["--split"] if _SPLIT.present else [])
    if own:
        raise UserError(
            f"{', '.join(own)}: not with --data.manual_dir; another cohort is "
            "evaluated whole, with the calibration of the run's own validation."
        )
    request = external.Request(
        _WORKDIR.value,
        given,
        _CLASS_MAPPING.value,
        _COHORT.value,
        _CHECKPOINT.value,
        _WEIGHTS.value,
        _BOOTSTRAP_SAMPLES.value,
    )
    report, paths = external.evaluate(request)
    print(external_report.format_console(report))
    print(f"Written: {', '.join(p.name for p in paths)} and its figures, in {paths[0].parent}")


if __name__ == "__main__":
    command.run(main)
