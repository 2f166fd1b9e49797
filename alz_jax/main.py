"""Entry point: python -m alz_jax.main --config=configs/convnext_t.py --workdir=DIR."""

import sys

from absl import app, flags
from ml_collections import config_flags

from alz_jax import evaluate, logs, train
from alz_jax.errors import UserError
from tfds_builders.adni.layout import LayoutError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and reports go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    """Trains and evaluates; user errors print a message and exit with status 2."""
    del argv
    logs.setup()
    try:
        report = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (UserError, LayoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(evaluate.format_report(report))
    print("Stage times (s):", report["stage_seconds"])


if __name__ == "__main__":
    app.run(main)
