r"""Command: train and evaluate.

    python -m alz_jax.main --config=configs/convnext_t.py [--workdir=runs/convnext_t] \
        [--config.data.manual_dir=/path/to/adni] [--config.x.y=value ...]

--config is a config file, or the name of one in configs/ (`--config=convnext_t`), from any
folder; --workdir defaults to runs/<config name> (printed at the start). A user error prints a
message and exits with status 2; a preempted run (SIGTERM) saves its state and exits with 0.

Multi-process: the same command on every process; JAX finds the others on SLURM, Cloud TPU
and Kubernetes, or take --coordinator_address, --num_processes and --process_id.
"""

from alz_jax.host import command

_CONFIG = command.define_config(help_string="Training config.")
_WORKDIR = command.define_workdir(
    "Where checkpoints, metrics and reports go (default: runs/<config name>).", required=False
)


def main(argv: list[str]) -> None:
    """Trains and evaluates, resuming from the workdir's checkpoint if there is one."""
    del argv
    # Imported here, not at the top: Grain's worker processes import this module again (Python's
    # spawn), and the training stack (TensorFlow through CLU's writers) would cost each ~6 s.
    from alz_jax.evaluation import task_reports  # noqa: PLC0415
    from alz_jax.run import train  # noqa: PLC0415

    workdir = _WORKDIR.value or command.default_workdir()
    print(f"workdir: {workdir}", flush=True)
    report = train.train_and_evaluate(_CONFIG.value, workdir)
    if "preempted_at_step" in report:
        print(f"Preempted: state saved at step {report['preempted_at_step']}; "
              "run the same command to continue.")  # fmt: skip
        return
    print(task_reports.format_report(report))
    print("Stage times (s):", report["stage_seconds"])


if __name__ == "__main__":
    command.run(main)
