"""Command: k-fold cross-validation by subject, every fold trained and tested, then one aggregate
report.

    python -m alz_jax.cross_validate --config=configs/convnext_t_resplit.py --workdir=DIR \
        [--config.data.num_folds=5]

Runs folds 0..k-1 of the `kfold` protocol one after another in DIR/fold_<i> (a finished fold is
skipped, an unfinished one resumes), then writes DIR/report_cv.json and prints it: per level and
metric, the mean and standard deviation across folds, and the pooled out-of-fold metrics
(alz_jax/run/cross_validation.py).
"""

from alz_jax.host import command
from alz_jax.run import cross_validation

_CONFIG = command.define_config(help_string="Training config.")
_WORKDIR = command.define_workdir("Where the folds and report_cv.json go.")


def main(argv: list[str]) -> None:
    """Runs all folds and prints the aggregate."""
    del argv
    report = cross_validation.run_folds(_CONFIG.value, _WORKDIR.value)
    if "written_by_process_0" in report:
        return
    if "preempted_at_step" in report:
        print(f"Preempted in fold {report['fold']} at step {report['preempted_at_step']}; "
              "run the same command to continue.")  # fmt: skip
        return
    print(cross_validation.format_cv(report))


if __name__ == "__main__":
    command.run(main)
