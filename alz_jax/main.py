"""Entry point: python -m alz_jax.main --config=configs/convnext_t.py --workdir=DIR.

Multi-process: the same command on every process; JAX finds the others on SLURM, Cloud TPU
and Kubernetes, or take --coordinator_address, --num_processes and --process_id.
"""

from absl import app, flags
from ml_collections import config_flags

from alz_jax.evaluation import reports
from alz_jax.host import compilation_cache, distributed, hostenv, logs
from alz_jax.host.errors import exit_on_user_error
from alz_jax.run import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and reports go.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    """Trains and evaluates; user errors print a message and exit with status 2; a preempted
    run (SIGTERM) saves its state and exits with status 0."""
    del argv
    hostenv.reexec_with_huge_pages()
    logs.setup()
    with exit_on_user_error():
        distributed.initialize_from_flags()
        compilation_cache.enable()
        report = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if "preempted_at_step" in report:
        print(f"Preempted: state saved at step {report['preempted_at_step']}; "
              "run the same command to continue.")  # fmt: skip
        return
    print(reports.format_report(report))
    print("Stage times (s):", report["stage_seconds"])


if __name__ == "__main__":
    app.run(main)
