"""Command: evaluate a checkpoint of a training run on one split and write its report.

    python -m alz_jax.evaluate --workdir=DIR [--split=test] [--checkpoint=best|latest|STEP] \
        [--weights=selected|raw|ema|swa] [--threshold=youden|sensitivity:0.9] \
        [--temperature_scaling] [--tta=hflip] [--bootstrap_samples=1000] [--gradcam_scans=4]

Writes, in the workdir: report_<split>.json, report_<split>.md, predictions_<split>.csv and the
figures roc_/confusion_/reliability_/gradcam_<split>.png, and prints a summary table.
"""

from absl import app, flags

from alz_jax.evaluation import reports
from alz_jax.host import compilation_cache, distributed, logs, storage
from alz_jax.host.errors import exit_on_user_error
from alz_jax.run import train


def _define_flags() -> None:
    distributed.define_flags()
    flags.DEFINE_string("workdir", None, "Workdir of a training run.", required=True)
    flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
    flags.DEFINE_string("checkpoint", "best", "best, latest or a step number.")
    flags.DEFINE_enum(
        "weights",
        "selected",
        ["selected", "raw", "ema", "swa"],
        "Weights to evaluate; 'selected': those that won the checkpoint's validation.",
    )
    flags.DEFINE_string("threshold", None, "youden or sensitivity:T (default: config.eval).")
    flags.DEFINE_bool("temperature_scaling", None, "Apply the temperature fitted on validation.")
    flags.DEFINE_string("tta", None, "Test-time views beside the plain result: hflip, vflip.")
    flags.DEFINE_integer("bootstrap_samples", None, "Subject resamples for intervals (0: none).")
    flags.DEFINE_integer("gradcam_scans", None, "Scans shown with Grad-CAM (0: none).")


def main(argv: list[str]) -> None:
    """Evaluates a checkpoint of a finished or running training on one split."""
    del argv
    logs.setup()
    f = flags.FLAGS
    with exit_on_user_error():
        distributed.initialize_from_flags()
        compilation_cache.enable()
        report = train.evaluate_checkpoint(
            f.workdir, f.split, f.checkpoint, f.weights,
            overrides=dict(threshold=f.threshold, temperature_scaling=f.temperature_scaling,
                           tta=f.tta, bootstrap_samples=f.bootstrap_samples,
                           gradcam_scans=f.gradcam_scans),
        )  # fmt: skip
    print(reports.format_report(report))
    print(f"Written: {storage.path(f.workdir) / ('report_' + f.split + '.md')} and its figures.")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
