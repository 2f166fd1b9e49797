"""Entry point: python -m alz_jax.main --config=configs/convnext_t.py --workdir=DIR."""

from absl import app, flags
from ml_collections import config_flags

from alz_jax import evaluate, logs, train
from alz_jax.errors import exit_on_user_error

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and reports go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    """Trains and evaluates; user errors print a message and exit with status 2."""
    del argv
    logs.setup()
    with exit_on_user_error():
        report = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    print(evaluate.format_report(report))
    print("Stage times (s):", report["stage_seconds"])


if __name__ == "__main__":
    app.run(main)
